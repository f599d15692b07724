"""Time per slice of the foramen model: localise the five levels, then grade the slice's foramina.

Reads N real slices of the shared set (or generated ones without it) and times, in one process and one run,
localisation alone, grading with test-time augmentation and without, per slice; prints the figures.

    python bench/bench_foramina_speed.py [--model foramina-sagt1-v1] [--slices N] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from spinegrade import vocab
from spinegrade.slicemodel.data import read_gray
from spinegrade.slicemodel.foramina import read_point_slices, write_synthetic_point_slices
from spinegrade.slicemodel.model import SliceModel

SLICES = Path(__file__).resolve().parents[2] / "shared/realdata/rsna2024_sagT1_foramina_vbs2004"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="foramina-sagt1-v1", help="bundled model name or run folder")
    ap.add_argument("--slices", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    folder = SLICES if SLICES.is_dir() else write_synthetic_point_slices(Path(tempfile.mkdtemp()) / "s", 20)
    ps = read_point_slices(folder, check_files=False)
    t0 = time.perf_counter()
    model = SliceModel.load(a.model)
    load_s = time.perf_counter() - t0
    paths = list(ps.slices["path"][: a.slices])
    imgs = [read_gray(ps.root / p) for p in paths]
    asks_per = [[(r.condition, r.level) for r in ps.points[ps.points["path"] == p].itertuples()] for p in paths]
    timings = {"localise": 0.0, "grade_tta": 0.0, "grade_no_tta": 0.0}
    n_asks = 0
    for p, img, asks in zip(paths, imgs, asks_per):
        fr = ps.frame(p, 0, img.shape)
        t = time.perf_counter()
        loc = model.localize(img, fr.rows, fr.cols)
        timings["localise"] += time.perf_counter() - t
        full = [(c, lv, float(loc[vocab.LEVELS.index(lv), 0]), float(loc[vocab.LEVELS.index(lv), 1])) for c, lv in asks]
        n_asks += len(full)
        for key, tta in (("grade_tta", True), ("grade_no_tta", False)):
            t = time.perf_counter()
            model.grade(img, fr.rows, fr.cols, full, tta=tta)
            timings[key] += time.perf_counter() - t
    n = len(paths)
    print(f"{model.name}: {len(model.members)} member(s), loaded in {load_s:.2f} s; {n} slices, {n_asks} foramina, "
          f"{a.threads} thread(s), {folder.name}")
    for k, v in timings.items():
        print(f"  {k:<13} {1000 * v / n:7.1f} ms per slice")
    print(f"  localise + grade (TTA) {1000 * (timings['localise'] + timings['grade_tta']) / n:.1f} ms per slice; "
          f"TTA costs {timings['grade_tta'] / max(timings['grade_no_tta'], 1e-9):.1f}x a single crop")


if __name__ == "__main__":
    main()
