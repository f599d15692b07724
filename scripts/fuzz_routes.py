"""Route-equivalence fuzz of the reader: randomly damaged files read by its own scan and by pydicom's route.

The reader reads a plainly well-formed file with its own header scan (`io/scan.py`) and every other file with
pydicom; the scan must accept only files that pydicom's route reads the same. Each trial damages a few bytes
of a generated file's header (or cuts the file), and where the scan accepts the result, reads the folder both
ways and compares what a series is made of: tags, notes, skipped files and reasons, SOP instance UIDs, slice
positions and pixels. A difference is a finding: the file is kept in --out.

    python scripts/fuzz_routes.py [--trials 5000] [--seed 0] [--out fuzz_routes_findings]

Files: flat headers (native and RLE pixels) and headers with clinical sequences (nested, undefined and defined
lengths, an InstanceNumber and PixelSpacing inside an item). About 1 ms per trial; a few percent of the damaged
files are accepted by the scan and compared. Half the damaged bytes are characters values are parsed around
(padding, whitespace and control characters, separators, signs). Exit status 1 when anything differed. A
development tool: it found a leading NUL read as padding, a UID's whitespace and a DS value's control character
read otherwise than pydicom reads them; each is now a test in tests/io/test_io_scan.py.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
from pydicom.uid import ExplicitVRLittleEndian, RLELossless

REPO = Path(__file__).resolve().parents[1]
TRICKY = b"\x00 \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\\+-.eE019nNiIaA_"
sys.path.insert(0, str(REPO / "tests" / "io"))


def good_files(folder: Path) -> list[tuple[bytes, int]]:
    """(bytes, where Pixel Data starts) of each generated file."""
    from dicom_factory import add_clinical_sequences, make_dataset, slice_pixels, write_dicom

    tags = dict(ImageType=["ORIGINAL", "PRIMARY", "M", "ND"], SeriesDescription="T2 sag", Manufacturer="ACME",
                ProtocolName="", FlipAngle="90", echo_time=87.5, repetition_time=3000.0)
    out = []
    for k, (ts, sequences) in enumerate([(ts, s) for ts in (ExplicitVRLittleEndian, RLELossless)
                                         for s in (None, True, False)]):
        ds = make_dataset(slice_pixels(16, 16), rescale=(1.5, -3.0), **tags)
        if sequences is not None:
            ds = add_clinical_sequences(ds, sequences, rich=True)
        data = write_dicom(folder / f"good{k}.dcm", ds, ts).read_bytes()
        out.append((data, data.index(b"\xe0\x7f\x10\x00")))
    return out


def describe(series) -> list:
    return [(s.tags, s.notes, s.series_id, s.n_slices, list(s.sop_instance_uids),
             [(k.path, k.reason) for k in s.skipped]) for s in series]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("fuzz_routes_findings"))
    a = ap.parse_args()
    warnings.simplefilter("ignore")
    from spinegrade.io import dicom

    rng = np.random.default_rng(a.seed)
    accepted = differed = 0
    with tempfile.TemporaryDirectory() as tmp:
        goods = good_files(Path(tmp))
        folder = Path(tmp) / "series"
        folder.mkdir()
        path = folder / "f.dcm"
        for trial in range(a.trials):
            good, pixels_at = goods[trial % len(goods)]
            b = bytearray(good)
            for _ in range(int(rng.integers(1, 4))):
                at = int(rng.integers(132, pixels_at)) if rng.random() < 0.9 else int(rng.integers(0, len(b)))
                if rng.random() < 0.5:  # a character that values are parsed around (padding, separators, signs)
                    b[at] = TRICKY[int(rng.integers(len(TRICKY)))]
                else:
                    b[at:at + int(rng.integers(1, 3))] = rng.bytes(int(rng.integers(1, 3)))
            if rng.random() < 0.1:
                b = b[:int(rng.integers(132, len(b)))]
            path.write_bytes(bytes(b))
            if dicom._read_header_fast(path, 10**6, True) is None:
                continue  # pydicom's route reads it: nothing of the scan's to compare
            accepted += 1
            got = []
            for fast in (True, False):
                dicom.FAST_ROUTE = fast
                try:
                    series = dicom.load_series(folder, load_pixels=True)
                    got.append((describe(series), [np.asarray(s.pixels) for s in series],
                                [s.geometry.positions for s in series]))
                except Exception as e:  # noqa: BLE001 - compared, not raised
                    got.append((f"{type(e).__name__}: {e}", [], []))
                finally:
                    dicom.FAST_ROUTE = True
            (d1, p1, g1), (d2, p2, g2) = got
            same = d1 == d2 and len(p1) == len(p2) and all(np.array_equal(x, y) for x, y in zip(p1, p2)) \
                and all(np.allclose(x, y) for x, y in zip(g1, g2))
            if not same:
                differed += 1
                a.out.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, a.out / f"seed{a.seed}_trial{trial}.dcm")
                print(f"DIFFERS trial {trial}:\n  scan:    {d1}\n  pydicom: {d2}", flush=True)
    print(f"{a.trials} trials, seed {a.seed}: {accepted} accepted by the scan and compared, {differed} differed"
          + (f" (kept in {a.out})" if differed else ""))
    return 1 if differed else 0


if __name__ == "__main__":
    raise SystemExit(main())
