"""The reader's two routes side by side: its own header scan (`io/scan.py`) against pydicom's, on the same files.

    python bench/bench_read_routes.py [--repeat 5] [--files 60]

Reads, with `load_series`/`load_study` and pixels decoded, by each route in turn (best of --repeat, alternated):
- the two real studies in ../shared/realdata (RLE, flat anonymised headers; skipped with a message when absent);
- a generated series of --files 256 x 256 native files whose headers carry what clinical headers do: nested
  sequences (a referenced image with its purpose code, a request, an empty sequence, a private one) with
  undefined and defined lengths, which the scan reads since this bench was written (before: pydicom's route).
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


def clinical_header(ds, undefined: bool):
    """`ds` with the sequences a clinical MR header carries (values made up, no patient data)."""
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "121311", "DCM", "Localizer"
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4", "1.2.3.4.5.6"
    ref.PurposeOfReferenceCodeSequence = Sequence([code])
    request = Dataset()
    request.RequestedProcedureID, request.ScheduledProcedureStepID = "RP1", "SPS1"
    ds.ReferencedImageSequence = Sequence([ref, Dataset()])
    ds.RequestAttributesSequence = Sequence([request])
    ds.ProcedureCodeSequence = Sequence([])
    ds.add_new(0x00291020, "SQ", Sequence([Dataset()]))
    for elem in ds.iterall():
        if elem.VR == "SQ":
            elem.is_undefined_length = undefined
            for item in elem.value:
                item.is_undefined_length_sequence_item = undefined
    return ds


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
    from dicom_factory import make_dataset, slice_pixels, write_dicom

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
        for undefined in (True, False):
            folder = Path(tmp) / f"clinical_{undefined}"
            for k in range(a.files):
                ds = make_dataset(slice_pixels(256, 256), position=(0, 0, 4 * k), instance=k + 1)
                write_dicom(folder / f"{k}.dcm", clinical_header(ds, undefined))
            read = lambda f=folder: dicom.load_series(f)
            name = f"clinical headers ({'undefined' if undefined else 'defined'} lengths)"
            rows.append((name, a.files, timed(a.repeat, {"scan": route(True, read), "pydicom": route(False, read)})))
    print(f"\n{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; best of {a.repeat}, routes alternated")
    print(f"{'files':<44}{'n':>5}{'scan ms/file':>14}{'pydicom ms/file':>17}{'speed-up':>10}")
    for name, n, t in rows:
        print(f"{name:<44}{n:>5}{t['scan'] * 1e3 / n:>14.2f}{t['pydicom'] * 1e3 / n:>17.2f}"
              f"{t['pydicom'] / t['scan']:>9.2f}x")


if __name__ == "__main__":
    main()
