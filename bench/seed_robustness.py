"""Does `train --data` give a working model every time? Independent synthetic cohorts x training seeds.

Each run: synthesise a training cohort (`--studies`, seed T) and an independent test cohort (`--test-studies`,
seed E), train the study pipeline on fold 0 of 5 with training seed S and `--threads` threads, evaluate on the
test cohort, and read the checks. Prints one row per run (score, prior, ratio, localisation median / mean /
90th percentile / wrong-level share, checks) and the spread. Work is kept in `--work`: a finished step is not
redone, so runs can go in parallel processes (`--runs` one each) and a last call with all of them prints the
whole table.

    python bench/seed_robustness.py --work /tmp/seeds --runs 4242:977:0 4243:978:1 4244:979:2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _run(argv: list[str], log: Path, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(log, "a", encoding="utf-8") as fh:
        r = subprocess.run([sys.executable, "-m", "spinegrade", *argv], env=env, stdout=fh, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv[:2])} failed (exit {r.returncode}); see {log}")


def _cohort(work: Path, seed: int, n: int, threads: int) -> Path:
    out = work / f"cohort_{seed}_{n}"
    if not (out / "train.csv").exists():
        _run(["synth", "--out", str(out), "--studies", str(n), "--seed", str(seed), "--workers", "2"],
             work / f"synth_{seed}.log", threads)
    return out


def run_name(train_seed: int, test_seed: int, seed: int, threads: int, tag: str = "") -> str:
    return f"train{train_seed}_test{test_seed}_seed{seed}_t{threads}" + (f"_{tag}" if tag else "")


def one_run(work: Path, train_seed: int, test_seed: int, seed: int, studies: int, test_studies: int,
            threads: int, extra: list[str], tag: str = "") -> dict:
    """Train and evaluate one (cohort, test cohort, seed); returns its row (cached in the run folder)."""
    name = run_name(train_seed, test_seed, seed, threads, tag)
    run, ev = work / name / "run", work / name / "eval"
    row_file = work / name / "row.json"
    if row_file.exists():
        return json.loads(row_file.read_text())
    (work / name).mkdir(parents=True, exist_ok=True)
    train = _cohort(work, train_seed, studies, threads)
    test = _cohort(work, test_seed, test_studies, threads)
    t0 = time.time()
    if not (run / "summary.json").exists():  # a run that stopped part way is resumed
        argv = ["train", "--data", str(train), "--out", str(run), "--cache", str(work / f"cache_{train_seed}"),
                "--seed", str(seed), "--val-fold", "0", "--folds", "5", "--device", "cpu", *extra]
        if (run / "config.json").exists():
            argv.append("--resume")
        _run(argv, work / name / "train.log", threads)
    train_s = time.time() - t0
    _run(["evaluate", "--run", str(run), "--data", str(test), "--out", str(ev), "--cache",
          str(work / f"cache_{test_seed}")], work / name / "evaluate.log", threads)
    m = json.loads((ev / "metrics.json").read_text())
    loc = m["localization"]["all"]
    summary = json.loads((run / "summary.json").read_text())
    row = {"run": name, "score": m["score"]["score"], "prior": m["prior"]["score"],
           "ratio": m["score_over_prior"], "loc_median_mm": loc["median_mm"], "loc_mean_mm": loc["mean_mm"],
           "loc_p90_mm": loc["p90_mm"], "wrong_level": loc["wrong_level"],
           "t1_val_median_mm": summary["localizer"]["sagittal_t1"].get("val_err_median_mm"),
           "checks_failed": [c["name"] for c in m.get("checks", []) if not c["passed"]],
           "train_minutes": round(train_s / 60, 1)}
    row_file.write_text(json.dumps(row, indent=1))
    return row


def table(rows: list[dict]) -> str:
    import numpy as np

    head = ("| run | score | prior | ratio | loc. median mm | mean mm | p90 mm | wrong level | checks failed | "
            "train min |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['run']} | {r['score']:.3f} | {r['prior']:.3f} | {r['ratio']:.2f} | "
                     f"{r['loc_median_mm']:.2f} | {r['loc_mean_mm']:.2f} | {r['loc_p90_mm']:.2f} | "
                     f"{r['wrong_level']:.1%} | {', '.join(r['checks_failed']) or 'none'} | {r['train_minutes']} |")
    if len(rows) > 1:
        for k in ("ratio", "loc_median_mm", "wrong_level"):
            v = np.array([r[k] for r in rows])
            lines.append(f"\n{k}: min {v.min():.3f}  max {v.max():.3f}  mean {v.mean():.3f}  sd {v.std(ddof=1):.3f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--runs", nargs="+", default=["4242:977:0", "4243:978:1", "4244:979:2"],
                    help="TRAIN_COHORT_SEED:TEST_COHORT_SEED:TRAINING_SEED")
    ap.add_argument("--studies", type=int, default=120)
    ap.add_argument("--test-studies", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tag", default="", help="suffix of the run folders (runs with other train options)")
    ap.add_argument("--table-only", action="store_true", help="print the rows already finished, train nothing")
    ap.add_argument("extra", nargs="*", help="more `train` options after --, e.g. -- --localizer-epochs 8")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in a.runs:
        t, e, s = (int(v) for v in spec.split(":"))
        if a.table_only:
            f = a.work / run_name(t, e, s, a.threads, a.tag) / "row.json"
            if f.exists():
                rows.append(json.loads(f.read_text()))
            continue
        rows.append(one_run(a.work, t, e, s, a.studies, a.test_studies, a.threads, a.extra, a.tag))
        print(json.dumps(rows[-1]), flush=True)
    print(f"{a.studies}-study training cohorts (fold 0 of 5), {a.test_studies}-study test cohorts, "
          f"{a.threads} thread(s)")
    print(table(rows))


if __name__ == "__main__":
    main()
