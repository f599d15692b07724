"""The reader's fast route through a plainly well-formed file: one pass over its bytes, no pydicom objects.

pydicom builds a Dataset of every element, converts values on access through several layers, and its pixel
decoders validate and dispatch on every call; for the small anonymised single-frame files of the RSNA data that
costs more than decoding their pixels. `scan` reads a file that is plainly well formed and returns a
`FlatHeader` with the values the reader uses (geometry, pixel description, identity, and the acquisition tags a
series keeps from its first file: all top-level elements), or None. Plainly well formed means: a 'DICM'
preamble; an explicit-VR little-endian transfer syntax, native or encapsulated; a dataset of known VRs whose
lengths fit the file, binary values whole; the values the reader uses in their standard VR and a canonical form
(plain ASCII, integers without sign or leading zero, and so on); and sequences (as clinical headers carry: a
referenced image, a request) whose items follow the same rules, nested at most 8 deep, with no pixel data in
them and no functional groups (an enhanced file's).

None is not an error: it sends the file down the pydicom route, which reads anything pydicom can and names
what is wrong with a damaged file. So every skipped file, every damaged element, every implicit-VR, unusual
sequence, multi-frame or big-endian header takes the route it always took, and this module only has to be right
about the files it accepts. On those the two routes agree by construction: for an explicit-VR header the pydicom
route too decodes only the elements the reader uses (in sequence items too, so there they must be canonical
here as well) and checks the VRs of the rest, and a series' first header, which it decodes whole, has nothing
pydicom could fail on (text stays text, binary values are whole). Implicit-VR files stay with pydicom because its
route decodes every element of them (their VRs are not in the file). `tests/io/test_io_scan.py` checks that both
routes give the same series on every corpus the tests build, the real studies and randomly damaged files (with
and without sequences).

`decode_fast` decodes native and RLE pixel data the way pydicom's decoders do (the pylibjpeg RLE plugin, the
unused high bits masked or sign-extended), or returns None for anything else (other codecs, unusual bit
depths, a failing codec), which then goes to pydicom's decoder.
"""

from __future__ import annotations

import functools
import re
import struct

import numpy as np

_PREAMBLE = 128
_PIXEL_DATA = 0x7FE00010
_FLOAT_PIXEL_DATA = (0x7FE00008, 0x7FE00009)  # where pydicom's header read stops too: not our kind of pixels
# Explicit VR with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2); every other VR has a 2-byte length.
_LONG_VR_BYTES = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_VR_BYTES = _LONG_VR_BYTES | frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
_HEAD = struct.Struct("<HH2sH")  # tag, VR, the length of a VR with a 2-byte length
_LONG_LENGTH = struct.Struct("<I")
EXPLICIT_LE = "1.2.840.10008.1.2.1"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
# Files above this size go the pydicom route: the fast one holds the whole file in memory.
MAX_FILE_BYTES = 16 * 2**20

# The elements the reader uses, by the VR they must have here (anything else: the pydicom route).
_US = ("SamplesPerPixel", "PlanarConfiguration", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit",
       "PixelRepresentation")
_IS = ("InstanceNumber", "SeriesNumber", "NumberOfFrames")
_DS = ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing", "ImagerPixelSpacing", "RescaleSlope",
       "RescaleIntercept")
_UI = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID")
_CS = ("PhotometricInterpretation",)
# Sequences the reader reads (an enhanced file's functional groups: such a file goes the pydicom route).
_SQ = ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence")
_META_UI = ("TransferSyntaxUID", "MediaStorageSOPClassUID")
# The acquisition tags a series keeps (`dicom._TAG_KEYWORDS` less those above), read from its first file; "CS+"
# may hold several values. Empty is allowed here, and given as "" (pydicom gives "" too).
_SERIES_TAGS = {
    "SeriesDescription": "LO", "ProtocolName": "LO", "Modality": "CS", "Manufacturer": "LO",
    "MagneticFieldStrength": "DS", "EchoTime": "DS", "RepetitionTime": "DS", "InversionTime": "DS",
    "FlipAngle": "DS", "ScanningSequence": "CS+", "SequenceVariant": "CS+", "ScanOptions": "CS+",
    "SequenceName": "SH", "ImageType": "CS+", "SliceThickness": "DS", "SpacingBetweenSlices": "DS",
    "StudyInstanceUID": "UI", "FrameOfReferenceUID": "UI",
}
# Where an enhanced file keeps its acquisition tags: at the top level of a classic file they are read by a route
# of the reader that this one does not take (`dicom._ENHANCED_TAGS`), so their presence sends the file to pydicom.
_ENHANCED_ONLY = ("EffectiveEchoTime", "InversionTimes")
# Binary VRs whose values pydicom unpacks: a length that is not a whole number of values fails there (the
# pydicom route drops the element with a note), so such a file is left to it.
_VALUE_SIZE = {b"US": 2, b"SS": 2, b"UL": 4, b"SL": 4, b"FL": 4, b"FD": 8, b"AT": 4, b"SV": 8, b"UV": 8,
               # UN: pydicom decodes a known tag's UN value by the dictionary's VR (a series' first header is
               # decoded whole), so a length no binary VR could hold is left to it too
               b"UN": 8}
_INTEGER = re.compile(r"0|-?[1-9][0-9]*")


# The tag of every keyword this module reads or answers for (checked against pydicom's dictionary by a test): the
# scan needs no pydicom, so a batch of well-formed files is read without importing it (0.3-0.6 s of a cold start).
TAGS = {
    "BitsAllocated": 0x00280100, "BitsStored": 0x00280101, "Columns": 0x00280011, "EchoTime": 0x00180081,
    "EffectiveEchoTime": 0x00189082, "ExtendedOffsetTable": 0x7FE00001, "FlipAngle": 0x00181314,
    "FrameOfReferenceUID": 0x00200052, "HighBit": 0x00280102, "ImageOrientationPatient": 0x00200037,
    "ImagePositionPatient": 0x00200032, "ImageType": 0x00080008, "ImagerPixelSpacing": 0x00181164,
    "InstanceNumber": 0x00200013, "InversionTime": 0x00180082, "InversionTimes": 0x00189079,
    "MagneticFieldStrength": 0x00180087, "Manufacturer": 0x00080070, "MediaStorageSOPClassUID": 0x00020002,
    "Modality": 0x00080060, "NumberOfFrames": 0x00280008, "PerFrameFunctionalGroupsSequence": 0x52009230,
    "PhotometricInterpretation": 0x00280004, "PixelRepresentation": 0x00280103, "PixelSpacing": 0x00280030,
    "PlanarConfiguration": 0x00280006, "ProtocolName": 0x00181030, "RepetitionTime": 0x00180080,
    "RescaleIntercept": 0x00281052, "RescaleSlope": 0x00281053, "Rows": 0x00280010, "SOPClassUID": 0x00080016,
    "SOPInstanceUID": 0x00080018, "SamplesPerPixel": 0x00280002, "ScanOptions": 0x00180022,
    "ScanningSequence": 0x00180020, "SequenceName": 0x00180024, "SequenceVariant": 0x00180021,
    "SeriesDescription": 0x0008103E, "SeriesInstanceUID": 0x0020000E, "SeriesNumber": 0x00200011,
    "SharedFunctionalGroupsSequence": 0x52009229, "SliceThickness": 0x00180050, "SpacingBetweenSlices": 0x00180088,
    "StudyInstanceUID": 0x0020000D, "TransferSyntaxUID": 0x00020010,
}


def _tags(keywords) -> dict[int, str]:
    return {TAGS[k]: k for k in keywords}


# tag -> (keyword, what it must be) for the dataset elements the reader uses: a VR (a value the reader reads from
# every file), "tag:<VR>" (a series tag) or "absent"; and the same for the file meta.
_WANTED = {
    **{t: (k, f"tag:{_SERIES_TAGS[k]}") for t, k in _tags(_SERIES_TAGS).items()},
    **{t: (k, "absent") for t, k in _tags(_ENHANCED_ONLY).items()},
    **{t: (k, vr) for vr, keywords in (("US", _US), ("IS", _IS), ("DS", _DS), ("UI", _UI), ("CS", _CS))
       for t, k in _tags(keywords).items()},
}
_META_WANTED = {t: (k, "UI") for t, k in _tags(_META_UI).items()}
_VRS_READ = frozenset({"US", "IS", "DS", "UI", "CS"})  # what `_WANTED` asks of a value read from every file
# Sequences the reader reads (an enhanced file's functional groups): the pydicom route reads those files.
_READ_SEQUENCES = frozenset(_tags(_SQ))
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_ITEM_HEAD = struct.Struct("<HHI")  # an item's or a delimiter's tag and length
_MAX_DEPTH = 8  # sequences nested deeper go the pydicom route


# The encapsulated transfer syntaxes of still images that the fast route reads (explicit VR little endian, as
# every encapsulated syntax is); their pixels go to pydicom's decoder, but for RLE (`decode_fast`).
_ENCAPSULATED = frozenset({
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",  # JPEG
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",  # JPEG-LS
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93",  # J2K
    "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203",  # HTJ2K
})


class Syntax(str):
    """A transfer syntax the fast route reads, answering what the reader asks of pydicom's UID without pydicom."""

    is_implicit_VR = False
    is_little_endian = True
    is_deflated = False

    @property
    def is_compressed(self) -> bool:
        return str(self) != EXPLICIT_LE

    is_encapsulated = is_compressed

    @property
    def name(self) -> str:
        from pydicom.uid import UID

        return UID(str(self)).name


@functools.lru_cache(maxsize=64)
def syntax(uid: str) -> Syntax | None:
    """The transfer syntax of that UID when the fast route reads it, else None."""
    return Syntax(uid) if uid == EXPLICIT_LE or uid in _ENCAPSULATED else None


class FlatHeader:
    """The values of a header's top level that the reader uses, read like a pydicom Dataset
    (`get`, `in`, attributes) by keyword; `file_meta` is the file meta group's. Other keywords raise
    LookupError: they were never read, so a caller must take the pydicom route for them."""

    def __init__(self, values: dict, tags: frozenset, meta: FlatHeader | None = None):
        self._values = values
        self._tags = tags  # every tag present, read or not
        self.file_meta = meta

    def get(self, keyword: str, default=None):
        if keyword == "file_meta":
            return self.file_meta if self.file_meta is not None else default
        if keyword in self._values:
            return self._values[keyword]
        if keyword in _ALL_KEYWORDS:
            return default
        raise LookupError(f"{keyword} is not read by the fast header scan")

    def __contains__(self, keyword: str) -> bool:
        if keyword in self._values:
            return True
        tag = TAGS.get(keyword)
        if tag is None:  # a keyword this module does not know: pydicom's dictionary has it
            from pydicom.datadict import tag_for_keyword

            tag = tag_for_keyword(keyword)
        return tag is not None and tag in self._tags

    def __getattr__(self, keyword: str):
        if keyword.startswith("_"):
            raise AttributeError(keyword)
        value = self.get(keyword)
        if value is None:
            raise AttributeError(keyword)
        return value


_ALL_KEYWORDS = frozenset(_US + _IS + _DS + _UI + _CS + _SQ + _META_UI + tuple(_SERIES_TAGS))


def scan(data: bytes) -> tuple[FlatHeader, int] | None:
    """Scan a whole file's bytes: its header and where its Pixel Data element starts (at its tag), or None where
    the pydicom route must read it (see the module doc)."""
    if len(data) < _PREAMBLE + 4 or data[_PREAMBLE:_PREAMBLE + 4] != b"DICM":
        return None
    meta = _elements(data, _PREAMBLE + 4, _META_WANTED, meta=True)
    if meta is None:
        return None
    meta_values, meta_tags, pos = meta
    ts = meta_values.get("TransferSyntaxUID")
    if not ts or syntax(ts) is None:
        return None
    body = _elements(data, pos, _WANTED, meta=False)
    if body is None:
        return None
    values, tags, pos = body
    group, element = struct.unpack_from("<HH", data, pos)
    if group << 16 | element != _PIXEL_DATA:
        return None  # no Pixel Data element where the header ends: the pydicom route says what is there
    return FlatHeader(values, tags, FlatHeader(meta_values, meta_tags)), pos


def _elements(data: bytes, pos: int, wanted: dict, meta: bool) -> tuple[dict, frozenset, int] | None:
    """Walk a group of elements from `pos`: the file meta (group 2) or the dataset up to Pixel Data. Returns
    (the wanted values by keyword, every tag seen, where the walk stopped) or None for anything unusual."""
    end, values, seen, last = len(data), {}, [], -1
    head = _HEAD.unpack_from
    while pos + 8 <= end:
        group, element, vr, length = head(data, pos)  # length: the 2-byte one, right for most VRs
        tag = group << 16 | element
        if meta and group != 2:
            break
        if tag == _PIXEL_DATA:
            break
        if tag in _FLOAT_PIXEL_DATA:
            return None
        if tag <= last or (not meta and group <= 2) or group == 0xFFFE or vr not in _VR_BYTES:
            return None
        found = _length(data, pos, vr, length, end)
        if found is None:
            return None
        length, pos = found
        if vr == b"SQ":
            if meta or tag in _READ_SEQUENCES:
                return None
            pos = _sequence(data, pos, length, 1)  # checked as pydicom's route would read it; nothing kept
            if pos is None:
                return None
            seen.append(tag)
            last = tag
            continue
        if length == _UNDEFINED or pos + length > end:
            return None
        if length % _VALUE_SIZE.get(vr, 1):
            return None
        want = wanted.get(tag)
        if want is not None:
            keyword, need = want
            value = _convert(data[pos:pos + length], vr.decode("ascii"), need)
            if value is None:
                return None
            values[keyword] = value
        seen.append(tag)
        last = tag
        pos += length
    if not meta and pos + 8 > end:
        return None
    return values, frozenset(seen), pos


def _length(data: bytes, pos: int, vr: bytes, short: int, end: int) -> tuple[int, int] | None:
    """(value length, where the value starts) of the element whose tag is at `pos`: `short`, its 2-byte length,
    or the 4-byte one that follows a long VR (None when that is cut off)."""
    if vr not in _LONG_VR_BYTES:
        return short, pos + 8
    if pos + 12 > end:
        return None
    return _LONG_LENGTH.unpack_from(data, pos + 8)[0], pos + 12


def _sequence(data: bytes, pos: int, length: int, depth: int) -> int | None:
    """Check the items of a sequence whose value starts at `pos` (`length`: defined, or undefined up to its
    Sequence Delimitation Item); where it ends, or None for anything unusual. Its values are never kept: the
    reader reads none inside a classic file's sequences."""
    if depth > _MAX_DEPTH:
        return None
    undefined = length == _UNDEFINED
    end = len(data) if undefined else pos + length
    if end > len(data):
        return None
    while undefined or pos < end:
        if pos + 8 > end:
            return None
        group, element, item_length = _ITEM_HEAD.unpack_from(data, pos)
        pos += 8
        tag = group << 16 | element
        if tag == _SEQUENCE_END:
            return pos if undefined and item_length == 0 else None
        if tag != _ITEM:
            return None
        if item_length == _UNDEFINED:
            pos = _item(data, pos, end, depth, delimited=True)
        elif pos + item_length > end:
            return None
        else:
            pos = _item(data, pos, pos + item_length, depth, delimited=False)
        if pos is None:
            return None
    return pos


def _item(data: bytes, pos: int, end: int, depth: int, delimited: bool) -> int | None:
    """Check the elements of one item (up to `end`, or up to its Item Delimitation Item when `delimited`) by the
    rules of the top-level walk: ascending tags, known VRs, lengths that fit, binary values whole. An element the
    reader reads from every file is also decoded by pydicom's route inside an item, so it must have its VR and a
    canonical value here too; pixel data inside an item (an icon) sends the file the pydicom route."""
    head, last = _HEAD.unpack_from, -1
    while delimited or pos < end:
        if pos + 8 > end:
            return None
        group, element, vr, length = head(data, pos)
        tag = group << 16 | element
        if tag == _ITEM_END:
            return pos + 8 if delimited and data[pos + 4:pos + 8] == b"\0\0\0\0" else None
        if (tag <= last or group <= 2 or group == 0xFFFE or vr not in _VR_BYTES or tag == _PIXEL_DATA
                or tag in _FLOAT_PIXEL_DATA):
            return None
        found = _length(data, pos, vr, length, end)
        if found is None:
            return None
        (length, pos), last = found, tag
        if vr == b"SQ":
            pos = _sequence(data, pos, length, depth + 1)
            if pos is None or pos > end:
                return None
            continue
        if length == _UNDEFINED or pos + length > end or length % _VALUE_SIZE.get(vr, 1):
            return None
        want = _WANTED.get(tag)
        if want is not None and want[1] in _VRS_READ and _convert(data[pos:pos + length], vr.decode("ascii"),
                                                                   want[1]) is None:
            return None
        pos += length
    return pos


def _convert(raw: bytes, vr: str, need: str):
    """A value in its canonical form, or None (the pydicom route then reads it, and drops it if damaged)."""
    if need.startswith("tag:"):
        return _series_tag(raw, vr, need[4:])
    if vr != need or not raw:
        return None
    if vr == "US":
        return struct.unpack("<H", raw)[0] if len(raw) == 2 else None
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if vr == "UI":  # pydicom: trailing spaces and NULs off, then str.strip() (any whitespace, both ends)
        text = text.rstrip("\0 ")
        # (printable ASCII less the space: no whitespace nor NUL left for it to treat otherwise)
        return text if text and "\\" not in text and " " not in text and text.isprintable() else None
    # pydicom strips trailing spaces and NULs (the padding) and leaves the rest to int/float, which allow
    # leading spaces but no NUL: a leading NUL is a damaged value there, so it must not be stripped here
    text = text.rstrip(" \0").lstrip(" ")
    if not text:
        return None
    if vr == "CS":
        return text if "\\" not in text else None
    if vr == "IS":
        return int(text) if _INTEGER.fullmatch(text) else None
    try:  # DS: each value as pydicom's DSfloat takes it: float(), which allows less whitespace than strip()
        floats = [float(p) for p in text.split("\\")]
    except ValueError:
        return None
    return floats[0] if len(floats) == 1 else floats


_PRINTABLE = bytes(range(0x20, 0x7F))  # deleted by bytes.translate: what is left is not printable ASCII


def _series_tag(raw: bytes, vr: str, need: str):
    """A series tag as `dicom._plain_tags` gets it from pydicom ("" when empty, a list when several values),
    or None where the two might differ: another VR, bytes outside printable ASCII (pydicom would decode them
    with the file's character set), more than one value where one is allowed, spaces inside a list."""
    if vr != need.rstrip("+") or raw.rstrip(b"\0" if vr == "UI" else b"").translate(None, _PRINTABLE):
        return None
    text = raw.decode("ascii").rstrip("\0 " if vr == "UI" else " ")
    if not text:
        return ""
    if vr == "UI":
        return text if " " not in text and "\\" not in text else None
    if "\\" in text:
        parts = text.split("\\")
        return parts if need == "CS+" and all(p and p == p.strip() for p in parts) else None
    if vr == "DS":
        try:
            return float(text)
        except ValueError:
            return None
    return text


# --- pixels ------------------------------------------------------------------------------------------------
def decode_fast(value: bytes, undefined: bool, ts: str, header, out: np.ndarray | None = None) -> np.ndarray | None:
    """Stored values (rows, cols) of one single-frame image, as pydicom's decoders give them, or None where
    pydicom's decoder must decode it (another codec, an unusual bit depth or description, a codec error).

    `out`: where to put them when it fits (their shape and type: a slice of the series' volume), so that they are
    written once, not decoded, copied and stacked; the array returned is then `out`."""
    get = header.get
    rows, cols = get("Rows"), get("Columns")
    bits, stored, signed = get("BitsAllocated"), get("BitsStored"), get("PixelRepresentation")
    if (bits not in (8, 16, 32) or stored is None or not 1 <= stored <= bits or signed not in (0, 1)
            or not rows or not cols or (get("SamplesPerPixel") or 1) != 1 or (get("NumberOfFrames") or 1) != 1
            or str(get("PhotometricInterpretation", "")) not in ("MONOCHROME1", "MONOCHROME2")):
        return None
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits // 8}")
    n = rows * cols
    if ts == EXPLICIT_LE:
        if undefined or len(value) < n * dtype.itemsize:
            return None
        arr = np.frombuffer(value, dtype=dtype, count=n)  # read-only: copied into the volume
    elif ts == RLE_LOSSLESS and undefined:
        frame = _single_frame(value)
        if frame is None:
            return None
        try:
            from rle.rle import decode_frame
        except ImportError:
            return None
        try:
            decoded = decode_frame(frame, n, bits, "<")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException:  # noqa: BLE001 - pylibjpeg-rle panics on some damaged data; pydicom's decoder then
            return None  # reports it (after trying its own RLE decoder)
        if len(decoded) != n * dtype.itemsize:
            return None
        arr = np.frombuffer(decoded, dtype=dtype)
    else:
        return None
    arr = arr.reshape(rows, cols)
    into = out is not None and out.shape == arr.shape and out.dtype == dtype
    if bits > stored:  # pydicom ignores the unused high bits (PS3.5 8.1.1): masked, or sign-extended if signed
        shift, dst = bits - stored, out if into else (arr if arr.flags.writeable else None)
        if signed:
            dst = np.left_shift(arr, shift, out=dst)
            return np.right_shift(dst, shift, out=dst)
        # unsigned: shifting left then right clears the high bits, as one pass of a mask does
        return np.bitwise_and(arr, dtype.type((1 << stored) - 1), out=dst)
    if into:
        np.copyto(out, arr)
        return out
    return arr


def _single_frame(value: bytes) -> bytes | None:
    """The fragments of encapsulated pixel data joined (one frame), or None when its items are not plain:
    a Basic Offset Table item, fragment items, then the Sequence Delimiter."""
    pos, end, fragments, first = 0, len(value), [], True
    while pos + 8 <= end:
        group, element, length = struct.unpack_from("<HHI", value, pos)
        pos += 8
        if group != 0xFFFE:
            return None
        if element == 0xE0DD:
            return b"".join(fragments) if fragments else None
        if element != 0xE000 or length == 0xFFFFFFFF or pos + length > end:
            return None
        if not first:
            fragments.append(value[pos:pos + length])
        first = False
        pos += length
    return None
