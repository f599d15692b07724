"""The reader's fast route (`io/scan.py`) against the pydicom route: on every corpus the same series, the same
skipped files with the same reasons and the same pixels; a plainly well-formed file takes the fast route, any
other file pydicom's (where every file was read before the fast route existed)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from dicom_factory import (
    add_clinical_sequences,
    GDCM_ENCODED,
    PYDICOM_ENCODED,
    SAGITTAL,
    damage,
    make_dataset,
    slice_pixels,
    to_enhanced_mr,
    write_dicom,
    write_series,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from spinegrade.io import dicom, scan
from spinegrade.io.dicom import _decode_stored, _read_header, _read_header_fast, load_study
from spinegrade.io.types import SkippedFile


def both_routes(monkeypatch, fn):
    """(fn() with the fast route, fn() by the pydicom route alone)."""
    monkeypatch.setattr(dicom, "FAST_ROUTE", False)
    slow = fn()
    monkeypatch.setattr(dicom, "FAST_ROUTE", True)
    return fn(), slow


def _skips(skipped) -> list[tuple[str, str]]:
    return [(k.path, k.reason) for k in skipped]


def assert_same_study(a, b) -> None:
    assert _skips(a.skipped) == _skips(b.skipped)
    assert [s.series_id for s in a.series] == [s.series_id for s in b.series]
    for x, y in zip(a.series, b.series):
        for name in ("role", "role_reason", "description", "files", "sop_instance_uids", "transfer_syntax", "tags",
                     "notes", "source_series_id", "geometry_known"):
            assert getattr(x, name) == getattr(y, name), (x.series_id, name)
        assert _skips(x.skipped) == _skips(y.skipped)
        assert np.array_equal(x.instance_numbers, y.instance_numbers)
        assert np.array_equal(x.geometry.orientation, y.geometry.orientation)
        assert np.array_equal(x.geometry.positions, y.geometry.positions)
        assert x.pixel_spacing == y.pixel_spacing
        if x.stored is not None:
            assert x.stored.values.dtype == y.stored.values.dtype
            assert np.array_equal(x.stored.values, y.stored.values)
            for k in range(len(x.stored)):
                assert np.array_equal(x.stored.transform(k), y.stored.transform(k), equal_nan=True)
        assert np.array_equal(np.asarray(x.pixels), np.asarray(y.pixels))


def routes_taken(folder) -> dict[str, bool]:
    """Path below `folder` -> whether the fast route reads that file."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            r = _read_header(p, 10**8)
            out[str(p.relative_to(folder))] = not isinstance(r, (SkippedFile, list)) \
                and isinstance(r.ds, scan.FlatHeader)
    return out


def build_corpus(root) -> None:
    """A plain folder mixing what the fast route reads and what it leaves to pydicom."""
    write_series(root / "explicit", 3, bits=12)
    write_series(root / "implicit", 3, transfer_syntax=ImplicitVRLittleEndian, series_uid="1.2.3.10")
    write_series(root / "rle", 3, transfer_syntax=RLELossless, series_uid="1.2.3.11", orientation=SAGITTAL)
    write_series(root / "mono1", 2, photometric="MONOCHROME1", rescale=(2.5, -100.0), series_uid="1.2.3.12")
    px8 = [slice_pixels(bits=8, value=10 * k) for k in range(2)]
    write_series(root / "eight", 2, pixels=px8, bits=8, series_uid="1.2.3.13")
    signed = [(slice_pixels(value=50 * k).astype(np.int16) - 1000) for k in range(2)]
    write_series(root / "signed", 2, pixels=signed, signed=True, bits=12, series_uid="1.2.3.14")
    for k, ts in enumerate(PYDICOM_ENCODED[1:] + GDCM_ENCODED):
        px = slice_pixels(value=7 * k, bits=8 if ts.name.startswith("JPEG Baseline") else 12)
        write_dicom(root / "codecs" / f"{k}.dcm", make_dataset(px, series_uid=f"1.2.3.2{k}", position=(0, 0, k)), ts)
    for k, (undefined, ts) in enumerate([(True, ExplicitVRLittleEndian), (False, ImplicitVRLittleEndian),
                                         (True, RLELossless)]):
        ds = add_clinical_sequences(make_dataset(slice_pixels(value=k), series_uid="1.2.3.30", position=(0, 0, 4 * k),
                                          instance=k + 1), undefined)
        write_dicom(root / "sequences" / f"{k}.dcm", ds, ts)
    tags = dict(ImageType=["ORIGINAL", "PRIMARY", "M", "ND"], ProtocolName="", SeriesDescription=" T2 sag ",
                ScanningSequence=["SE", "IR"], SequenceVariant="SK", Manufacturer="ACME", MagneticFieldStrength="1.5",
                FlipAngle="90", series_uid="1.2.3.50", echo_time=87.5, repetition_time=3000.0)
    write_dicom(root / "tags" / "1.dcm", make_dataset(slice_pixels(), instance=1, **tags))
    latin = make_dataset(slice_pixels(), instance=2, position=(0, 0, 4), **tags)
    latin.SpecificCharacterSet, latin.SeriesDescription = "ISO_IR 100", "Sagittal T2 é"  # not ASCII: pydicom's
    write_dicom(root / "tags" / "2.dcm", latin)
    to_enhanced_mr(sorted((root / "explicit").glob("*.dcm")), root / "enhanced" / "mf.dcm")
    odd = root / "odd"
    write_dicom(odd / "leading_zero.dcm", make_dataset(slice_pixels(), series_uid="1.2.3.40", InstanceNumber="07"))
    write_dicom(odd / "empty_slope.dcm", make_dataset(slice_pixels(), series_uid="1.2.3.41", position=(0, 0, 1),
                                                      RescaleSlope=""))
    bad = write_dicom(odd / "bad_ds.dcm", make_dataset(slice_pixels(), series_uid="1.2.3.42", position=(0, 7, 0)))
    bad.write_bytes(bad.read_bytes().replace(b"\\7\\", b"\\x\\"))  # a position pydicom cannot write
    ds = make_dataset(slice_pixels(), series_uid="1.2.3.44", AcquisitionMatrix=[0, 256, 256])
    matrix = write_dicom(odd / "bad_matrix.dcm", ds)  # an element nobody reads, damaged: noted in its series
    head = b"\x18\x00\x10\x13US\x06\x00"  # as UL its 6 bytes are not whole values: pydicom cannot decode it
    assert head in matrix.read_bytes()
    matrix.write_bytes(matrix.read_bytes().replace(head, head.replace(b"US", b"UL")))
    ds = make_dataset(slice_pixels(), series_uid="1.2.3.43", position=(0, 0, 2))
    ds.Rows = 31  # the data holds 32 rows: "too long"
    write_dicom(odd / "too_long.dcm", ds)
    good = (root / "explicit" / "1.dcm").read_bytes()
    (odd / "cut.dcm").write_bytes(good[:-100])
    (odd / "bitflip_vr.dcm").write_bytes(good.replace(b"DS", b"D\x13", 1))
    (odd / "not_dicom.dcm").write_bytes(b"hello")


def test_a_mixed_corpus_reads_the_same_by_both_routes(tmp_path, monkeypatch):
    build_corpus(tmp_path / "study")
    fast, slow = both_routes(monkeypatch, lambda: load_study(tmp_path / "study", stored=True))
    assert_same_study(fast, slow)
    floats, floats_slow = both_routes(monkeypatch, lambda: load_study(tmp_path / "study"))
    assert_same_study(floats, floats_slow)
    taken = routes_taken(tmp_path / "study")
    # every well-formed flat single-frame explicit-VR file is read fast, whatever its codec
    for folder in ("explicit", "rle", "mono1", "eight", "signed", "codecs"):  # and tags/1.dcm, below
        assert all(f for name, f in taken.items() if name.startswith(folder + "/")), (folder, taken)
    assert taken["tags/1.dcm"] and not taken["tags/2.dcm"]
    series = next(s for s in fast.series if s.files[0].endswith("tags/1.dcm"))
    assert series.tags["ImageType"] == ["ORIGINAL", "PRIMARY", "M", "ND"] and "ProtocolName" not in series.tags
    assert series.tags["SeriesDescription"] == " T2 sag" and series.tags["MagneticFieldStrength"] == 1.5
    # implicit VR: pydicom decodes every element of it; and every file with a damaged element, even one the
    # reader never reads (bad_matrix.dcm): pydicom's route says which. Sequences are read fast in explicit VR.
    slow_ones = ("implicit/", "enhanced/", "odd/", "sequences/1.dcm")
    assert not any(f for name, f in taken.items() if name.startswith(slow_ones))
    assert taken["sequences/0.dcm"] and taken["sequences/2.dcm"]
    matrix = next(s for s in fast.series if s.files[0].endswith("bad_matrix.dcm"))
    assert any(n.startswith("damaged header element (0018,1310)") for n in matrix.notes), matrix.notes
    reasons = dict(_skips(fast.skipped) + [k for s in fast.series for k in _skips(s.skipped)])
    reasons = {path.rsplit("/", 1)[-1]: why for path, why in reasons.items()}
    assert reasons["too_long.dcm"].startswith("pixel data too long")
    assert reasons["cut.dcm"].startswith("truncated")


def _nested(depth: int) -> Sequence:
    """A sequence whose first item holds another, `depth` deep."""
    item = Dataset()
    item.CodeValue = "T-D0123"
    if depth > 1:
        item.ConceptNameCodeSequence = _nested(depth - 1)
    return Sequence([item])


def test_sequences_are_read_fast_in_explicit_vr_and_implicit_vr_goes_the_pydicom_route(tmp_path, monkeypatch):
    for k, (undefined, ts) in enumerate([(True, ExplicitVRLittleEndian), (False, ExplicitVRLittleEndian),
                                         (True, RLELossless)]):
        path = write_dicom(tmp_path / f"{k}.dcm", add_clinical_sequences(make_dataset(slice_pixels()), undefined), ts)
        fast = _read_header_fast(path, 10**8, True)
        assert fast is not None and fast.rows == 32 and "ReferencedImageSequence" in fast.ds
        monkeypatch.setattr(dicom, "FAST_ROUTE", False)
        slow = _read_header(path, 10**8, True)
        monkeypatch.setattr(dicom, "FAST_ROUTE", True)
        assert (fast.instance, fast.series_uid, fast.problems) == (slow.instance, slow.series_uid, slow.problems)
        assert np.array_equal(_decode_stored(fast), _decode_stored(slow))
    flat = write_dicom(tmp_path / "flat.dcm", make_dataset(slice_pixels()), ImplicitVRLittleEndian)
    assert _read_header_fast(flat, 10**8, True) is None


def test_unusual_sequences_go_the_pydicom_route(tmp_path):
    """What the fast route leaves to pydicom's: an icon (pixel data inside an item), nesting deeper than it
    walks, a value the reader reads from every file damaged inside an item, and broken item structure."""
    def fast(name: str, ds: Dataset, undefined: bool = True):
        for elem in ds.iterall():
            if elem.VR == "SQ":
                elem.is_undefined_length = undefined
                for item in elem.value:
                    item.is_undefined_length_sequence_item = undefined
        return _read_header_fast(write_dicom(tmp_path / f"{name}.dcm", ds), 10**8, True)

    icon = Dataset()
    icon.Rows, icon.Columns, icon.BitsAllocated, icon.PixelData = 2, 2, 8, b"\0" * 4
    icon["PixelData"].VR = "OB"
    ds = make_dataset(slice_pixels())
    ds.IconImageSequence = Sequence([icon])
    assert fast("icon", ds) is None
    for depth, read in ((8, True), (9, False)):
        ds = make_dataset(slice_pixels())
        ds.ContentSequence = _nested(depth)
        assert (fast(f"depth{depth}", ds) is not None) == read
        assert (fast(f"depth{depth}_defined", ds, undefined=False) is not None) == read
    inner = Dataset()
    inner.InstanceNumber = "1"
    ds = make_dataset(slice_pixels())
    ds.ReferencedImageSequence = Sequence([inner])
    good = write_dicom(tmp_path / "inner.dcm", ds)
    assert _read_header_fast(good, 10**8, True) is not None
    data = good.read_bytes()
    at = data.index(b"\x20\x00\x13\x00IS\x02\x001 ")  # the InstanceNumber inside the item
    (tmp_path / "inner_bad.dcm").write_bytes(data[:at + 8] + b"x1" + data[at + 10:])
    assert _read_header_fast(tmp_path / "inner_bad.dcm", 10**8, True) is None
    seq = write_dicom(tmp_path / "seq.dcm", add_clinical_sequences(make_dataset(slice_pixels()), True))
    data = seq.read_bytes()
    assert _read_header_fast(seq, 10**8, True) is not None
    for name, old, new in (("no_item_end", b"\xfe\xff\x0d\xe0", b"\xfe\xff\x0e\xe0"),
                           ("no_sequence_end", b"\xfe\xff\xdd\xe0", b"\xfe\xff\xde\xe0"),
                           ("item_end_length", b"\xfe\xff\x0d\xe0\x00\x00\x00\x00",
                            b"\xfe\xff\x0d\xe0\x01\x00\x00\x00")):
        assert old in data
        (tmp_path / f"{name}.dcm").write_bytes(data.replace(old, new, 1))
        assert _read_header_fast(tmp_path / f"{name}.dcm", 10**8, True) is None, name


def test_functional_groups_and_unread_keywords_go_the_pydicom_route(tmp_path):
    write_series(tmp_path / "s", 2)
    mf = to_enhanced_mr(sorted((tmp_path / "s").glob("*.dcm")), tmp_path / "mf.dcm")
    assert _read_header_fast(mf, 10**8, False) is None
    s = _read_header_fast(tmp_path / "s" / "1.dcm", 10**8, False)
    assert s.ds.get("Rows") == 32 and s.ds.get("ImagerPixelSpacing") is None and "PatientName" in s.ds
    with pytest.raises(LookupError):  # never read: a caller must ask pydicom for it
        s.ds.get("PatientName")


@pytest.mark.parametrize("bits,stored,signed,photometric", [
    (16, 12, False, "MONOCHROME2"), (16, 12, True, "MONOCHROME2"), (16, 16, True, "MONOCHROME1"),
    (8, 8, False, "MONOCHROME2"), (8, 6, True, "MONOCHROME2"), (16, 10, False, "MONOCHROME1")])
@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, RLELossless])
def test_fast_decoding_equals_pydicoms(tmp_path, bits, stored, signed, photometric, ts):
    rng = np.random.default_rng(bits + stored)
    dtype = np.dtype(f"{'i' if signed else 'u'}{bits // 8}")
    info = np.iinfo(dtype)
    px = rng.integers(info.min, info.max, size=(16, 24), endpoint=True).astype(dtype)  # unused bits set too
    ds = make_dataset(px, signed=signed, bits_stored=stored, photometric=photometric)
    path = write_dicom(tmp_path / "a.dcm", ds, ts)
    s = _read_header_fast(path, 10**8, True)
    assert s is not None
    arr = scan.decode_fast(s.raw[1], s.raw[2], s.transfer_syntax, s.ds)
    want = pydicom.dcmread(path).pixel_array
    assert arr is not None and arr.dtype == want.dtype and np.array_equal(arr, want)


_SETTINGS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def good_files(tmp_path_factory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("scan")
    out = {}
    for name, ts in (("native", ExplicitVRLittleEndian), ("rle", RLELossless)):
        ds = make_dataset(slice_pixels(16, 16), rescale=(1.5, -3.0), echo_time=90.0, repetition_time=3000.0)
        out[name] = write_dicom(root / f"{name}.dcm", ds, ts).read_bytes()
    for name, undefined in (("sequences", True), ("defined_sequences", False)):
        ds = add_clinical_sequences(make_dataset(slice_pixels(16, 16), rescale=(1.5, -3.0), echo_time=90.0), undefined)
        out[name] = write_dicom(root / f"{name}.dcm", ds).read_bytes()
    return out


@_SETTINGS
@given(kind=st.sampled_from(["native", "rle", "sequences", "defined_sequences"]),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.one_of(
           st.binary(min_size=1, max_size=4),
           st.sampled_from([bytes([c]) for c in b"\x00 \t\r\x1c\x1e\\+-.e9"]))), max_size=4),  # padding, separators
       cut=st.one_of(st.none(), st.integers(0, 10_000)))
def test_a_damaged_file_read_fast_reads_as_pydicom_reads_it(tmp_path, monkeypatch, good_files, kind, edits, cut):
    path = tmp_path / "f.dcm"
    path.write_bytes(damage(good_files[kind], edits, cut))
    assert_routes_agree(path, monkeypatch)


@pytest.mark.parametrize("tag,byte", [(b"\x28\x00\x53\x10DS", b"\0"), (b"\x20\x00\x13\x00IS", b"\0"),
                                      (b"\x28\x00\x04\x00CS", b"\0"), (b"\x20\x00\x32\x00DS", b"\0"),
                                      (b"\x20\x00\x0e\x00UI", b"\x1d"), (b"\x08\x00\x18\x00UI", b"\t")])
def test_a_values_first_byte_reads_as_pydicom_reads_it(tmp_path, monkeypatch, good_files, tag, byte):
    """pydicom strips a value's trailing spaces and NULs, then leaves DS and IS to float/int (no NUL allowed) and
    strips a UID of any whitespace: "\\0.5" is no RescaleSlope of 0.5, nor "\\01" an InstanceNumber, and a UID
    starting with a group separator is read without it (both found by `scripts/fuzz_routes.py`)."""
    data = good_files["native"]
    at = data.index(tag) + 8  # the value, after tag, VR and 2-byte length
    path = tmp_path / "f.dcm"
    path.write_bytes(data[:at] + byte + data[at + 1:])
    assert_routes_agree(path, monkeypatch)


def test_a_second_value_starting_with_a_separator_reads_as_pydicom_reads_it(tmp_path, monkeypatch, good_files):
    """A PixelSpacing whose second value starts with a record separator (0x1E): str.strip() removes it, float()
    refuses it, as pydicom's route does (found by `scripts/fuzz_routes.py`)."""
    data = good_files["native"]
    at = data.index(b"\\", data.index(b"\x28\x00\x30\x00DS")) + 1
    path = tmp_path / "f.dcm"
    path.write_bytes(data[:at] + b"\x1e" + data[at + 1:])
    assert_routes_agree(path, monkeypatch)
    (s,) = dicom.load_series(tmp_path, load_pixels=False)
    assert "no PixelSpacing or ImagerPixelSpacing: assumed 1.0 mm pixels" in s.notes


@pytest.mark.parametrize("length", [6, 8])
def test_an_unknown_vr_value_of_a_known_binary_tag_reads_as_pydicom_reads_it(tmp_path, monkeypatch, length):
    """DiffusionBValue (FD) encoded as UN: pydicom decodes it by the dictionary's VR when it decodes a series' first
    header whole, and notes a length that is no whole number of doubles; the scan leaves such a file to it."""
    from pydicom.dataelem import DataElement

    ds = make_dataset(slice_pixels())
    ds[0x00189087] = DataElement(0x00189087, "OB", bytes(range(1, length + 1)))
    path = write_dicom(tmp_path / "f.dcm", ds)
    data = path.read_bytes()
    at = data.index(b"\x18\x00\x87\x90OB")
    path.write_bytes(data[:at + 4] + b"UN" + data[at + 6:])  # UN has the same layout as OB
    assert (_read_header_fast(path, 10**6, True) is None) == (length % 8 != 0)
    assert_routes_agree(path, monkeypatch)
    (s,) = dicom.load_series(tmp_path, load_pixels=False)
    assert any(n.startswith("damaged header element (0018,9087)") for n in s.notes) == (length % 8 != 0)


def assert_routes_agree(path, monkeypatch) -> None:
    """Where the fast route reads a file, the pydicom route reads the same slice, pixels and series from it."""
    tmp_path = path.parent
    fast = _read_header_fast(path, 10**6, True)
    if fast is None:
        return  # the pydicom route reads it: nothing of the fast route's to compare
    monkeypatch.setattr(dicom, "FAST_ROUTE", False)
    slow = _read_header(path, 10**6, True)
    assert not isinstance(slow, (SkippedFile, list)), slow
    for name in ("rows", "cols", "spacing", "spacing_source", "instance", "series_uid", "rescale", "transfer_syntax",
                 "problems"):
        assert getattr(fast, name) == getattr(slow, name), name
    for name in ("orientation", "position"):
        assert np.array_equal(getattr(fast, name), getattr(slow, name)), name
    assert np.array_equal(dicom._transform(fast), dicom._transform(slow), equal_nan=True)
    a, b = _decode_stored(fast), _decode_stored(slow)
    if isinstance(a, SkippedFile):
        assert a == b
    else:
        assert a.dtype == b.dtype and np.array_equal(a, b)
    # and as a series: the same tags (read by the fast route from the file it scanned) and notes
    fast_series, slow_series = both_routes(monkeypatch, lambda: dicom.load_series(tmp_path, load_pixels=False))
    assert [(s.tags, s.notes, s.sop_instance_uids) for s in fast_series] == \
        [(s.tags, s.notes, s.sop_instance_uids) for s in slow_series]


def test_the_real_studies_read_the_same_and_fast(monkeypatch, two_studies):
    for study in sorted((two_studies / "train_images").iterdir()):
        fast, slow = both_routes(monkeypatch, lambda study=study: load_study(study, stored=True))
        assert_same_study(fast, slow)
        assert all(routes_taken(study).values())


def test_the_scans_tag_numbers_are_pydicoms():
    from pydicom.datadict import tag_for_keyword

    assert {k: tag_for_keyword(k) for k in scan.TAGS} == scan.TAGS


def test_the_scans_transfer_syntaxes_answer_as_pydicoms_uid():
    from pydicom.uid import UID

    for uid in sorted(scan._ENCAPSULATED | {scan.EXPLICIT_LE}):
        mine, theirs = scan.syntax(uid), UID(uid)
        assert mine == theirs and mine.name == theirs.name
        for prop in ("is_implicit_VR", "is_little_endian", "is_deflated", "is_compressed", "is_encapsulated"):
            assert getattr(mine, prop) == getattr(theirs, prop), (uid, prop)
    assert scan.syntax("1.2.840.10008.1.2") is None and scan.syntax("1.2.840.10008.1.2.1.99") is None


@pytest.mark.parametrize("told", ["smaller", "over the bound"])
def test_a_file_that_grew_after_its_size_was_taken_is_read_whole(tmp_path, monkeypatch, told):
    """The fast route reads a file's stated size and one byte more; when the file holds more (it grew between
    the stat and the read) it reads on, up to its bound: the same slice as before, or, past the bound, the pydicom
    route. `told` is what the stat said: a size below the file's, or (with the bound lowered) a size under a bound
    that the file exceeds."""
    path = write_dicom(tmp_path / "a.dcm", make_dataset(slice_pixels(value=300, rows=48, cols=40)))
    real = path.stat().st_size
    expect = _decode_stored(_read_header_fast(path, 10**6, True))
    if told == "over the bound":
        monkeypatch.setattr(scan, "MAX_FILE_BYTES", real - 10)
    monkeypatch.setattr(dicom.os, "fstat", lambda fd: SimpleNamespace(st_size=real - 1000))  # what the stat said
    fast = _read_header_fast(path, 10**6, True)
    if told == "smaller":
        assert fast is not None and isinstance(fast.ds, scan.FlatHeader)
        got = _decode_stored(fast)
        assert got.dtype == expect.dtype and np.array_equal(got, expect)
    else:
        assert fast is None  # more than the bound: left to pydicom
        slow = _read_header(path, 10**6, True)
        assert not isinstance(slow, SkippedFile) and not isinstance(slow.ds, scan.FlatHeader)
        assert np.array_equal(_decode_stored(slow), expect)


def test_an_implicit_vr_file_is_checked_as_an_explicit_vr_one_is(tmp_path):
    """Reading a header decodes the values the reader uses and leaves the rest for when they are read, whatever
    the transfer syntax: a damaged value of a public element nothing reads (DiffusionBValue, FD, 6 bytes: no whole
    number of doubles) costs nothing in an implicit-VR file either (its VR is the dictionary's, never a bit flip),
    as in an explicit-VR one (there as UN); a damaged value the reader uses is said in both."""
    from pydicom.dataelem import DataElement

    notes = {}
    for name, ts in (("explicit", ExplicitVRLittleEndian), ("implicit", ImplicitVRLittleEndian)):
        folder = tmp_path / name
        write_series(folder, 3, transfer_syntax=ts, rescale=(1.25, -7.5))
        last = folder / "3.dcm"  # not the series' first file (whose header is decoded whole)
        ds = pydicom.dcmread(last)
        ds[0x00189087] = DataElement(0x00189087, "OB", bytes(range(1, 7)))
        write_dicom(last, ds, ts)
        data = last.read_bytes()
        if name == "explicit":
            at = data.index(b"\x18\x00\x87\x90OB")
            data = data[:at + 4] + b"UN" + data[at + 6:]  # UN has the same layout as OB
        assert data.count(b"1.25") == 1
        last.write_bytes(data.replace(b"1.25", b"1;25"))
        (s,) = dicom.load_series(folder)
        assert s.n_slices == 3
        notes[name] = s.notes
    assert notes["explicit"] == notes["implicit"]
    assert "RescaleSlope '1;25' ignored (not one finite number) in 1 of 3 files: 3.dcm" in notes["implicit"]
    assert not any("(0018,9087)" in n for n in notes["implicit"])
