"""Semantic fuzz of `spinegrade predict`: hostile header values in a copy of a real study, then the whole command.

Each trial copies a study, gives a few of its files (or one whole series) hostile values in the tags the reader
uses (geometry, pixel description, rescale, identity, acquisition tags) or rewrites a series' geometry or pixels
(every slice at one position, constant or random pixels, one slice turned, random bytes in its headers,
rewritten in implicit VR or as one Enhanced MR multi-frame file, with or without damaged header bytes, ...),
then runs `spinegrade predict --report --dicom-sr` on it in this process. A finding is:
- an exception escaping the command, or a traceback in its output;
- a Python exception's name in a skip reason, warning or error (a message that is a library's, not ours);
- a submission that is not 25 finite rows summing to 1 per target.
A refused study (exit status 2 with one clear line) is not a finding: it is printed as `refused` for review.

    python scripts/fuzz_predict.py [--study DIR] [--model foramina-sagt1-v1|RUN] [--trials 100] [--seed 0]
        [--change KIND (one series changed so in every trial)]

Default study: the first of ../shared/realdata/rsna2024_dicom_train_2studies (exits with a message when the
real data is absent). About 1-3 s per trial on one core. Exit status 1 when anything was found. A development
tool: its trials are random, so it finds, it does not prove; what it found became tests
(tests/io/test_io_hostile.py, tests/pipeline/test_predict*.py).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import re
import shutil
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "io"))
TWO = REPO.parent / "shared" / "realdata" / "rsna2024_dicom_train_2studies" / "train_images"
PYTHON_ERRORS = re.compile(r"\b(TypeError|KeyError|AttributeError|IndexError|ValueError|ZeroDivisionError|"
                           r"UnboundLocalError|NameError|AssertionError|RuntimeError|OverflowError|Traceback)\b")
NUMBERS = ["0", "-1", "nan", "inf", "-inf", "1e30", "1e-30", "", "abc", "1\\2", "3.5", "-0", "1e308"]


def tag_values(rng: random.Random) -> dict:
    """Per keyword, a function drawing one hostile value (None: the tag is removed)."""
    num = lambda: rng.choice(NUMBERS)  # noqa: E731
    pick = lambda *v: (lambda: rng.choice(v))  # noqa: E731
    return {
        "PixelSpacing": lambda: rng.choice([[num(), num()], [num()], [num(), num(), num()], None]),
        "ImageOrientationPatient": lambda: rng.choice([[0] * 6, [1, 0, 0, 1, 0, 0], [num() for _ in range(6)],
                                                       [1, 0, 0], None, [0.7, 0.7, 0, 0, 0, 1]]),
        "ImagePositionPatient": lambda: rng.choice([[num(), num(), num()], [1e6, 1e6, 1e6], [0, 0], None]),
        "SliceThickness": num, "SpacingBetweenSlices": num, "RescaleSlope": num, "RescaleIntercept": num,
        "WindowCenter": num, "WindowWidth": num, "EchoTime": num, "RepetitionTime": num, "InversionTime": num,
        "Rows": pick(0, 1, 3, 16, 65535, None), "Columns": pick(0, 1, 3, 16, 65535, None),
        "BitsAllocated": pick(1, 8, 12, 32, 64, 0, None), "BitsStored": pick(0, 1, 8, 17, 32, None),
        "HighBit": pick(0, 7, 16, 31, None), "PixelRepresentation": pick(0, 1, 2, None),
        "SamplesPerPixel": pick(0, 2, 3, None), "PlanarConfiguration": pick(0, 1, None),
        "PhotometricInterpretation": pick("RGB", "MONOCHROME1", "PALETTE COLOR", "YBR_FULL", "", "XYZ", None),
        "InstanceNumber": pick(0, -5, 2**31 - 1, 1, None), "NumberOfFrames": pick(0, 2, 100, None),
        "SeriesInstanceUID": lambda: rng.choice([generate_uid(), "", None, "1.2.3"]),
        "StudyInstanceUID": lambda: rng.choice([generate_uid(), "", None]), "SOPInstanceUID": pick("", None, "1.2.3"),
        "Modality": pick("CT", "", None, "SR"),
        "SeriesDescription": pick("Axial T2", "Sagittal T1", "Sagittal T2/STIR", "", "x" * 5000, None),
        "SOPClassUID": pick("1.2.840.10008.5.1.4.1.1.7", "", None),
    }


SERIES_CHANGES = ("same_position", "jittered_positions", "one_slice_turned", "zero_pixels", "constant_pixels",
                  "maximum_pixels", "noise_pixels", "one_slice_left", "one_sop_uid", "tiny_spacing",
                  "half_cropped", "every_file_twice", "half_turned", "huge_spacing", "oblique",
                  "clinical_sequences", "damaged_sequences", "implicit_vr", "implicit_vr_damaged", "damaged_header",
                  "enhanced_mr", "enhanced_mr_damaged")


def change_series(files: list[Path], kind: str, rng: random.Random) -> None:
    """Rewrite every file of one series so that the series as a whole is hostile."""
    if kind.startswith("enhanced_mr"):  # the series as one Enhanced MR multi-frame file (and damaged bytes in it)
        from dicom_factory import to_enhanced_mr  # tests/io: the corpus builders

        one = to_enhanced_mr(files, files[0].parent / "enhanced.dcm")
        for f in files:
            f.unlink()
        if kind.endswith("_damaged"):
            _damage_header(one, rng, 1, 6)
        return
    for i, f in enumerate(files):
        if kind == "one_slice_left" and i > 0:
            f.unlink()
            continue
        ds = pydicom.dcmread(f)
        if kind == "every_file_twice":
            shutil.copy(f, f.with_name(f"copy_{f.name}"))
            continue
        if kind == "half_cropped" and i % 2:  # a second image size under the same series UID
            a = ds.pixel_array[: ds.Rows // 2]
            ds.PixelData, ds.Rows = a.tobytes(), a.shape[0]
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        elif kind == "half_turned" and i % 2:  # two planes under one series UID
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1] if abs(float(ds.ImageOrientationPatient[0])) > 0.5 \
                else [1, 0, 0, 0, 1, 0]
        if kind == "same_position":
            ds.ImagePositionPatient = [0, 0, 0]
        elif kind == "jittered_positions" and "ImagePositionPatient" in ds:
            ds.ImagePositionPatient = [float(v) + rng.uniform(-50, 50) for v in ds.ImagePositionPatient]
        elif kind == "one_slice_turned" and i == len(files) // 2:
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
        elif kind.endswith("_pixels"):
            a = ds.pixel_array
            top = 2 ** int(ds.BitsStored) - 1
            new = {"zero_pixels": np.zeros_like(a), "constant_pixels": np.full_like(a, 777),
                   "maximum_pixels": np.full_like(a, top),
                   "noise_pixels": np.random.default_rng(i).integers(0, top, a.shape).astype(a.dtype)}[kind]
            ds.PixelData = new.tobytes()
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        elif kind == "one_sop_uid":
            ds.SOPInstanceUID = "1.2.3.4"
        elif kind == "tiny_spacing":
            ds.PixelSpacing = [1e-6, 1e-6]
        elif kind == "huge_spacing":
            ds.PixelSpacing = [1e3, 1e3]
        elif kind in ("clinical_sequences", "damaged_sequences"):
            from dicom_factory import add_clinical_sequences  # tests/io: the corpus builders

            add_clinical_sequences(ds, undefined=rng.random() < 0.5, rich=True)
        elif kind.startswith("implicit_vr"):  # as a node may store what it receives: uncompressed, implicit VR
            ds.decompress()
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
        elif kind == "oblique":  # the whole series tilted by 35 degrees about its row direction
            r = np.asarray([float(v) for v in ds.ImageOrientationPatient[:3]])
            c = np.asarray([float(v) for v in ds.ImageOrientationPatient[3:]])
            n = np.cross(r, c)
            c2 = np.cos(np.radians(35)) * c + np.sin(np.radians(35)) * n
            ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*r, *c2)]
        ds.save_as(f)
        if kind == "damaged_sequences":  # a few random bytes inside the sequences
            data = bytearray(f.read_bytes())
            lo, hi = data.index(b"\x08\x00\x40\x11"), data.index(b"\x40\x00\x75\x02")  # (0008,1140) .. (0040,0275)
            for _ in range(rng.randint(1, 3)):
                at = rng.randrange(lo, hi)
                data[at:at + 1] = bytes([rng.randrange(256)])
            f.write_bytes(bytes(data))
        elif kind in ("implicit_vr_damaged", "damaged_header") and rng.random() < 0.5:  # bytes in half its headers
            _damage_header(f, rng, 1, 4)


def _damage_header(f: Path, rng: random.Random, lo: int, hi: int) -> None:
    """Overwrite lo..hi random bytes of a file's header (its dataset, now and then its file meta)."""
    data = bytearray(f.read_bytes())
    meta_end, end = _meta_end(data), data.rindex(b"\xe0\x7f\x10\x00")
    for _ in range(rng.randint(lo, hi)):
        at = rng.randrange(132 if rng.random() < 0.2 else meta_end, end)
        data[at:at + 1] = bytes([rng.choice([0, 0xFF, rng.randrange(256)])])
    f.write_bytes(bytes(data))


def _meta_end(data: bytes) -> int:
    """Where the file meta group (explicit VR, after the preamble) ends."""
    pos = 132
    while data[pos:pos + 2] == b"\x02\x00":
        if data[pos + 4:pos + 6] in (b"OB", b"OW", b"UN", b"UT", b"SQ", b"UC", b"UR"):
            pos += 12 + int.from_bytes(data[pos + 8:pos + 12], "little")
        else:
            pos += 8 + int.from_bytes(data[pos + 6:pos + 8], "little")
    return pos


def set_tag(ds, keyword: str, value) -> None:
    if value is None:
        if keyword in ds:
            delattr(ds, keyword)
        return
    with contextlib.suppress(Exception):  # a value pydicom cannot even hold is not a trial
        setattr(ds, keyword, value)


def trial(study: Path, model: str, rng: random.Random, work: Path, change: str | None = None
          ) -> tuple[str, list[str]]:
    """One mutated copy of `study` through predict: (what was done, findings)."""
    from spinegrade.cli import main

    copy = shutil.copytree(study, work / study.name)
    series = sorted(p for p in copy.iterdir() if p.is_dir())
    files = sorted(copy.rglob("*.dcm"))
    draw = tag_values(rng)
    keywords = rng.sample(sorted(draw), rng.choice([1, 1, 2, 3]))
    if rng.random() < 0.5:
        targets = sorted(rng.choice(series).glob("*.dcm"))
    else:
        targets = rng.sample(files, min(rng.choice([1, 2, 3, 5, len(files)]), len(files)))
    same = {kw: draw[kw]() for kw in keywords} if rng.random() < 0.6 else None
    for f in targets:
        ds = pydicom.dcmread(f)
        for kw in keywords:
            set_tag(ds, kw, same[kw] if same else draw[kw]())
        with contextlib.suppress(Exception):
            ds.save_as(f)
    what = f"{len(targets)} file(s): {same if same else keywords}"
    if change or rng.random() < 0.3:
        kind = change or rng.choice(SERIES_CHANGES)
        one = rng.choice(series)
        try:
            change_series(sorted(one.glob("*.dcm")), kind, rng)
            what += f"; series {one.name}: {kind}"
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # noqa: BLE001 - an earlier change may leave nothing to rewrite (or panic)
            what += f"; series {one.name}: {kind} not made ({type(e).__name__})"
    out, text = work / "out", io.StringIO()
    found: list[str] = []
    try:
        with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
            rc = main(["predict", str(copy), "--model", model, "--out", str(out), "--report", "--dicom-sr",
                       "--readers", "0"])
    except SystemExit as e:
        rc = e.code
    except BaseException:  # noqa: BLE001 - what the fuzz is for
        return what, [f"exception escaped: {traceback.format_exc(limit=-3)}"]
    said = text.getvalue() + "".join(p.read_text(errors="replace") for p in out.rglob("*.json"))
    if (m := PYTHON_ERRORS.search(said)) is not None:
        found.append(f"a Python error in the output: ...{said[max(0, m.start() - 160):m.end() + 160]}...")
    sub = out / "submission.csv"
    if rc == 0 and sub.is_file():
        frame = pd.read_csv(sub)
        probs = frame.drop(columns=["row_id"]).to_numpy(dtype=float)
        if len(frame) != 25 or not np.isfinite(probs).all() or not np.allclose(probs.sum(axis=1), 1, atol=1e-3):
            found.append(f"bad submission: {len(frame)} rows, finite {np.isfinite(probs).all()}")
    elif rc != 2:
        found.append(f"exit status {rc}: {text.getvalue()[-400:]}")
    else:
        why = [x for x in text.getvalue().splitlines() if x.startswith("skipped study")] or ["(no reason line)"]
        print(f"  refused ({what}): {why[0][:300]}")
    return what, found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", type=Path, default=None)
    ap.add_argument("--model", default="foramina-sagt1-v1", help="a run folder or a bundled model's name")
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--change", choices=SERIES_CHANGES, default=None,
                    help="make this change to one series in every trial (default: one in 3 trials, drawn)")
    ap.add_argument("--keep", type=Path, default=None, help="copy the study of each trial with a finding here")
    a = ap.parse_args()
    if a.study is None and not TWO.is_dir():
        print(f"the real studies are not at {TWO}: pass --study", file=sys.stderr)
        return 2
    study = a.study or next(p for p in sorted(TWO.iterdir()) if p.is_dir())
    rng = random.Random(a.seed)
    warnings.simplefilter("ignore")  # pydicom warns on every hostile value it is given
    n_found = 0
    for t in range(a.trials):
        with tempfile.TemporaryDirectory(prefix="fuzz_predict_") as tmp:
            what, found = trial(study, a.model, rng, Path(tmp), a.change)
            if found and a.keep is not None:
                shutil.copytree(Path(tmp) / study.name, a.keep / f"seed{a.seed}_trial{t}")
        for f in found:
            n_found += 1
            print(f"FOUND seed {a.seed} trial {t} ({what}): {f}", flush=True)
        if (t + 1) % 10 == 0:
            print(f"{t + 1} trials, {n_found} found", flush=True)
    print(f"{a.trials} trials on {study.name}, seed {a.seed}: {n_found} found")
    return 1 if n_found else 0


if __name__ == "__main__":
    sys.exit(main())
