"""`predict` wall time per study and peak memory on the CPU, split into reading, localising and grading.

    python bench/bench_predict.py [--model RUN_DIR] [--device cpu]

Each real study in ../shared/realdata runs in a fresh process, so the peak resident memory (ru_maxrss) is that
study's alone; a process that only loads the models gives the baseline. Without --model a one-epoch run is
trained on a small synthetic cohort first: timings do not depend on how well a model was trained.

Then, in this process on 8 synthetic studies, the localisers' batching: the studies localised one at a time
against all in one `localize_many` call (each view's images of every study through its network together), and
localize_many's time by pass size (images per forward pass; the CPU default is 8 per torch thread).
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


def localiser_batching(run: Path, studies_root: Path, device: str, repeat: int = 3) -> None:
    import time

    from spinegrade.io.dicom import load_study
    from spinegrade.localize.localizer import Localizer

    loc = Localizer(run, device)
    default = loc.batch
    studies = [load_study(p, stored=True) for p in sorted(studies_root.iterdir())]

    def best(fn) -> float:
        fn()  # first-call allocations
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    one = best(lambda: [loc.localize(s) for s in studies])
    together = best(lambda: loc.localize_many(studies))
    print(f"\nlocalisers on {len(studies)} synthetic studies ({device}, best of {repeat}): one at a time {one:.2f} s, "
          f"all in one call {together:.2f} s ({one / together:.2f}x)")
    for b in (1, 4, 8, 16, 64, 256):
        loc.batch = b
        t = best(lambda: loc.localize_many(studies))
        print(f"  pass of {b:>3} images: {t:.2f} s{'  (default here)' if b == default else ''}")


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
        print(f"{'study':<12}{'read s':>8}{'localise s':>12}{'grade s':>9}{'total s':>9}{'peak MB':>9}"
              f"{'+ over base':>12}")
        for name, r in rows:
            total = r["read"] + r["localize"] + r["grade"]
            print(f"{name:<12}{r['read']:>8.2f}{r['localize']:>12.2f}{r['grade']:>9.2f}{total:>9.2f}"
                  f"{r['peak_mb']:>9.0f}{r['peak_mb'] - base['peak_mb']:>12.0f}")
        if not (Path(tmp) / "data").is_dir():  # --model: the synthetic studies are made here
            from spinegrade.data.synth import synthesize_cohort

            synthesize_cohort(Path(tmp) / "data", n_studies=8, seed=3)
        localiser_batching(run, Path(tmp) / "data" / "train_images", a.device)

if __name__ == "__main__":
    main()
