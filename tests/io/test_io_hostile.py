"""Hostile and broken input at the reader: forged sizes, damaged headers, links, odd files. A generated,
deterministic corpus; each case asserts what is read and the exact reason for what is not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, RLELossless

from dicom_factory import make_dataset, slice_pixels, write_dicom, write_series
from spinegrade.cli import main
from spinegrade.errors import DataError
from spinegrade.io.dicom import load_series, load_study, max_pixels_default, read_slice
from spinegrade.io.inspect import inspect_study


def forge_size(src, dst, rows: int, cols: int) -> None:
    """A copy of a DICOM file whose header claims another image size (the pixel data unchanged)."""
    ds = pydicom.dcmread(src)
    ds.Rows, ds.Columns = rows, cols
    ds.save_as(dst)


def flip_vr(path, keyword_tag: bytes, vr: bytes) -> None:
    """Overwrite the explicit VR of the first element with this tag (group, element little endian bytes)."""
    b = bytearray(path.read_bytes())
    i = b.find(keyword_tag)
    assert i > 0
    b[i + 4:i + 6] = vr
    path.write_bytes(bytes(b))


def _reasons(skipped):
    return {os.path.basename(k.path): k.reason for k in skipped}


# --- forged sizes (decompression bombs) --------------------------------------------------------------------
def test_a_forged_huge_image_is_skipped_before_decoding(tmp_path):
    write_series(tmp_path / "s", 3, transfer_syntax=RLELossless)
    forge_size(tmp_path / "s" / "1.dcm", tmp_path / "s" / "bomb.dcm", 65535, 65535)
    (s,) = load_series(tmp_path / "s")
    assert s.n_slices == 3
    reason = _reasons(s.skipped)["bomb.dcm"]
    assert reason.startswith("image too large: the header claims 65535 x 65535 = 4,294,836,225 pixels")
    assert "SPINEGRADE_MAX_PIXELS" in reason
    with pytest.raises(DataError, match=r"bomb\.dcm: image too large"):
        read_slice(tmp_path / "s" / "bomb.dcm")


def test_a_study_whose_only_file_is_a_bomb_fails_naming_the_file(tmp_path, capsys):
    """The error names the file and says why, budget included (was "among 1 files (image too large: 1)")."""
    write_series(tmp_path / "s", 1, transfer_syntax=RLELossless)
    (tmp_path / "study" / "7").mkdir(parents=True)
    forge_size(tmp_path / "s" / "1.dcm", tmp_path / "study" / "7" / "bomb.dcm", 65535, 65535)
    with pytest.raises(DataError) as e:
        load_study(tmp_path / "study")
    assert str(e.value) == (f"{tmp_path / 'study'}: no readable DICOM image found among 1 files (7/bomb.dcm: image "
                            "too large: the header claims 65535 x 65535 = 4,294,836,225 pixels, over the reader's "
                            f"budget of {max_pixels_default():,} (SPINEGRADE_MAX_PIXELS))")
    assert main(["inspect", str(tmp_path / "study")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "7/bomb.dcm: image too large" in err[0]


def test_many_unreadable_files_are_named_by_reason_the_first_three_of_each(tmp_path):
    folder = tmp_path / "study"
    folder.mkdir()
    for k in range(5):
        (folder / f"{k}.dcm").write_bytes(b"junk")
    (folder / "5.dcm").write_bytes(b"")
    with pytest.raises(DataError) as e:
        load_study(folder)
    assert str(e.value).endswith("among 6 files (not a DICOM file: 0.dcm, 1.dcm, 2.dcm and 2 more; empty file: "
                                 "5.dcm)")


def test_claims_beyond_what_the_compressed_data_can_hold_are_skipped(tmp_path):
    write_series(tmp_path / "s", 2, transfer_syntax=RLELossless)
    forge_size(tmp_path / "s" / "1.dcm", tmp_path / "s" / "liar.dcm", 4000, 4000)  # 16 Mpx: within the budget
    (s,) = load_series(tmp_path / "s")
    reason = _reasons(s.skipped)["liar.dcm"]
    assert reason.startswith("implausible header: 4000 x 4000 pixels (32,000,000 bytes) cannot come from ")
    assert reason.endswith("bytes of RLE Lossless data")


def test_the_pixel_budget_is_configurable(tmp_path, monkeypatch):
    write_series(tmp_path / "s", 2)  # 32 x 40 = 1280 pixels per file
    assert load_series(tmp_path / "s", max_pixels=1280)[0].n_slices == 2
    with pytest.raises(DataError, match=r"among 2 files \(image too large: 1\.dcm, 2\.dcm\)$"):
        load_series(tmp_path / "s", max_pixels=1279)
    monkeypatch.setenv("SPINEGRADE_MAX_PIXELS", "1000")
    with pytest.raises(DataError, match="no readable DICOM image found among 2 files"):
        load_series(tmp_path / "s")


def test_zero_rows_is_skipped_not_decoded(tmp_path):
    write_series(tmp_path / "s", 2)
    forge_size(tmp_path / "s" / "1.dcm", tmp_path / "s" / "zero.dcm", 0, 40)
    (s,) = load_series(tmp_path / "s")
    assert _reasons(s.skipped)["zero.dcm"] == "no pixels: the header says 0 x 40"


@pytest.mark.parametrize("fast", [True, False])
def test_a_rescale_that_would_overflow_float32_is_ignored_and_said(tmp_path, monkeypatch, fast):
    """RescaleSlope 1e308 is a finite double but inf in float32: every pixel became inf or NaN, and the models
    answered NaN (a semantic fuzz of predict found it). Such a rescale, and one that is not a number, is ignored
    and named in the series' notes; the pixels stay finite, and a sane rescale beside them is still applied."""
    monkeypatch.setattr("spinegrade.io.dicom.FAST_ROUTE", fast)
    px = [_ramp(k) for k in range(4)]
    for k, (slope, intercept) in enumerate([("1e308", "0"), ("2", "-1e300"), ("nan", "5"), ("2", "5")]):
        ds = make_dataset(px[k], position=(0.0, 0.0, 4.0 * k), instance=k + 1)
        with pydicom.config.disable_value_validation():
            ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        write_dicom(tmp_path / "s" / f"{k}.dcm", ds)
    (s,) = load_series(tmp_path / "s")
    got = np.asarray(s.pixels)
    assert s.n_slices == 4 and np.isfinite(got).all()
    expected = [px[0], 2.0 * px[1], px[2] + 5.0, 2.0 * px[3] + 5.0]
    assert all(np.array_equal(got[k], np.asarray(e, dtype=np.float32)) for k, e in enumerate(expected))
    assert s.notes == [("RescaleIntercept -1e+300 ignored (rescaled pixels would overflow float32) in 1 of 4 files: "
                        "1.dcm"),
                       "RescaleSlope 'nan' ignored (not one finite number) in 1 of 4 files: 2.dcm",
                       "RescaleSlope 1e+308 ignored (rescaled pixels would overflow float32) in 1 of 4 files: 0.dcm"]


@pytest.mark.parametrize("fast", [True, False])
def test_a_decoder_failure_is_said_in_the_decoders_words(tmp_path, monkeypatch, fast):
    """pydicom's own sentence, not "ValueError: ..." nor "exceptions were raised by all available plugins"; and
    an RLE frame that overruns the header's size (pylibjpeg-rle panics) is named as such."""
    monkeypatch.setattr("spinegrade.io.dicom.FAST_ROUTE", fast)
    write_series(tmp_path / "s", 2, transfer_syntax=RLELossless)
    for k, (kw, v) in enumerate((("BitsStored", 17), ("PhotometricInterpretation", "XYZ"), ("Rows", 31))):
        ds = pydicom.dcmread(tmp_path / "s" / "1.dcm")
        setattr(ds, kw, v)
        ds.ImagePositionPatient, ds.SOPInstanceUID = [0, 0, 50 + k], pydicom.uid.generate_uid()
        ds.save_as(tmp_path / "s" / f"{kw}.dcm")
    (s,) = load_series(tmp_path / "s")
    got = _reasons(s.skipped)
    assert s.n_slices == 2 and len(got) == 3
    assert got["BitsStored.dcm"] == ("could not decode pixel data (RLE Lossless): A (0028,0101) 'Bits Stored' value of "
                                     "'17' is invalid, it must be in the range (1, 64) and no greater than the "
                                     "(0028,0100) 'Bits Allocated' value of '16'")
    assert got["PhotometricInterpretation.dcm"] == ("could not decode pixel data (RLE Lossless): Unknown (0028,0004) "
                                                    "'Photometric Interpretation' value 'XYZ'")
    assert got["Rows.dcm"].startswith("could not decode pixel data (RLE Lossless): the decoder failed on damaged or "
                                      "mis-sized data (")


@pytest.mark.parametrize("fast", [True, False])
def test_a_panicking_rle_decoder_prints_nothing_on_the_command_line(tmp_path, fast):
    """pylibjpeg-rle prints a Rust panic message before raising on an RLE frame that overruns the header's size:
    in a process with one thread the reader keeps it off stderr, and the file's skip reason says what happened."""
    write_series(tmp_path / "s", 2, transfer_syntax=RLELossless)
    ds = pydicom.dcmread(tmp_path / "s" / "1.dcm")
    ds.Rows, ds.ImagePositionPatient, ds.SOPInstanceUID = 31, [0, 0, 50], pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "s" / "short.dcm")
    code = ("import spinegrade.io.dicom as d, sys; d.FAST_ROUTE = sys.argv[2] == '1'; "
            "(s,) = d.load_series(sys.argv[1]); print(s.n_slices, [k.reason for k in s.skipped])")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "s"), "1" if fast else "0"], capture_output=True,
                       text=True, check=False, env={**os.environ, "RUST_BACKTRACE": "0"})
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("2 ['could not decode pixel data (RLE Lossless): the decoder failed on damaged or ")
    assert p.stderr == ""


def test_a_header_claiming_fewer_pixels_than_its_data_holds_is_skipped_not_scrambled(tmp_path):
    """32 x 40 pixels under a header saying 5 x 26: decoding the first 260 bytes as a 5 x 26 image would give a
    scrambled one (hypothesis found it in test_claimed_sizes_beyond_the_budget_are_never_decoded)."""
    write_series(tmp_path / "s", 2)
    forge_size(tmp_path / "s" / "1.dcm", tmp_path / "s" / "small.dcm", 5, 26)
    (s,) = load_series(tmp_path / "s")
    assert s.n_slices == 2 and s.pixels.shape[1:] == (32, 40)
    assert _reasons(s.skipped)["small.dcm"].startswith("pixel data too long: 2560 bytes where the header's size "
                                                       "needs 260")


_BOMB_UNDER_2GB = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from spinegrade.io.dicom import load_series
(s,) = load_series(sys.argv[1])
print(s.n_slices, [k.reason.split(":")[0] for k in s.skipped])
"""


def test_bomb_under_a_2gb_address_space_limit(tmp_path):
    """A regression (decoding the claimed size) fails here instead of taking the machine's memory."""
    write_series(tmp_path / "s", 2, transfer_syntax=RLELossless)
    forge_size(tmp_path / "s" / "1.dcm", tmp_path / "s" / "bomb.dcm", 65535, 65535)
    r = subprocess.run([sys.executable, "-c", _BOMB_UNDER_2GB, str(tmp_path / "s")], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2 ['image too large']"


# --- damaged headers ---------------------------------------------------------------------------------------
def test_unknown_vrs_cost_the_element_not_the_file_or_the_study(tmp_path, capsys):
    write_series(tmp_path / "study" / "7", 5)
    flip_vr(tmp_path / "study" / "7" / "2.dcm", b"\x08\x00\x3e\x10", b"QQ")  # SeriesDescription
    flip_vr(tmp_path / "study" / "7" / "4.dcm", b"\x18\x00\x50\x00", b"ZZ")  # SliceThickness
    flip_vr(tmp_path / "study" / "7" / "5.dcm", b"\x28\x00\x10\x00", b"QQ")  # Rows: the file is unusable
    study = load_study(tmp_path / "study")
    (s,) = study.series
    assert s.n_slices == 4 and s.pixels.shape == (4, 32, 40)
    assert any(n.startswith("damaged header element (0008,103E) ignored") for n in s.notes)
    assert any(n.startswith("damaged header element (0018,0050) ignored") for n in s.notes)
    assert _reasons(s.skipped) == {"5.dcm": "damaged header: damaged header element (0028,0010) ignored "
                                            "(Unknown Value Representation 'QQ' in tag (0028,0010))"}
    assert main(["inspect", str(tmp_path / "study")]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "damaged header element (0008,103E)" in out.out


@pytest.mark.parametrize("fast", [True, False])
def test_a_damaged_element_in_some_files_is_said_with_their_names(tmp_path, monkeypatch, fast):
    """The series' note names the files whose element was dropped (was "in some files")."""
    monkeypatch.setattr("spinegrade.io.dicom.FAST_ROUTE", fast)
    write_series(tmp_path / "study" / "7", 6)
    for name in ("2.dcm", "5.dcm"):
        flip_vr(tmp_path / "study" / "7" / name, b"\x08\x00\x3e\x10", b"QQ")  # SeriesDescription
    (s,) = load_study(tmp_path / "study").series
    assert s.n_slices == 6
    assert s.notes == [("damaged header element (0008,103E) ignored (Unknown Value Representation 'QQ' in tag "
                        "(0008,103E)) in 2 of 6 files: 2.dcm, 5.dcm")]


@pytest.mark.parametrize("ts", [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian])
def test_an_unknown_or_damaged_transfer_syntax_costs_the_file_with_a_reason_that_says_so(tmp_path, ts):
    """A file meta naming a transfer syntax DICOM does not define (a damaged UID, or a private one): the file
    is skipped with a reason naming the syntax, not the library's "UID is not a transfer syntax"."""
    folder = tmp_path / "study" / "7"
    write_series(folder, 4, transfer_syntax=ts)
    uid = str(ts).encode() + b"\0" * (len(str(ts)) % 2)  # as the file holds it, padded to even length
    # 2.dcm: a well-formed UID that is no transfer syntax (1.2.890...); 3.dcm: a NUL byte inside it
    for name, new in (("2.dcm", uid.replace(b"1.2.840", b"1.2.890")), ("3.dcm", uid.replace(b"10008", b"10\x0008"))):
        data = (folder / name).read_bytes()
        assert data.count(uid) == 1
        (folder / name).write_bytes(data.replace(uid, new))
    (s,) = load_study(tmp_path / "study").series
    assert s.n_slices == 2
    reasons = _reasons(s.skipped)
    assert set(reasons) == {"2.dcm", "3.dcm"}
    for why in reasons.values():
        assert why.startswith("unknown transfer syntax '1.2.8") and "in the file meta" in why, why
        assert "Error" not in why


def test_a_pixel_description_in_another_known_vr_costs_the_file_with_a_reason(tmp_path):
    """A bit flip that turns a VR into another DICOM VR: BitsStored read as text (AS), the photometric
    interpretation as numbers (US). The value decodes, but no decoder can use it: the file is skipped with a reason
    naming the element (was pydicom's "TypeError: '<=' not supported between instances of 'int' and 'str'")."""
    folder = tmp_path / "study" / "7"
    write_series(folder, 4)
    flip_vr(folder / "2.dcm", b"\x28\x00\x01\x01", b"AS")  # BitsStored
    flip_vr(folder / "3.dcm", b"\x28\x00\x04\x00", b"US")  # PhotometricInterpretation: 6 numbers
    (s,) = load_study(tmp_path / "study").series
    assert s.n_slices == 2
    reasons = _reasons(s.skipped)
    assert set(reasons) == {"2.dcm", "3.dcm"}
    assert reasons["2.dcm"] == "damaged header: BitsStored is '\\x0c' (VR AS), not a number"
    assert reasons["3.dcm"].startswith("damaged header: PhotometricInterpretation is [")
    assert reasons["3.dcm"].endswith("(VR US), not text")


def test_a_uid_of_several_values_is_kept_as_the_file_writes_it(tmp_path):
    """A backslash in a SOP Instance UID makes it several values: the series keeps it as written ("a\\b"), not as
    a Python list's text."""
    folder = tmp_path / "study" / "7"
    write_series(folder, 3)
    ds = pydicom.dcmread(folder / "2.dcm")
    ds.SOPInstanceUID = "1.2.3\\4.5"
    ds.save_as(folder / "2.dcm")
    (s,) = load_study(tmp_path / "study").series
    assert s.n_slices == 3 and "1.2.3\\4.5" in s.sop_instance_uids


def test_a_header_whose_sequence_breaks_off_is_skipped_as_damaged_not_as_unreadable_from_disk(tmp_path):
    """pydicom says "No tag to read" with an OSError when a sequence's items run out: that is the file's
    structure, not the disk, so the reason must not read "cannot read"."""
    from dicom_factory import add_clinical_sequences

    folder = tmp_path / "study" / "7"
    write_series(folder, 3)
    ds = pydicom.dcmread(folder / "3.dcm")
    write_dicom(folder / "3.dcm", add_clinical_sequences(ds, undefined=True))
    data = (folder / "3.dcm").read_bytes()
    end = data.index(b"\xfe\xff\x0d\xe0\x00\x00\x00\x00") + 8  # the first item's delimiter, inside a sequence
    (folder / "3.dcm").write_bytes(data[:end])
    (s,) = load_study(tmp_path / "study").series
    assert s.n_slices == 2
    why = _reasons(s.skipped)["3.dcm"]
    assert why.startswith("damaged or truncated header: its elements cannot be followed (No tag to read at "), why


# --- links and odd directory entries -----------------------------------------------------------------------
def test_a_link_loop_inside_a_study_is_not_followed(tmp_path):
    write_series(tmp_path / "123" / "7", 3)
    write_series(tmp_path / "123" / "8", 3, series_uid="1.2.3.8")
    (tmp_path / "123" / "loop").symlink_to(".")
    (tmp_path / "123" / "7" / "up").symlink_to("..")
    study = load_study(tmp_path / "123")
    assert [s.series_id for s in study.series] == ["7", "8"]
    assert [s.n_slices for s in study.series] == [3, 3]
    links = {k.path: k.reason for k in study.skipped + study.series[0].skipped}
    assert links == {str(tmp_path / "123" / "loop"): "symbolic link to a folder: not followed",
                     str(tmp_path / "123" / "7" / "up"): "symbolic link to a folder: not followed"}


def test_links_out_of_the_study_dangling_links_and_fifos_are_not_read(tmp_path):
    write_series(tmp_path / "s", 3)
    write_series(tmp_path / "elsewhere", 1, origin=(0, 0, 50))
    (tmp_path / "s" / "out.dcm").symlink_to(tmp_path / "elsewhere" / "1.dcm")
    (tmp_path / "s" / "dangling.dcm").symlink_to(tmp_path / "nowhere.dcm")
    (tmp_path / "s" / "inside.dcm").symlink_to(tmp_path / "s" / "1.dcm")  # inside the tree: a duplicate
    os.mkfifo(tmp_path / "s" / "fifo.dcm")  # opening it would block the reader forever
    (s,) = load_series(tmp_path / "s")
    assert s.n_slices == 3
    assert _reasons(s.skipped) == {
        "out.dcm": "symbolic link to a file outside the study folder: not followed",
        "dangling.dcm": "symbolic link that leads nowhere (dangling or a loop)",
        "inside.dcm": "duplicate: same slice position as 1.dcm",
        "fifo.dcm": "not a regular file (a device, pipe or socket)",
    }


# --- the classes that were already handled, kept honest --------------------------------------------------
def test_corpus_of_files_that_are_named_and_skipped(tmp_path):
    folder = tmp_path / "s"
    write_series(folder, 3)
    good = (folder / "1.dcm").read_bytes()
    rng = np.random.default_rng(0)
    (folder / "zero.dcm").write_bytes(b"")
    (folder / "cut.dcm").write_bytes(good[:200])
    (folder / "noise.dcm").write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (folder / "preamble_only.dcm").write_bytes(b"\0" * 128 + b"DICM")
    (folder / "readme.txt").write_text("not DICOM\n")
    rgb = make_dataset(np.zeros((32, 40), np.uint8), position=(0, 0, 30), photometric="RGB")
    rgb.SamplesPerPixel, rgb.PlanarConfiguration = 3, 0
    rgb.PixelData = np.zeros((32, 40, 3), np.uint8).tobytes()
    write_dicom(folder / "rgb.dcm", rgb)
    locked = folder / "locked.dcm"
    locked.write_bytes(good)
    locked.chmod(0)
    (s,) = load_series(folder)
    reasons = _reasons(s.skipped)
    assert s.n_slices == 3
    assert reasons["zero.dcm"] == "empty file (0 bytes)"
    assert reasons["cut.dcm"].startswith("truncated")
    assert reasons["noise.dcm"].startswith("not a DICOM file")
    assert reasons["readme.txt"].startswith("not a DICOM file")
    assert reasons["preamble_only.dcm"].startswith(("no pixel data", "unreadable DICOM", "truncated"))
    assert reasons["rgb.dcm"].startswith("colour image (SamplesPerPixel 3)")
    if os.geteuid() != 0:  # root reads anything
        assert reasons["locked.dcm"] == "cannot read: Permission denied"


def _ramp(value: int, dtype=np.uint16):
    return slice_pixels(value=value, bits=12).astype(dtype)


@pytest.mark.parametrize("kind", ["monochrome1", "signed", "big_endian", "deflate"])
def test_pixel_variants_read_to_the_same_values(tmp_path, kind):
    px = _ramp(9)
    if kind == "monochrome1":
        write_dicom(tmp_path / "a.dcm", make_dataset(px, photometric="MONOCHROME1"))
        want = 4095.0 - px
    elif kind == "signed":
        px = px.astype(np.int16) - 1000
        write_dicom(tmp_path / "a.dcm", make_dataset(px, signed=True, bits_stored=16))
        want = px
    elif kind == "big_endian":
        ds = make_dataset(px)
        ds.PixelData = px.astype(">u2").tobytes()
        write_dicom(tmp_path / "a.dcm", ds, ExplicitVRBigEndian)
        want = px
    else:
        write_dicom(tmp_path / "a.dcm", make_dataset(px), DeflatedExplicitVRLittleEndian)
        want = px
    np.testing.assert_array_equal(read_slice(tmp_path / "a.dcm"), np.asarray(want, np.float32))


def test_unicode_paths_mixed_series_duplicate_uids_and_missing_geometry(tmp_path):
    root = tmp_path / "étude 研究"
    write_series(root / "série", 3)
    write_series(root / "série", 2, series_uid="1.2.3.99", names=["x1.dcm", "x2.dcm"], orientation=(
        0.0, 1.0, 0.0, 0.0, 0.0, -1.0))  # a second series mixed into the folder
    dup = pydicom.dcmread(root / "série" / "1.dcm")
    dup.save_as(root / "série" / "1_copy.dcm")  # same SOPInstanceUID, same position
    write_dicom(root / "série" / "nogeo.dcm", make_dataset(_ramp(1), omit=("ImageOrientationPatient",
                                                                           "ImagePositionPatient")))
    study = load_study(root)
    sizes = sorted((s.series_id, s.n_slices, s.geometry_known) for s in study.series)
    assert sizes == [("série", 3, True), ("série.2", 2, True), ("série.3", 1, False)]
    main_series = study.get("série")
    assert _reasons(main_series.skipped) == {"1_copy.dcm": "duplicate: same slice position as 1.dcm"}
    info = inspect_study(root)
    assert info["study_id"] == "étude 研究" and info["n_series"] == 3


def test_empty_study_folder_is_one_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no readable DICOM image found \\(the folder has no files\\)"):
        load_study(tmp_path / "empty")
    shutil.rmtree(tmp_path / "empty")


def test_a_folder_that_cannot_be_listed_is_named_and_the_rest_read(tmp_path, monkeypatch):
    from spinegrade.io import dicom

    write_series(tmp_path / "study" / "a" / "x", 2)
    write_series(tmp_path / "study" / "b", 2, series_uid="1.2.3.99", origin=(0, 0, 40))
    listing = os.scandir

    def scandir(path):  # as for a folder without read permission (root reads anything, so it is simulated)
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return listing(path)

    (tmp_path / "study" / "a" / "locked").mkdir()
    monkeypatch.setattr(dicom.os, "scandir", scandir)
    study = load_study(tmp_path / "study")
    assert sum(s.n_slices for s in study.series) == 4
    assert _reasons(study.skipped) == {"locked": "folder cannot be read: Permission denied"}
