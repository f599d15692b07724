"""The reader's two routes side by side: its own header scan (`io/scan.py`) against pydicom's, on the same files.

    python bench/bench_read_routes.py [--repeat 5] [--files 60]

Reads, with `load_series`/`load_study` and pixels decoded, by each route in turn (best of --repeat, alternated):
- the two real studies in ../shared/realdata (RLE, flat anonymised headers; skipped with a message when absent);
- a generated series of --files 256 x 256 native files whose headers carry what clinical headers do: nested
  sequences (a referenced image with its purpose code, a request, an empty sequence, a private one) with
  undefined and defined lengths, which the scan reads since this bench was written (before: pydicom's route);
- the same files in implicit VR, which pydicom's route reads either way (the "scan" column: with the scan's
  refusal first, as the reader runs).
Prints milliseconds per file and the speed-up. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tests" / "io")]
TWO = REPO.parent / "shared" / "realdata" / "rsna2024_dicom_train_2studies" / "train_images"


def timed(repeat: int, fns: dict) -> dict:
    """Best wall time of each function, the functions run in turn `repeat` times."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--files", type=int, default=60)
    a = ap.parse_args()
    from dicom_factory import add_clinical_sequences, make_dataset, slice_pixels, write_dicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    from spinegrade.io import dicom

    def route(fast: bool, fn):
        def run():
            dicom.FAST_ROUTE = fast
            try:
                fn()
            finally:
                dicom.FAST_ROUTE = True
        return run

    rows = []
    if TWO.is_dir():
        studies = sorted(p for p in TWO.iterdir() if p.is_dir())
        n = sum(len(files) for s in studies for _, _, files in os.walk(s, followlinks=True))
        read = lambda: [dicom.load_study(s, stored=True) for s in studies]
        rows.append(("real RSNA (2 studies)", n, timed(a.repeat, {"scan": route(True, read),
                                                                   "pydicom": route(False, read)})))
    else:
        print(f"real data not found at {TWO}: skipping the real-study row")
    with tempfile.TemporaryDirectory() as tmp:
        for undefined, ts in ((True, ExplicitVRLittleEndian), (False, ExplicitVRLittleEndian),
                              (True, ImplicitVRLittleEndian)):
            folder = Path(tmp) / f"clinical_{undefined}_{ts}"
            for k in range(a.files):
                ds = make_dataset(slice_pixels(256, 256), position=(0, 0, 4 * k), instance=k + 1)
                write_dicom(folder / f"{k}.dcm", add_clinical_sequences(ds, undefined, rich=True), ts)
            read = lambda f=folder: dicom.load_series(f)
            name = f"clinical headers ({'undefined' if undefined else 'defined'} lengths)"
            if ts == ImplicitVRLittleEndian:
                name = "clinical headers, implicit VR (pydicom's)"
            rows.append((name, a.files, timed(a.repeat, {"scan": route(True, read), "pydicom": route(False, read)})))
    print(f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; best of {a.repeat}, routes alternated")
    print(f"{'files':<44}{'n':>5}{'scan ms/file':>14}{'pydicom ms/file':>17}{'speed-up':>10}")
    for name, n, t in rows:
        print(f"{name:<44}{n:>5}{t['scan'] * 1e3 / n:>14.2f}{t['pydicom'] * 1e3 / n:>17.2f}"
              f"{t['pydicom'] / t['scan']:>9.2f}x")


if __name__ == "__main__":
    main()
