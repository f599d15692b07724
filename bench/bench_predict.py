"""`predict` wall time per study and peak memory on the CPU, split into reading, localising and grading.

    python bench/bench_predict.py [--model RUN_DIR] [--device cpu]

Each real study in ../shared/realdata runs in a fresh process, so the peak resident memory (ru_maxrss) is that
study's alone; a process that only loads the models gives the baseline. Without --model a one-epoch run is
trained on a small synthetic cohort first: timings do not depend on how well a model was trained.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

_CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from spinegrade.predict import Predictor
p = Predictor(sys.argv[1], sys.argv[3])
load = time.perf_counter() - t0
if sys.argv[2] != "-":
    p.predict_path(sys.argv[2])
print(json.dumps({"load": load, **p.timings, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _tiny_run(root: Path) -> Path:
    from spinegrade.data.synth import synthesize_cohort
    from spinegrade.pipeline.plan import build_plan
    from spinegrade.pipeline.study import train_study_pipeline

    synthesize_cohort(root / "data", n_studies=8, seed=3)
    plan = build_plan(str(root / "data"), cache=str(root / "cache"), folds=4, prepare_workers=2, epochs=1,
                      batch_size=32, device="cpu")
    train_study_pipeline(plan, root / "run", log=lambda *_: None)
    return root / "run"


def _child(run: Path, study: str, device: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(run), study, device], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    from conftest import TWO_STUDIES

    images = TWO_STUDIES / "train_images"
    if not images.exists():
        print(f"real studies not found at {images}: nothing to measure")
        return
    with tempfile.TemporaryDirectory() as tmp:
        run = a.model or _tiny_run(Path(tmp))
        base = _child(run, "-", a.device)
        rows = [(s.name, _child(run, str(s), a.device)) for s in sorted(images.iterdir())]
    print(f"\npredict on the CPU ({a.device}), one fresh process per study; model load {base['load']:.2f} s, "
          f"baseline peak {base['peak_mb']:.0f} MB")
    print(f"{'study':<12}{'read s':>8}{'localise s':>12}{'grade s':>9}{'total s':>9}{'peak MB':>9}{'+ over base':>12}")
    for name, r in rows:
        total = r["read"] + r["localize"] + r["grade"]
        print(f"{name:<12}{r['read']:>8.2f}{r['localize']:>12.2f}{r['grade']:>9.2f}{total:>9.2f}{r['peak_mb']:>9.0f}"
              f"{r['peak_mb'] - base['peak_mb']:>12.0f}")


if __name__ == "__main__":
    main()
