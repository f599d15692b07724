"""Start-up cost: `spinegrade predict` on one study, cold in a fresh process, against the pipeline's own time.

    python bench/bench_startup.py [--study DIR] [--model foramina-sagt1-v1|RUN] [--repeat 3]
                                  [--baseline-src /path/to/other/src]

Prints, each the median of --repeat runs:
- `info` in a fresh process (and with --baseline-src, the same from another source tree, e.g. main's);
- `predict STUDY --model M` in a fresh process (wall clock, imports and model loading included), against
  the pipeline's own time in that run (read + localise + grade, from its report.json) and the ratio (target
  <= 2), and `import torch` alone in a fresh process: the floor of that ratio for anything that grades with
  torch; then, in this process, imports, model loading and the pipeline once warm.
Default study: the first of ../shared/realdata/rsna2024_dicom_train_2studies. Set OMP_NUM_THREADS as for use.
Children run with bytecode caching on (as an installed package has it) after one untimed run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TWO = REPO.parent / "shared" / "realdata" / "rsna2024_dicom_train_2studies" / "train_images"


def _env(**extra) -> dict:
    """This environment for a child, less PYTHONDONTWRITEBYTECODE: an installed package has its bytecode cached
    (spinegrade's own sources cost about 0.1 s to compile at every start without it)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, **extra}


def fresh(args: list[str], src: Path, out: Path | None = None) -> float:
    """Wall seconds of `python -m spinegrade ARGS` in a new interpreter importing spinegrade from `src`."""
    env = _env(PYTHONPATH=os.pathsep.join(filter(None, [str(src), os.environ.get("PYTHONPATH")])))
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "spinegrade", *args], env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"spinegrade {' '.join(args)} failed ({p.returncode}):\n{p.stderr[-2000:]}")
    return dt


def _import_torch() -> float:
    """Wall seconds of a fresh interpreter that imports torch and exits (its start included)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch"], check=True, env=_env())
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--study", type=Path, default=None)
    ap.add_argument("--model", default="foramina-sagt1-v1")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--baseline-src", type=Path, default=None, help="another tree's src/ to time `info` with")
    a = ap.parse_args()
    src = REPO / "src"
    study = a.study or next(p for p in sorted(TWO.iterdir()) if p.is_dir())
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS', 'unset')}, load {os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory() as tmp:  # once untimed: the bytecode caches written, the files read once
        fresh(["predict", str(study), "--model", a.model, "--out", str(Path(tmp) / "warm")], src)
    info = statistics.median(fresh(["info"], src) for _ in range(a.repeat))
    print(f"info, fresh process:                  {info:6.2f} s")
    if a.baseline_src:
        base = statistics.median(fresh(["info"], a.baseline_src) for _ in range(a.repeat))
        print(f"info, fresh process, {a.baseline_src}: {base:6.2f} s")

    colds, pipes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(a.repeat):
            out = Path(tmp) / f"p{k}"
            colds.append(fresh(["predict", str(study), "--model", a.model, "--out", str(out)], src))
            pipes.append(sum(json.loads((out / "report.json").read_text())["timings"].values()))
    cold, pipe = statistics.median(colds), statistics.median(pipes)
    torch_s = statistics.median(_import_torch() for _ in range(a.repeat))
    print(f"predict {study.name} --model {a.model}")
    print(f"  cold, fresh process:                {cold:6.2f} s")
    print(f"  its pipeline (read+localise+grade): {pipe:6.2f} s")
    print(f"  ratio cold / pipeline:              {cold / pipe:6.2f}  (target <= 2)")
    print(f"  `import torch` alone, fresh process: {torch_s:5.2f} s: no process that grades with torch starts "
          f"faster, so the ratio's floor is (that + pipeline) / pipeline = {(torch_s + pipe) / pipe:.2f}")
    print(f"  cold less torch's import, / pipeline: {(cold - torch_s) / pipe:5.2f}  (spinegrade's own start-up)")

    sys.path.insert(0, str(src))
    t0 = time.perf_counter()
    from spinegrade.predict import Predictor
    import torch  # noqa: F401  (what the model loading would import anyway)

    t1 = time.perf_counter()
    pred = Predictor(a.model, "cpu")
    t2 = time.perf_counter()
    pred.predict_path(study)  # warm: first-call allocations
    warm = []
    for _ in range(a.repeat):
        t = time.perf_counter()
        pred.predict_path(study)
        warm.append(time.perf_counter() - t)
    heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "monai", "scipy", "pandas", "pydicom"})
    print(f"  in this process: imports {t1 - t0:.2f} s, model loading {t2 - t1:.2f} s, "
          f"pipeline warm {statistics.median(warm):.2f} s; heavy packages loaded: {', '.join(heavy)}")


if __name__ == "__main__":
    main()
