"""Series decoded per second: `spinegrade prepare` (N worker processes) against a plain single-process pydicom
loop over the same files (read every file, decode pixel_array, stack per series), measured side by side.

    python bench/bench_prepare.py [--studies 20] [--workers 2]

Runs on the two real studies in ../shared/realdata (skipped with a message when absent) and on a synthetic
cohort written to a temporary folder. Prints a table; nothing is asserted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def plain_loop(images: Path) -> int:
    """The baseline a newcomer would write: one process, dcmread + pixel_array, stack per series folder."""
    n = 0
    for series_dir in sorted(p for p in images.glob("*/*") if p.is_dir()):
        arrs = []
        for f in sorted(series_dir.glob("*.dcm")):
            try:
                ds = pydicom.dcmread(f)
                arrs.append(ds.pixel_array.astype(np.float32))
            except Exception:  # the baseline, like ours, skips unreadable files
                continue
        if arrs:
            shapes = {a.shape for a in arrs}
            if len(shapes) == 1:
                np.stack(arrs)
            n += 1
    return n


def measure(name: str, data: Path, workers: int) -> dict:
    from spinegrade.data.prepare import prepare_dataset

    images = data / "train_images"
    t = time.perf_counter()
    n_plain = plain_loop(images)
    t_plain = time.perf_counter() - t
    cache = Path(tempfile.mkdtemp(prefix="bench_cache_"))
    try:
        t = time.perf_counter()
        r = prepare_dataset(data, cache, workers=workers, progress=False)
        t_prep = time.perf_counter() - t
        t = time.perf_counter()
        r2 = prepare_dataset(data, cache, workers=workers, progress=False)
        t_rerun = time.perf_counter() - t
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"name": name, "folders": n_plain, "plain_s": t_plain, "plain_sps": n_plain / t_plain,
            "series": r["decoded"], "prep_s": t_prep, "prep_sps": n_plain / t_prep, "rerun_s": t_rerun,
            "rerun_decoded": r2["decoded"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args()
    rows = []
    from conftest import REALDATA, build_real_dataset

    tmp = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        if (REALDATA / "rsna2024_dicom_train_2studies").exists():
            rows.append(measure("real RSNA (2 studies)", build_real_dataset(REALDATA, tmp / "real"), a.workers))
        else:
            print(f"real data not found at {REALDATA}: skipping the real-study row")
        from spinegrade.data.synth import synthesize_cohort

        synthesize_cohort(tmp / "synth", n_studies=a.studies, seed=11, workers=a.workers)
        rows.append(measure(f"synthetic ({a.studies} studies)", tmp / "synth", a.workers))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nprepare (--workers {a.workers}) vs a plain single-process pydicom loop, series folders per second")
    print(f"{'data':<26}{'folders':>8}{'plain s':>9}{'plain /s':>10}{'prepare s':>11}{'prepare /s':>12}"
          f"{'speed-up':>10}{'re-run s':>10}")
    for r in rows:
        print(f"{r['name']:<26}{r['folders']:>8}{r['plain_s']:>9.2f}{r['plain_sps']:>10.2f}{r['prep_s']:>11.2f}"
              f"{r['prep_sps']:>12.2f}{r['plain_s'] / r['prep_s']:>9.2f}x{r['rerun_s']:>10.2f}")
    print("prepare also writes the cache (memory-mappable .npy + JSON geometry); a re-run decodes nothing "
          f"({', '.join(str(r['rerun_decoded']) for r in rows)} series decoded on re-run).")


if __name__ == "__main__":
    main()
