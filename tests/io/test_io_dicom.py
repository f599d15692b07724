"""Reading series and studies from generated DICOM files: transfer syntaxes, sorting, bad files, splits, gaps."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from dicom_factory import (
    AXIAL,
    CORONAL,
    GDCM_ENCODED,
    SAGITTAL,
    make_dataset,
    normal_of,
    slice_pixels,
    write_dicom,
    write_series,
)
from spinegrade import vocab
from spinegrade.cli import main
from spinegrade.errors import DataError
from spinegrade.io.dicom import load_series, load_study, read_slice


# --- transfer syntaxes ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEGLSLossless,
                                JPEG2000Lossless, JPEGLosslessSV1, JPEGLossless, JPEGBaseline8Bit],
                         ids=lambda t: t.name)
def test_every_transfer_syntax_decodes_to_the_written_pixels(tmp_path, ts):
    if ts in GDCM_ENCODED:
        pytest.importorskip("gdcm", reason="python-gdcm is the only encoder here for the JPEG processes")
    bits = 8 if ts == JPEGBaseline8Bit else 12
    written = write_series(tmp_path / "s", 3, transfer_syntax=ts, bits=bits)
    (s,) = load_series(tmp_path / "s")
    assert s.transfer_syntax == str(ts)
    assert s.pixels.dtype == np.float32 and s.pixels.shape == (3, 32, 40)
    want = np.stack(written).astype(np.float32)
    if ts == JPEGBaseline8Bit:  # lossy: close, not equal
        assert np.abs(s.pixels - want).mean() < 3.0
        assert not np.array_equal(s.pixels, np.zeros_like(want))
    else:
        np.testing.assert_array_equal(s.pixels, want)
    assert s.skipped == []


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEGLSLossless,
                                JPEG2000Lossless, JPEGLosslessSV1],
                         ids=lambda t: t.name)
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_the_readers_decoding_equals_pydicoms_pixel_array(tmp_path, ts, signed):
    """The reader hands the Pixel Data bytes it read with the header straight to pydicom's decoder, with the
    pixel description from that header: the values must be those of `dcmread(f).pixel_array`, sign included."""
    import pydicom

    if ts in GDCM_ENCODED:
        pytest.importorskip("gdcm", reason="python-gdcm is the only encoder here for the JPEG processes")
    pixels = [slice_pixels(value=100 * k, bits=11, seed=k).astype(np.int16) - (1000 if signed else 0)
              for k in range(3)]
    write_series(tmp_path / "study" / "7", 3, transfer_syntax=ts, bits=12, signed=signed, pixels=pixels)
    (s,) = load_study(tmp_path / "study", stored=True).series
    want = np.stack([pydicom.dcmread(f).pixel_array for f in s.files])
    assert want.dtype == (np.int16 if signed else np.uint16) and (want.min() < 0) == signed
    np.testing.assert_array_equal(s.stored.values, want)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    px = slice_pixels(value=7)
    write_dicom(tmp_path / "a.dcm", make_dataset(px, rescale=(2.5, -100.0)))
    np.testing.assert_allclose(read_slice(tmp_path / "a.dcm"), px.astype(np.float32) * 2.5 - 100.0)


def test_monochrome1_is_inverted_to_monochrome2_sense(tmp_path):
    px = slice_pixels(value=3)
    write_dicom(tmp_path / "a.dcm", make_dataset(px, photometric="MONOCHROME1", bits_stored=12))
    got = read_slice(tmp_path / "a.dcm")
    np.testing.assert_array_equal(got, 4095.0 - px.astype(np.float32))
    # the brightest stored value is now the darkest
    assert got.flat[np.argmax(px)] == got.min()


def test_signed_pixels_keep_their_sign(tmp_path):
    px = (slice_pixels(value=0).astype(np.int16) - 500)
    write_dicom(tmp_path / "a.dcm", make_dataset(px, signed=True, bits_stored=16))
    np.testing.assert_array_equal(read_slice(tmp_path / "a.dcm"), px.astype(np.float32))
    assert read_slice(tmp_path / "a.dcm").min() < 0


# --- sorting -------------------------------------------------------------------------------------------------
def test_slices_sorted_along_the_normal_not_by_name_or_instance(tmp_path):
    # slice k (k mm along the normal) gets a scrambled file name and a scrambled InstanceNumber
    names = ["b", "z.dcm", "10.dcm", "a.dcm", "2"]
    instances = [4, 1, 5, 3, 2]
    written = write_series(tmp_path / "s", 5, orientation=SAGITTAL, origin=(10.0, -5.0, 3.0), step=3.3,
                           names=names, instances=instances)
    (s,) = load_series(tmp_path / "s")
    assert s.instance_numbers.tolist() == instances
    assert [p.rsplit("/", 1)[-1] for p in s.files] == names
    np.testing.assert_array_equal(s.pixels, np.stack(written).astype(np.float32))
    offsets = s.positions @ normal_of(SAGITTAL)
    assert np.all(np.diff(offsets) > 0)
    assert s.geometry.slice_spacing == pytest.approx(3.3)
    assert s.slice_of_instance(5) == 2


def test_header_only_read_gives_the_same_geometry(tmp_path):
    write_series(tmp_path / "s", 4, orientation=SAGITTAL, names=["d", "c", "b", "a"])
    (full,) = load_series(tmp_path / "s")
    (head,) = load_series(tmp_path / "s", load_pixels=False)
    assert head.pixels is None
    assert head.instance_numbers.tolist() == full.instance_numbers.tolist()
    np.testing.assert_array_equal(head.positions, full.positions)
    assert head.files == full.files and head.role == full.role


def test_tags_are_plain_json_values_and_hold_no_patient_identity(tmp_path):
    write_series(tmp_path / "s", 2, echo_time=12, repetition_time=550, inversion_time=None, description="T1 SAG")
    (s,) = load_series(tmp_path / "s")
    json.dumps(s.tags)
    assert s.tags["EchoTime"] == 12.0 and s.tags["RepetitionTime"] == 550.0
    assert s.tags["SeriesDescription"] == "T1 SAG" and s.description == "T1 SAG"
    for kw in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID", "SliceThickness"):
        assert kw in s.tags
    assert "SECRET" not in json.dumps(s.tags) and "Patient" not in json.dumps(s.tags)
    assert len(s.sop_instance_uids) == 2 and all(s.sop_instance_uids)


# --- bad files -----------------------------------------------------------------------------------------------
def _add_bad_files(folder):
    """A zero-byte file, a header cut at 300 bytes, one cut inside the pixel data, text, and no pixels."""
    good = (folder / "1.dcm").read_bytes()
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "cut300.dcm").write_bytes(good[:300])
    (folder / "cutpix.dcm").write_bytes(good[:-500])
    (folder / "notes.txt").write_text("this is not DICOM\n")
    write_dicom(folder / "nopix.dcm", make_dataset(None, position=(0, 0, 99)))
    return {"empty.dcm": "empty", "cut300.dcm": "truncated", "cutpix.dcm": "truncated",
            "notes.txt": "not a DICOM file", "nopix.dcm": "no pixel data"}


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, RLELossless], ids=lambda t: t.name)
@pytest.mark.parametrize("load_pixels", [True, False])
def test_bad_files_are_skipped_with_reasons_and_the_rest_loads(tmp_path, ts, load_pixels):
    write_series(tmp_path / "s", 4, transfer_syntax=ts)
    expected = _add_bad_files(tmp_path / "s")
    (s,) = load_series(tmp_path / "s", load_pixels=load_pixels)
    assert s.n_slices == 4 and s.instance_numbers.tolist() == [1, 2, 3, 4]
    reasons = {k.path.rsplit("/", 1)[-1]: k.reason for k in s.skipped}
    assert set(reasons) == set(expected)
    for name, start in expected.items():
        assert reasons[name].startswith(start), (name, reasons[name])


def test_undecodable_pixel_data_is_skipped_when_decoding(tmp_path):
    write_series(tmp_path / "s", 3, transfer_syntax=RLELossless)
    raw = bytearray((tmp_path / "s" / "2.dcm").read_bytes())
    raw[-400:-300] = b"\x00" * 100  # damages the RLE segment but keeps the file's length and end marker
    (tmp_path / "s" / "2.dcm").write_bytes(bytes(raw))
    (head,) = load_series(tmp_path / "s", load_pixels=False)
    assert head.n_slices == 3  # the header check sees a complete file
    (s,) = load_series(tmp_path / "s")
    assert s.instance_numbers.tolist() == [1, 3]
    (bad,) = s.skipped
    assert bad.path.endswith("2.dcm") and bad.reason.startswith("could not decode pixel data (RLE Lossless): ")


def test_corrupt_file_reasons_never_raise_through_read_slice(tmp_path):
    (tmp_path / "x.dcm").write_text("hello")
    with pytest.raises(DataError, match="x.dcm: not a DICOM file"):
        read_slice(tmp_path / "x.dcm")


def test_study_without_any_image_raises_a_one_line_data_error(tmp_path):
    study = tmp_path / "12345"
    (study / "678").mkdir(parents=True)
    (study / "678" / "1.dcm").write_bytes(b"")
    (study / "678" / "2.dcm").write_text("nope")
    with pytest.raises(DataError) as e:
        load_study(study)
    msg = str(e.value)
    assert str(study) in msg and "no readable DICOM image" in msg and "\n" not in msg
    assert msg.endswith("among 2 files (empty file: 678/1.dcm; not a DICOM file: 678/2.dcm)")


def test_cli_inspect_of_an_unreadable_folder_exits_2_with_one_line(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.dcm").write_bytes(b"")
    assert main(["inspect", str(tmp_path / "junk")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no readable DICOM image" in err and "Traceback" not in err
    assert main(["inspect", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


# --- splits and duplicates -----------------------------------------------------------------------------------
def test_mixed_slice_sizes_are_split_and_the_largest_keeps_the_id(tmp_path):
    folder = tmp_path / "study" / "77"
    write_series(folder, 4, names=[f"big{k}.dcm" for k in range(4)])
    write_series(folder, 2, rows=48, cols=48, names=["small0.dcm", "small1.dcm"], instances=[5, 6])
    parts = load_series(folder)
    assert [(p.series_id, p.n_slices, p.shape) for p in parts] == [("77", 4, (32, 40)), ("77.2", 2, (48, 48))]
    assert all(p.source_series_id == "77" for p in parts)
    assert "77.2" in parts[0].notes[0] and "image size" in parts[0].notes[0]
    assert "split from series 77" in parts[1].notes[0] and "48x48" in parts[1].notes[0]


def test_mixed_orientations_are_split_not_stacked(tmp_path):
    folder = tmp_path / "9"
    tilted = np.array([1.0, 0, 0, 0, np.cos(0.2), np.sin(0.2)])  # 11.5 degrees about the x axis
    write_series(folder, 5, names=[f"a{k}.dcm" for k in range(5)])
    write_series(folder, 3, orientation=tilted, origin=(0, 0, 40), names=[f"b{k}.dcm" for k in range(3)],
                 instances=[6, 7, 8])
    parts = load_series(folder)
    assert [p.n_slices for p in parts] == [5, 3]
    np.testing.assert_allclose(parts[1].orientation, tilted, atol=1e-6)
    assert parts[1].instance_numbers.tolist() == [6, 7, 8]
    assert "11.5 degrees" in parts[1].notes[0]
    assert all(p.role == vocab.AXIAL_T2 for p in parts)


def test_tiny_orientation_jitter_is_not_a_split(tmp_path):
    folder = tmp_path / "9"
    write_series(folder, 3, names=["a", "b", "c"])
    jitter = np.array([1.0, 0, 0, 0, 1.0, 1e-5])
    write_series(folder, 1, orientation=jitter, origin=(0, 0, 12), names=["d"], instances=[4])
    (s,) = load_series(folder)
    assert s.n_slices == 4


def test_two_files_at_one_position_keep_one_and_say_so(tmp_path):
    folder = tmp_path / "5"
    write_series(folder, 3)
    write_dicom(folder / "copy.dcm", make_dataset(slice_pixels(value=1), position=(0, 0, 4.0), instance=9))
    (s,) = load_series(folder)
    assert s.instance_numbers.tolist() == [1, 2, 3]
    assert any("same slice position" in n for n in s.notes)
    (dup,) = [k for k in s.skipped if k.path.endswith("copy.dcm")]
    assert dup.reason == "duplicate: same slice position as 2.dcm"


# --- missing tags --------------------------------------------------------------------------------------------
def test_missing_pixel_spacing_falls_back_with_a_note(tmp_path):
    write_series(tmp_path / "a", 2, omit=("PixelSpacing",), ImagerPixelSpacing=["0.7", "0.8"])
    (a,) = load_series(tmp_path / "a")
    assert a.pixel_spacing == (0.7, 0.8) and any("ImagerPixelSpacing" in n for n in a.notes)
    write_series(tmp_path / "b", 2, omit=("PixelSpacing",))
    (b,) = load_series(tmp_path / "b")
    assert b.pixel_spacing == (1.0, 1.0) and any("assumed 1.0 mm" in n for n in b.notes)


def test_missing_orientation_and_position_give_placeholder_geometry_and_unknown_role(tmp_path):
    write_series(tmp_path / "s", 3, names=["c", "a", "b"], instances=[3, 1, 2],
                 omit=("ImageOrientationPatient", "ImagePositionPatient"), description="T2")
    (s,) = load_series(tmp_path / "s")
    assert not s.geometry_known
    assert s.instance_numbers.tolist() == [1, 2, 3]
    assert s.role == vocab.UNKNOWN_ROLE and "ImageOrientationPatient" in s.role_reason
    assert any("placeholder geometry" in n for n in s.notes)
    assert s.geometry.slice_spacing == pytest.approx(4.0)  # from SliceThickness


def test_missing_instance_numbers_follow_slice_order(tmp_path):
    write_series(tmp_path / "s", 3, names=["x", "y", "z"], omit=("InstanceNumber",), orientation=SAGITTAL)
    (s,) = load_series(tmp_path / "s")
    assert s.instance_numbers.tolist() == [1, 2, 3]
    assert any("without InstanceNumber" in n for n in s.notes)


def test_geometry_inside_enhanced_functional_groups_is_found(tmp_path):
    ds = make_dataset(slice_pixels(), omit=("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"))
    shared, orient, measures = Dataset(), Dataset(), Dataset()
    orient.ImageOrientationPatient = list(SAGITTAL)
    measures.PixelSpacing = ["0.6", "0.6"]
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = [orient], [measures]
    frame, pos = Dataset(), Dataset()
    pos.ImagePositionPatient = [1.0, 2.0, 3.0]
    frame.PlanePositionSequence = [pos]
    ds.SharedFunctionalGroupsSequence, ds.PerFrameFunctionalGroupsSequence = [shared], [frame]
    write_dicom(tmp_path / "s" / "1.dcm", ds)
    (s,) = load_series(tmp_path / "s")
    assert s.geometry_known and s.geometry.plane == "sagittal" and s.pixel_spacing == (0.6, 0.6)
    np.testing.assert_allclose(s.positions[0], [1, 2, 3])


def test_multiframe_files_without_per_frame_positions_are_skipped_with_a_reason(tmp_path):
    write_series(tmp_path / "s", 2)
    px = np.stack([slice_pixels(), slice_pixels(value=9)])
    ds = make_dataset(px[0], position=(0, 0, 50))
    ds.NumberOfFrames = 2
    ds.PixelData = px.tobytes()
    write_dicom(tmp_path / "s" / "multi.dcm", ds)
    (s,) = load_series(tmp_path / "s")
    assert s.n_slices == 2
    assert [k.reason for k in s.skipped] == ["multi-frame file (2 frames) without a position for each frame "
                                             "(PerFrameFunctionalGroupsSequence): its slices cannot be placed"]


# --- study layouts -------------------------------------------------------------------------------------------
def test_rsna_layout_uses_folder_names_as_ids(tmp_path):
    study = tmp_path / "4242"
    write_series(study / "100", 3, orientation=SAGITTAL, description="T1", series_uid="1.2.3.100")
    write_series(study / "20", 3, orientation=SAGITTAL, description="T2", series_uid="1.2.3.20")
    write_series(study / "300", 4, orientation=AXIAL, series_uid="1.2.3.300")
    st = load_study(study)
    assert st.study_id == "4242"
    assert [s.series_id for s in st.series] == ["20", "100", "300"]
    assert {s.series_id: s.role for s in st.series} == {
        "100": vocab.SAGITTAL_T1, "20": vocab.SAGITTAL_T2, "300": vocab.AXIAL_T2}
    assert all(s.study_id == "4242" for s in st.series)


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # '1.2.840.99.abc' on purpose
def test_plain_nested_folder_groups_by_series_uid(tmp_path):
    study = tmp_path / "exam"
    write_series(study / "x" / "deep", 3, orientation=SAGITTAL, description="T1",
                 series_uid="1.2.840.99.5551", names=["IM0", "IM1", "IM2"])
    write_series(study / "x" / "deep", 4, orientation=AXIAL, series_uid="1.2.840.99.7772",
                 names=["IM3", "IM4", "IM5", "IM6"])
    write_series(study / "y", 2, orientation=SAGITTAL, description="STIR", series_uid="1.2.840.99.abc",
                 names=["f1", "f2"], series_number=7)
    (study / "README").write_text("exported by a viewer")
    st = load_study(study)
    assert st.study_id == "exam"
    got = {s.series_id: (s.n_slices, s.role) for s in st.series}
    assert got == {"5551": (3, vocab.SAGITTAL_T1), "7772": (4, vocab.AXIAL_T2), "7": (2, vocab.SAGITTAL_T2)}
    assert [k.reason.split(" (")[0] for k in st.skipped] == ["not a DICOM file"]


def test_plain_folder_ids_fall_back_when_uid_suffixes_collide(tmp_path):
    study = tmp_path / "exam"
    write_series(study, 2, series_uid="1.2.3.1", series_number=11, names=["a1", "a2"])
    write_series(study, 2, series_uid="1.2.4.1", series_number=12, names=["b1", "b2"], orientation=SAGITTAL)
    write_series(study, 2, series_uid="1.2.5.11", series_number=3, names=["c1", "c2"], orientation=CORONAL)
    write_series(study, 2, series_uid="1.2.6.2", series_number=3, names=["d1", "d2"], origin=(0, 0, 90))
    st = load_study(study)
    # two UIDs end in ".1": one falls back to its SeriesNumber 12; the other's SeriesNumber 11 is already
    # the suffix of a third UID, so it is named by its position
    assert sorted(s.series_id for s in st.series) == ["11", "12", "2", "series1"]


def test_load_study_rejects_a_file_or_missing_path(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_study(tmp_path / "nope")
    (tmp_path / "f.dcm").write_bytes(b"")
    with pytest.raises(DataError, match="not a folder"):
        load_study(tmp_path / "f.dcm")


def test_a_series_folder_with_only_bad_files_is_reported_at_study_level(tmp_path):
    study = tmp_path / "1"
    write_series(study / "good", 2)
    (study / "bad").mkdir()
    (study / "bad" / "1.dcm").write_bytes(b"")
    shutil.copy(study / "good" / "1.dcm", study / "bad" / "2.dcm")
    (study / "bad" / "2.dcm").write_bytes((study / "bad" / "2.dcm").read_bytes()[:300])
    st = load_study(study)
    assert [s.series_id for s in st.series] == ["good"]
    assert sorted(k.reason.split(":")[0].split(" (")[0] for k in st.skipped) == ["empty file", "truncated"]
