"""Read DICOM series and studies from disk into `Series` / `Study`.

Two folder layouts are understood:
- the RSNA layout `<study>/<series>/*.dcm`: the series id is the subfolder name, the study id the folder name;
- any other folder of DICOM files (nested or not, any file names): files are grouped by SeriesInstanceUID.

Real folders are messy, so reading is defensive. Every file that cannot be used (empty, truncated, not DICOM,
no pixels, undecodable) becomes a `SkippedFile` with a reason and the rest still loads. Files that cannot be
stacked into one volume (different SeriesInstanceUID, image size, pixel spacing or orientation) are split into
separate series rather than stacked silently; RSNA axial series are the common case, as they hold one
short stack per disc level, each tilted along the disc. Slices are ordered along the slice normal, never by
file name or InstanceNumber.
"""

from __future__ import annotations

import collections.abc
import contextvars
import functools
import io
import math
import os
import re
import stat
import struct
import sys
import threading
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError
from ..geometry import SeriesGeometry
from . import scan
from .types import Series, SkippedFile, StoredPixels, Study, to_float

if TYPE_CHECKING:
    from pydicom.dataset import Dataset
    from pydicom.uid import UID

# pydicom is imported inside the functions of its route (every file the fast route, `scan`, does not read): a
# study of well-formed files is read without importing it, 0.3-0.6 s of a cold start.

# Slices of one stack repeat their ImageOrientationPatient exactly on every scanner we have seen; 0.1 degree
# absorbs rounding of the written values. The RSNA axial series hold one stack per disc level, planned
# separately: their orientations differ by 0.4 to 35 degrees, and each becomes its own series.
ORIENTATION_TOLERANCE_DEG = 0.1
# Two slices whose planes lie closer than this along the normal are the same slice (a duplicate file).
DUPLICATE_TOLERANCE_MM = 0.01

# Acquisition and identity tags kept in `Series.tags` (patient identity is never read into it).
_TAG_KEYWORDS = (
    "SeriesDescription", "ProtocolName", "SeriesNumber", "Modality", "Manufacturer", "MagneticFieldStrength",
    "EchoTime", "RepetitionTime", "InversionTime", "FlipAngle", "ScanningSequence", "SequenceVariant",
    "ScanOptions", "SequenceName", "ImageType", "SliceThickness", "SpacingBetweenSlices",
    "StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
)
# The elements the reader reads from every file (geometry, pixel description, identity): these are decoded,
# and dropped when damaged, as each header is read. Of the rest of a header only the VRs are checked (a VR that
# DICOM does not have is a bit flip): decoding values nothing reads cost more than decoding the pixels. The
# tags read once per series (`_TAG_KEYWORDS`) are decoded, and checked, on the series' first file alone
# (`_to_series`); `read_header` still decodes every element.
_READ_KEYWORDS = (
    "TransferSyntaxUID", "MediaStorageSOPClassUID", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID",
    "InstanceNumber", "SeriesNumber", "ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing",
    "ImagerPixelSpacing", "RescaleSlope", "RescaleIntercept", "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence",
    # the image pixel module, as pydicom's decoders read it
    "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames", "Rows", "Columns",
    "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
)


@functools.lru_cache(maxsize=1)
def _read_tags() -> frozenset:
    from pydicom.datadict import tag_for_keyword

    return frozenset(tag_for_keyword(k) for k in _READ_KEYWORDS)


@functools.lru_cache(maxsize=4096)
def _dictionary_vr(tag: int) -> str | None:
    """The VR pydicom's dictionary gives a public tag (what it decodes an implicit-VR value as), else None."""
    from pydicom.datadict import dictionary_VR

    if tag >> 16 & 1:  # private: the VR depends on the private creator
        return None
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


@functools.lru_cache(maxsize=1)
def _dicom_vrs() -> frozenset:
    from pydicom.valuerep import VR

    return frozenset(v.value for v in VR)


# The end marker of encapsulated (compressed) pixel data: Sequence Delimitation Item, length 0.
_SEQ_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_PIXEL_DATA_TAG = 0x7FE00010
# The most pixels (rows x columns x frames) one file may claim before anything is decoded: a header is a few
# bytes, and a forged one (65535 x 65535) would make the decoder allocate gigabytes. 2**27 is a 512 x 512
# enhanced MR of 512 frames, more than any lumbar spine series. SPINEGRADE_MAX_PIXELS overrides it.
DEFAULT_MAX_PIXELS = 2**27
# The largest |RescaleSlope| or |RescaleIntercept| honoured: beyond it a stored value (up to 2**32) rescaled in
# float32 (as `types.to_float` does) could overflow to inf, and the models would see NaN.
_MAX_RESCALE = float(np.finfo(np.float32).max) / 2**33
# How many decoded bytes one byte of compressed data can at most become, where the codec bounds it: an RLE
# replicate run turns 2 bytes into at most 128, a JPEG Huffman code is at least 1 bit per sample (lossless) or
# 2 bits per 8 x 8 block (DCT). JPEG-LS run mode and JPEG 2000 have no useful bound; the pixel budget holds.
_MAX_EXPANSION = {
    "1.2.840.10008.1.2.5": 64,  # RLE Lossless
    "1.2.840.10008.1.2.4.57": 32, "1.2.840.10008.1.2.4.70": 32,  # JPEG Lossless (16, with a margin)
    "1.2.840.10008.1.2.4.50": 1024, "1.2.840.10008.1.2.4.51": 1024,  # JPEG baseline / extended (512, margin)
}


@dataclass
class _Slice:
    """One readable image (a file, or one frame of a multi-frame file): its header (no pixel data) and what
    grouping, sorting and decoding need from it."""

    path: Path
    ds: Dataset
    transfer_syntax: str
    rows: int
    cols: int
    orientation: np.ndarray | None  # (6,) unit row and column directions
    position: np.ndarray | None  # (3,)
    spacing: tuple[float, float]
    spacing_source: str  # "PixelSpacing", "ImagerPixelSpacing" or "default"
    instance: int | None
    series_uid: str
    problems: list[str] = field(default_factory=list)  # unreadable optional tags, said in the series notes
    frame: int | None = None  # index of the frame in a multi-frame file; None for a single-frame file
    rescale: tuple[float, float] | None = None  # (slope, intercept) when given
    # The Pixel Data element read with the header (one parse per file): (VR, value bytes, undefined length);
    # None when pixels were not asked for, or for a deflated file (decoded by a full read instead).
    raw: tuple[str, bytes, bool] | None = None

    @property
    def has_geometry(self) -> bool:
        return self.orientation is not None and self.position is not None


def max_pixels_default() -> int:
    """The per-file pixel budget: SPINEGRADE_MAX_PIXELS when set to a positive integer, else DEFAULT_MAX_PIXELS."""
    v = os.environ.get("SPINEGRADE_MAX_PIXELS", "").strip()
    return int(v) if v.isdigit() and int(v) > 0 else DEFAULT_MAX_PIXELS


# --- public API --------------------------------------------------------------------------------------------
def load_study(path, descriptions=None, load_pixels: bool = True, max_pixels: int | None = None,
               stored: bool = False) -> Study:
    """Read a study folder (RSNA layout or any folder of DICOM files) and name the role of each series.

    `descriptions` (a `*_series_descriptions.csv` path or a dict series_id -> description) fixes the roles;
    without it they are inferred from the images. `load_pixels=False` reads headers only (fast). A file
    claiming more than `max_pixels` pixels (default `max_pixels_default()`) is skipped before decoding.
    `stored=True` gives each series' pixels as the files store them (`Series.stored`, also `Series.pixels`:
    float32 on indexing) instead of a float32 array: what the prepare cache writes.
    Raises DataError when the folder holds no readable DICOM image.
    """
    from .roles import assign_roles

    root = _check_folder(path)
    study_id = root.absolute().name
    budget = max_pixels or max_pixels_default()
    series: list[Series] = []
    skipped: list[SkippedFile] = []
    tree = root.resolve()
    if _is_rsna_layout(root):
        skipped += _links_at_top(root)
        for sub in sorted((p for p in root.iterdir() if _is_real_dir(p) and not p.name.startswith(".")),
                          key=_natural_key):
            found, lost = _read_folder(sub, study_id, sub.name, _want(load_pixels, stored), budget, tree)
            series += found
            skipped += lost
    else:
        series, skipped = _read_plain(root, study_id, _want(load_pixels, stored), budget, tree)
    if not series:
        raise DataError(_nothing_readable(root, skipped))
    assign_roles(series, descriptions=descriptions, study_id=study_id, read_slice=read_slice)
    return Study(study_id=study_id, path=str(root), series=series, skipped=skipped)


def _want(load_pixels: bool, stored: bool) -> str:
    """What the reader decodes: "" (headers only), "float" (float32 arrays) or "stored" (StoredPixels)."""
    return ("stored" if stored else "float") if load_pixels else ""


def load_series(folder, study_id=None, series_id=None, load_pixels: bool = True,
                max_pixels: int | None = None) -> list[Series]:
    """Read one series folder; a list because a folder that mixes stacks is split (see module doc).

    Ids default to the folder's name (series) and its parent's (study). Raises DataError when the folder
    holds no readable DICOM image.
    """
    from .roles import assign_roles

    root = _check_folder(folder)
    sid = str(series_id) if series_id is not None else root.absolute().name
    stid = str(study_id) if study_id is not None else root.absolute().parent.name
    series, skipped = _read_folder(root, stid, sid, _want(load_pixels, False), max_pixels or max_pixels_default(),
                                   root.resolve())
    if not series:
        raise DataError(_nothing_readable(root, skipped))
    assign_roles(series, read_slice=read_slice)
    return series


def read_slice(path, max_pixels: int | None = None) -> np.ndarray:
    """Pixels of one single-frame DICOM file as the loader returns them: float32 (rows, cols), rescale
    applied, MONOCHROME1 inverted. Raises DataError naming the file when it cannot be used."""
    p = Path(path)
    header = _read_header(p, max_pixels or max_pixels_default(), with_pixels=True)
    if isinstance(header, SkippedFile):
        raise DataError(f"{p}: {header.reason}")
    if isinstance(header, list):
        raise DataError(f"{p}: a multi-frame file ({len(header)} frames): read it with load_series")
    pixels = _decode(header)
    if isinstance(pixels, SkippedFile):
        raise DataError(f"{p}: {pixels.reason}")
    return pixels


def read_header(path) -> Dataset:
    """A file's header (no pixel data) with every element decoded; elements that cannot be decoded (a damaged
    VR) are dropped, so later reads of it cannot raise. Raises DataError naming the file when it is unreadable."""
    p = Path(path)
    try:
        ds, _ = _pydicom_header(p)
    except (KeyboardInterrupt, SystemExit):
        raise
    except OSError as e:
        raise DataError(f"{p}: cannot read: {e.strerror or e}") from None
    except Exception as e:  # noqa: BLE001 - damaged files make pydicom raise many types
        raise DataError(f"{p}: unreadable DICOM: {_first_line(e)}") from None
    return ds


# --- folders -----------------------------------------------------------------------------------------------
def _check_folder(path) -> Path:
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: no such folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (give a study folder or a series folder of DICOM files)")
    return root


def _is_real_dir(p: Path) -> bool:
    """A folder that is not a symbolic link: links are never followed inside a study tree, as a link can
    loop back (`loop -> .`) or lead out of the study."""
    return not p.is_symlink() and p.is_dir()


def _is_rsna_layout(root: Path) -> bool:
    """`<study>/<series>/files`: only subfolders at the top, and no deeper folders inside them (symbolic
    links are not data and do not count)."""
    entries = [p for p in root.iterdir() if not p.name.startswith(".") and not p.is_symlink()]
    subs = [p for p in entries if p.is_dir()]
    if not subs or len(subs) != len(entries):
        return False
    return not any(_is_real_dir(q) for s in subs for q in s.iterdir() if not q.name.startswith("."))


def _links_at_top(root: Path) -> list[SkippedFile]:
    return [SkippedFile(str(p), _LINK_TO_FOLDER) for p in sorted(root.iterdir(), key=_natural_key)
            if p.is_symlink() and not p.name.startswith(".")]


_LINK_TO_FOLDER = "symbolic link to a folder: not followed"


def _list_files(root: Path, tree: Path) -> tuple[list[Path], list[SkippedFile]]:
    """Every regular file under root, sorted, and the entries that are not read: links to folders, links
    leading outside `tree` (the resolved study folder), anything that is not a regular file (a FIFO would
    block the reader). Hidden files and folders (.DS_Store, .git) are not data. Folders are visited as os.walk
    visits them (a folder's files, then its subfolders in name order); a plain file costs no system call here
    (the directory listing says what it is)."""
    out: list[Path] = []
    skipped: list[SkippedFile] = []

    def visit(here: Path) -> None:
        try:
            with os.scandir(here) as listing:
                entries = [e for e in listing if not e.name.startswith(".")]
        except OSError as e:  # a folder that cannot be listed (permissions): said, and the rest still read
            skipped.append(SkippedFile(str(here), f"folder cannot be read: {e.strerror or e}"))
            return
        folders = [e for e in entries if _entry_is_dir(e)]
        skipped.extend(SkippedFile(str(here / e.name), _LINK_TO_FOLDER)
                       for e in sorted(folders, key=lambda e: _natural_key(e.name)) if e.is_symlink())
        for e in sorted((e for e in entries if not _entry_is_dir(e)), key=lambda e: _natural_key(e.name)):
            path = here / e.name
            why = None if e.is_file(follow_symlinks=False) else _file_problem(path, tree)
            if why:
                skipped.append(SkippedFile(str(path), why))
            else:
                out.append(path)
        for e in sorted((e for e in folders if not e.is_symlink()), key=lambda e: e.name):
            visit(here / e.name)

    visit(root)
    return out, skipped


def _entry_is_dir(e: os.DirEntry) -> bool:
    """A folder, or a link to one, as os.walk counts folders (an entry it cannot stat is not one)."""
    try:
        return e.is_dir()
    except OSError:
        return False


def _file_problem(path: Path, tree: Path) -> str | None:
    """Why a directory entry is not read as a file of the study, or None."""
    try:
        if path.is_symlink():
            target = path.resolve(strict=True)
            if target != tree and tree not in target.parents:
                return "symbolic link to a file outside the study folder: not followed"
        mode = path.stat().st_mode
    except (OSError, RuntimeError):  # a dangling link or a loop of links
        return "symbolic link that leads nowhere (dangling or a loop)"
    if not stat.S_ISREG(mode):
        return "not a regular file (a device, pipe or socket)"
    return None


def _natural_key(p) -> list:
    """Sort '2' before '10' (file and folder names are often numbers)."""
    name = p.name if isinstance(p, Path) else str(p)
    return [(0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t]


def _nothing_readable(root: Path, skipped: list[SkippedFile]) -> str:
    """Why a folder gave no image, naming the files: one file with its whole reason, more by kind of reason."""
    if not skipped:
        return f"{root}: no readable DICOM image found (the folder has no files)"
    if len(skipped) == 1:
        detail = f"{os.path.relpath(skipped[0].path, root)}: {skipped[0].reason}"
    else:
        kinds: dict[str, list[str]] = {}
        for k in skipped:
            kinds.setdefault(_short_reason(k.reason), []).append(k.path)
        detail = "; ".join(f"{why}: {_listed(paths, root)}"
                           for why, paths in sorted(kinds.items(), key=lambda kv: -len(kv[1])))
    return f"{root}: no readable DICOM image found among {len(skipped)} files ({detail})"


def _listed(paths: list[str], root, most: int = 3) -> str:
    """Files for a message: their paths from `root`, the first `most` of them, then how many more."""
    names = [os.path.relpath(p, root) for p in paths[:most]]
    return ", ".join(names) + (f" and {len(paths) - most} more" if len(paths) > most else "")


def _short_reason(reason: str) -> str:
    return reason.split(":")[0].split(" (")[0]


def _read_folder(folder: Path, study_id: str, series_id: str, load_pixels: str, max_pixels: int, tree: Path
                 ) -> tuple[list[Series], list[SkippedFile]]:
    """One series folder -> its series (split when needed) and the files that no series could take."""
    paths, not_files = _list_files(folder, tree)
    slices, skipped = _read_headers(paths, max_pixels, bool(load_pixels))
    skipped = not_files + skipped
    series, lost = _assemble(slices, study_id, series_id, load_pixels)
    if not series:
        return [], skipped + lost
    series[0].skipped = skipped + series[0].skipped + lost
    return series, []


def _read_plain(root: Path, study_id: str, load_pixels: str, max_pixels: int, tree: Path
                ) -> tuple[list[Series], list[SkippedFile]]:
    """A folder of DICOM files in no particular layout: group by SeriesInstanceUID."""
    paths, not_files = _list_files(root, tree)
    slices, skipped = _read_headers(paths, max_pixels, bool(load_pixels))
    skipped = not_files + skipped
    by_uid: dict[str, list[_Slice]] = {}
    for s in slices:
        by_uid.setdefault(s.series_uid, []).append(s)
    ids = _series_ids(by_uid)
    series: list[Series] = []
    for uid, group in by_uid.items():
        found, lost = _assemble(group, study_id, ids[uid], load_pixels)
        if found:
            found[0].skipped += lost
        else:
            skipped += lost
        series += found
    series.sort(key=lambda s: (_natural_key(s.source_series_id), _natural_key(s.series_id)))
    return series, skipped


def _series_ids(by_uid: dict[str, list[_Slice]]) -> dict[str, str]:
    """Series id from the UID's last dotted component when all digits (the RSNA convention), else the
    SeriesNumber, else the group's position; an id two series would share moves both to the next choice."""
    choices = {}
    for i, (uid, group) in enumerate(by_uid.items()):
        last, number = uid.rsplit(".", 1)[-1], group[0].ds.get("SeriesNumber")
        choices[uid] = ([last] if last.isdigit() else []) + ([str(number)] if number not in (None, "") else []) \
            + [f"series{i + 1}"]
    ids: dict[str, str] = {}
    for level in range(3):  # the last choice is unique by construction, so every UID ends with an id
        wanted = {uid: c[min(level, len(c) - 1)] for uid, c in choices.items() if uid not in ids}
        counts = Counter(wanted.values())
        for uid, sid in wanted.items():
            if counts[sid] == 1 and sid not in ids.values():
                ids[uid] = sid
    return ids


# --- headers -----------------------------------------------------------------------------------------------
def _read_headers(paths: list[Path], max_pixels: int, with_pixels: bool = False
                  ) -> tuple[list[_Slice], list[SkippedFile]]:
    slices, skipped = [], []
    for p in paths:
        r = _read_header(p, max_pixels, with_pixels)
        if isinstance(r, SkippedFile):
            skipped.append(r)
        elif isinstance(r, list):  # the frames of a multi-frame file
            slices += r
        else:
            slices.append(r)
    return slices, skipped


# The fast route (`scan`) for plainly well-formed files; tests turn it off to compare it with the pydicom route.
FAST_ROUTE = True


def _read_header(path: Path, max_pixels: int, with_pixels: bool = False) -> _Slice | list[_Slice] | SkippedFile:
    """Parse a file's header only, every element of it, and check that its pixel data is present, complete
    and of a plausible size (nothing is decoded). A multi-frame file (Enhanced MR) gives one slice per
    frame, each with its own position, orientation and spacing from the functional groups.

    `with_pixels` also reads the Pixel Data bytes (not decoding them) from the same open file, so decoding
    later parses nothing again: the file is parsed once. A plainly well-formed single-frame file is read by
    the fast route (`_read_header_fast`); every other file, and every file that is skipped, by pydicom."""
    if FAST_ROUTE:
        fast = _read_header_fast(path, max_pixels, with_pixels)
        if fast is not None:
            return fast
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.errors import InvalidDicomError
    from pydicom.uid import UID

    try:
        size = path.stat().st_size
        if size == 0:
            return SkippedFile(str(path), "empty file (0 bytes)")
        # values are not validated on reading (pydicom would only warn): the reader checks what it uses
        with open(path, "rb") as fp, warnings.catch_warnings(record=True) as caught, \
                pydicom.config.disable_value_validation():
            warnings.simplefilter("always")
            ds = pydicom.dcmread(fp, stop_before_pixels=True)
            cut = _header_cut(ds, size)
            # pydicom decodes element values on first access; do it here, inside this file's guarded step,
            # so that a damaged element (an unknown VR from a bit flip) costs that element, not the study.
            damaged = [*_drop_damaged(getattr(ds, "file_meta", Dataset()), only_read=True),
                       *_drop_damaged(ds, only_read=True)]
            unknown = _unknown_syntax(ds) or _pixel_description_problem(ds)
            if unknown:
                return SkippedFile(str(path), unknown)
            problem, data_length, value = _pixel_data_problem(fp, ds, size)
            raw = None
            if with_pixels and not problem and value is not None:
                at, vr, undefined = value
                fp.seek(at)
                raw = (vr, fp.read(-1 if undefined else data_length), undefined)
    except InvalidDicomError:
        return SkippedFile(str(path), "not a DICOM file (no 'DICM' marker after the 128-byte preamble)")
    except OSError as e:
        if e.errno is None:  # not the system's: pydicom's own word for a header whose structure breaks off
            return SkippedFile(str(path), f"damaged or truncated header: its elements cannot be followed ({e})")
        return SkippedFile(str(path), f"cannot read: {e.strerror or e}")
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # damaged files make pydicom raise many types; the reason must name the problem
        return SkippedFile(str(path), f"unreadable DICOM: {_first_line(e)}")
    if any("end of file" in str(w.message).lower() for w in caught) or cut:
        return SkippedFile(str(path), f"truncated: the file ends inside its header ({size} bytes)")
    if ("Rows" not in ds or "Columns" not in ds) and damaged:
        return SkippedFile(str(path), f"damaged header: {'; '.join(damaged)}")
    if "Rows" not in ds or "Columns" not in ds:
        sop = ds.get("SOPClassUID") or ds.get("file_meta", Dataset()).get("MediaStorageSOPClassUID")
        kind = f"; SOP class {UID(str(sop)).name}" if sop else ""
        return SkippedFile(str(path), f"no pixel data (not an image: no Rows/Columns{kind})")
    if problem:
        return SkippedFile(str(path), problem)
    frames = _int(ds.get("NumberOfFrames")) or 1
    if frames > 1 and not _frames_placed(ds, frames):
        return SkippedFile(str(path), f"multi-frame file ({frames} frames) without a position for each frame "
                                      "(PerFrameFunctionalGroupsSequence): its slices cannot be placed")
    samples = _int(ds.get("SamplesPerPixel")) or 1
    if samples != 1:
        return SkippedFile(str(path), f"colour image (SamplesPerPixel {samples}): not supported")
    ts = _transfer_syntax(ds)
    too_big = _size_problem(ds, ts, data_length, max_pixels)
    if too_big:
        return SkippedFile(str(path), too_big)
    if ts and ts.is_compressed and _decoder(str(ts)) is None:
        return SkippedFile(str(path), f"no decoder installed for transfer syntax {ts.name} ({ts})")
    if frames > 1:
        out = [_slice_from_header(path, ds, k) for k in range(frames)]
        for s in out:
            s.problems += damaged
            s.raw = raw
        return out
    s = _slice_from_header(path, ds)
    s.problems += damaged
    s.raw = raw
    return s


def _read_header_fast(path: Path, max_pixels: int, with_pixels: bool) -> _Slice | None:
    """A single-frame file that `scan` reads and that passes every check of the pydicom route, as a slice whose
    header is a `scan.FlatHeader`; None sends the file down the pydicom route, which names any problem."""
    try:
        with open(path, "rb") as fp:  # a large file (a long multi-frame one) is left to pydicom unread
            expected = os.fstat(fp.fileno()).st_size
            if expected > scan.MAX_FILE_BYTES:
                return None
            # its size and one byte more: a read of the whole bound would allocate 16 MB for every file (4x the
            # time of reading a small one); a file that has grown since is read on, still bounded
            data = fp.read(expected + 1)
            if len(data) > expected:
                data += fp.read(scan.MAX_FILE_BYTES + 1 - len(data))
    except OSError:
        return None
    size = len(data)
    found = scan.scan(data) if size <= scan.MAX_FILE_BYTES else None
    if found is None:
        return None
    ds, pixel_at = found
    if "Rows" not in ds or "Columns" not in ds or (ds.get("NumberOfFrames") or 1) != 1 \
            or (ds.get("SamplesPerPixel") or 1) != 1:
        return None
    fp = io.BytesIO(data)
    fp.seek(pixel_at)
    problem, data_length, value = _pixel_data_problem(fp, ds, size)
    ts = _transfer_syntax(ds)
    if problem or value is None or _size_problem(ds, ts, data_length, max_pixels) \
            or (ts.is_compressed and ts != scan.RLE_LOSSLESS and _decoder(str(ts)) is None):
        return None  # (pydicom always has an RLE decoder: its own)
    s = _slice_from_header(path, ds)
    if with_pixels:
        at, vr, undefined = value
        s.raw = (vr, data[at:] if undefined else data[at:at + data_length], undefined)
    return s


def _pydicom_header(path: Path, only_read: bool = False) -> tuple[Dataset, list[str]]:
    """pydicom's header of a file (no pixel data) with its elements decoded (`only_read`: as `_drop_damaged`
    says), damaged ones dropped, and what was dropped; raises on an unreadable file."""
    import pydicom
    from pydicom.dataset import Dataset

    with warnings.catch_warnings(), pydicom.config.disable_value_validation():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        problems = [*_drop_damaged(getattr(ds, "file_meta", Dataset()), only_read), *_drop_damaged(ds, only_read)]
    return ds, problems


def _frames_placed(ds: Dataset, frames: int) -> bool:
    """Whether every frame of a multi-frame file has its own ImagePositionPatient."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is None or len(per_frame) != frames:
        return False
    return all(_floats(_in_group(item, "PlanePositionSequence", "ImagePositionPatient"), 3) is not None
               for item in per_frame)


def _drop_damaged(ds: Dataset, only_read: bool = False) -> list[str]:
    """Decode every element (sequences included); remove those that cannot be decoded and say which.

    `only_read`: decode only the elements read from every file (`_READ_TAGS`), sequences, and any element
    whose VR is not a DICOM VR; the others stay undecoded until first read (pydicom decodes on access). In an
    implicit-VR file an element's VR is its tag's in the dictionary (as pydicom decodes it): a public element is
    left undecoded by the same rule, a private or unknown one is decoded."""
    problems = []
    for tag in list(ds.keys()):
        if only_read:
            vr = ds.get_item(tag).VR
            if vr is None:  # implicit VR
                vr = _dictionary_vr(tag)
            if vr in _dicom_vrs() and vr != "SQ" and tag not in _read_tags():
                continue
        try:
            elem = ds[tag]
            if elem.VR == "SQ":
                for item in elem.value:
                    problems += _drop_damaged(item, only_read)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # noqa: BLE001 - pydicom's value converters raise many types
            del ds[tag]
            text = str(e).strip()
            why = text.splitlines()[0] if text else type(e).__name__
            problems.append(f"damaged header element {tag} ignored ({why})")
    return problems


def _size_problem(ds: Dataset, ts: UID | None, data_length: int | None, max_pixels: int) -> str | None:
    """Why the pixel data the header claims must not be decoded (too many pixels for the budget, or more
    bytes than the compressed data can hold), or None."""
    rows, cols = _int(ds.get("Rows")) or 0, _int(ds.get("Columns")) or 0
    frames = _int(ds.get("NumberOfFrames")) or 1
    if rows <= 0 or cols <= 0:
        return f"no pixels: the header says {rows} x {cols}"
    pixels = rows * cols * frames
    frame_text = f" x {frames} frames" if frames > 1 else ""
    if pixels > max_pixels:
        return (f"image too large: the header claims {rows} x {cols}{frame_text} = {pixels:,} pixels, over the "
                f"reader's budget of {max_pixels:,} (SPINEGRADE_MAX_PIXELS)")
    bound = _MAX_EXPANSION.get(str(ts)) if ts is not None else None
    if bound and data_length:
        claimed = (pixels * (_int(ds.get("SamplesPerPixel")) or 1) * (_int(ds.get("BitsAllocated")) or 16) + 7) // 8
        if claimed > bound * data_length:
            return (f"implausible header: {rows} x {cols}{frame_text} pixels ({claimed:,} bytes) cannot come from "
                    f"{data_length:,} bytes of {ts.name} data")
    return None


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _decoder_message(e: BaseException) -> str:
    """Why a decoder failed, in its words: pydicom's own sentences without the exception's class name (and, where
    every plugin failed, the first plugin's reason rather than "exceptions were raised by all plugins")."""
    lines = [x.strip() for x in str(e).strip().splitlines() if x.strip()]
    if len(lines) > 1 and "all available plugins" in lines[0]:
        return lines[1]
    if lines and type(e) in (ValueError, AttributeError, RuntimeError, NotImplementedError):
        return lines[0]
    if type(e).__name__ == "PanicException":  # pylibjpeg-rle's Rust code overran its buffer
        return f"the decoder failed on damaged or mis-sized data ({lines[0] if lines else 'a panic'})"
    return _first_line(e)


def _transfer_syntax(ds: Dataset) -> UID | scan.Syntax | None:
    """The file's transfer syntax: a `scan.Syntax` for a header the fast route read, else pydicom's UID."""
    meta = ds.get("file_meta")
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if not ts:
        return None
    return scan.syntax(str(ts)) if isinstance(ds, scan.FlatHeader) else _uid(str(ts))


# The image pixel module's numbers, as pydicom's decoders read them from a dataset.
_PIXEL_NUMBERS = ("SamplesPerPixel", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                  "PlanarConfiguration")


def _pixel_description_problem(ds: Dataset) -> str | None:
    """Why no decoder can use the file's pixel description: one of its numbers is not a number (text, or
    several values, as a VR damaged into another gives: a decoder fails on it with a TypeError), or its
    PhotometricInterpretation is not text. Empty values are left to the checks that follow."""
    from numbers import Number

    for kw, kind, what in (*((k, Number, "a number") for k in _PIXEL_NUMBERS),
                           ("PhotometricInterpretation", str, "text")):
        value = ds.get(kw)
        if value is None or value == "" or isinstance(value, kind):
            continue
        shown = repr(value[:32] if isinstance(value, (bytes, str)) else value)[:60]
        return f"damaged header: {kw} is {shown} (VR {ds[kw].VR}), not {what}"
    return None


def _unknown_syntax(ds: Dataset) -> str | None:
    """Why a file's transfer syntax cannot be read, when its file meta names one that pydicom does not know (a
    damaged UID, or a private one): nothing about its encoding can then be trusted."""
    ts = _transfer_syntax(ds)
    if ts is None or ts.is_transfer_syntax:
        return None
    return (f"unknown transfer syntax {str(ts)!r} in the file meta (damaged, or a private one): its pixels "
            "cannot be read")


@functools.lru_cache(maxsize=256)
def _uid(text: str) -> UID:
    from pydicom.uid import UID

    return UID(text)


def _header_cut(ds: Dataset, size: int) -> bool:
    """Whether the last element read (of the file meta or the dataset) claims more bytes than the file has:
    pydicom keeps such a stub silently."""
    from pydicom.dataset import Dataset

    for part in (ds.get("file_meta", Dataset()), ds):
        if not len(part):
            continue
        raw = part.get_item(max(part.keys()))
        tell, length = getattr(raw, "value_tell", None), getattr(raw, "length", None)
        if tell is not None and length not in (None, 0xFFFFFFFF) and tell + length > size:
            return True
    return False


def _pixel_data_problem(fp, ds: Dataset, size: int
                        ) -> tuple[str | None, int | None, tuple[int, str, bool] | None]:
    """Check the Pixel Data element that `stop_before_pixels` left the file positioned on: (problem or None,
    bytes of pixel data or None when unknown, where its value is: (file offset, VR, undefined length) or None).

    Only its element header and the file size are read: native data must have all its bytes, compressed
    data must end with the sequence delimiter. This finds truncated files without decoding anything.
    """
    ts = _transfer_syntax(ds)
    if ts is None or ts.is_deflated:
        # positions inside a deflated stream say nothing about the file; decoding will tell
        return None, None, None
    start = fp.tell()
    head = fp.read(12)
    endian = "<" if ts.is_little_endian else ">"
    if len(head) < 8:
        return ("no pixel data" if len(head) == 0 else "truncated: the file ends inside the pixel data header"), \
            None, None
    group, elem = struct.unpack(endian + "HH", head[:4])
    if (group << 16 | elem) != _PIXEL_DATA_TAG:
        return "no integer pixel data (Float/Double Float Pixel Data is not supported)", None, None
    if ts.is_implicit_VR:
        # the VR pydicom gives Pixel Data read without one (PS3.5 A.1): OW above 8 bits, and OB for compressed data
        hdr, length = 8, struct.unpack(endian + "I", head[4:8])[0]
        vr = "OW" if (_int(ds.get("BitsAllocated")) or 16) > 8 and not ts.is_compressed else "OB"
    else:
        if len(head) < 12:
            return "truncated: the file ends inside the pixel data header", None, None
        hdr, length = 12, struct.unpack(endian + "I", head[8:12])[0]
        vr = head[4:6].decode("latin-1")
    if length == 0xFFFFFFFF:
        fp.seek(max(start, size - 4096))
        if _SEQ_DELIMITER not in fp.read():
            return f"truncated: compressed pixel data has no end marker ({size} bytes)", None, None
        return None, size - start - hdr, (start + hdr, vr, True)
    have = size - start - hdr
    if have < length:
        return f"truncated: pixel data has {have} of {length} bytes", None, None
    if ts.is_compressed:
        return None, length, (start + hdr, vr, False)
    need = ((_int(ds.get("Rows")) or 0) * (_int(ds.get("Columns")) or 0) * (_int(ds.get("SamplesPerPixel")) or 1)
            * (_int(ds.get("NumberOfFrames")) or 1) * (_int(ds.get("BitsAllocated")) or 16) + 7) // 8
    if length < need:
        return f"pixel data too short: {length} bytes for {need} expected", None, None
    if 0 < need and length > need + 1:  # one byte pads an odd length; more: the header's size is not the data's
        return (f"pixel data too long: {length} bytes where the header's size needs {need} (its rows, columns "
                "or bits are wrong: decoding would scramble the image)"), None, None
    return None, length, (start + hdr, vr, False)


def _value_text(v) -> str:
    """A value as the file writes it: several values (a damaged UID with a backslash) joined by backslashes, not
    as a Python list."""
    several = isinstance(v, collections.abc.Sequence) and not isinstance(v, (str, bytes))  # (a MultiValue)
    return "\\".join(str(x) for x in v) if several else str(v)


def _int(v) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _floats(v, n: int) -> np.ndarray | None:
    """A DS/FD value as n finite floats, or None when absent or malformed."""
    if v is None:
        return None
    values = [v] if isinstance(v, (str, bytes, int, float)) else list(v)
    try:
        floats = [float(x) for x in values]
    except (TypeError, ValueError):
        return None
    if len(floats) != n or not all(map(math.isfinite, floats)):
        return None
    return np.array(floats, dtype=np.float64)


def _in_group(item: Dataset, group: str, keyword: str):
    """keyword inside the first item of a functional group sequence of `item`, or None."""
    try:
        return getattr(item, group)[0].get(keyword)
    except (AttributeError, IndexError, KeyError):
        return None


def _find(ds: Dataset, keyword: str, group: str, frame: int | None = None):
    """A tag of one frame: in that frame's functional groups, then the shared ones (enhanced MR); for a
    single-frame file at the top level first, then shared, then the first frame's groups."""
    if frame is None and keyword in ds:
        return ds.get(keyword)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    order = ([per_frame[frame]] if frame is not None and frame < len(per_frame) else []) + list(shared[:1])
    if frame is None:
        order += list(per_frame[:1])
    for item in order:
        v = _in_group(item, group, keyword)
        if v is not None:
            return v
    return ds.get(keyword) if frame is not None else None


def _slice_from_header(path: Path, ds: Dataset, frame: int | None = None) -> _Slice:
    problems = []
    raw_iop = _find(ds, "ImageOrientationPatient", "PlaneOrientationSequence", frame)
    orientation = _unit_orientation(_floats(raw_iop, 6))
    if raw_iop is not None and orientation is None:
        problems.append("ImageOrientationPatient unreadable")
    raw_ipp = _find(ds, "ImagePositionPatient", "PlanePositionSequence", frame)
    position = _floats(raw_ipp, 3)
    if raw_ipp is not None and position is None:
        problems.append("ImagePositionPatient unreadable")
    spacing, source = None, "default"
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        sp = _floats(_find(ds, keyword, "PixelMeasuresSequence", frame), 2)
        if sp is not None and np.all(sp > 0):
            spacing, source = (float(sp[0]), float(sp[1])), keyword
            break
    given = {}  # a rescale value that is not a number, or would overflow float32, is ignored and said
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        raw = _find(ds, keyword, "PixelValueTransformationSequence", frame)
        value = _floats(raw, 1)
        if value is not None and abs(value[0]) > _MAX_RESCALE:
            problems.append(f"{keyword} {value[0]:g} ignored (rescaled pixels would overflow float32)")
        elif value is not None:
            given[keyword] = float(value[0])
        elif raw is not None and str(raw).strip():
            problems.append(f"{keyword} {str(raw).strip()[:40]!r} ignored (not one finite number)")
    rescale = (given.get("RescaleSlope", 1.0), given.get("RescaleIntercept", 0.0)) if given else None
    ts = _transfer_syntax(ds)
    # Frames of one file share its InstanceNumber; they are numbered 1..n in file order, as viewers do.
    instance = frame + 1 if frame is not None else _int(ds.get("InstanceNumber"))
    return _Slice(
        path=path, ds=ds, transfer_syntax=str(ts) if ts else "", rows=int(ds.Rows), cols=int(ds.Columns),
        orientation=orientation, position=position, spacing=spacing or (1.0, 1.0), spacing_source=source,
        instance=instance, series_uid=_value_text(ds.get("SeriesInstanceUID", "")), problems=problems, frame=frame,
        rescale=rescale,
    )


def _unit_orientation(iop: np.ndarray | None) -> np.ndarray | None:
    if iop is None:
        return None
    r, c = iop[:3], iop[3:]
    nr, nc = np.linalg.norm(r), np.linalg.norm(c)
    if nr < 1e-6 or nc < 1e-6:
        return None
    out = np.concatenate([r / nr, c / nc])
    (a0, a1, a2), (b0, b1, b2) = out[:3].tolist(), out[3:].tolist()  # cross product: 3 numbers, no np.cross
    if math.hypot(a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0) < 1e-3:
        return None
    return out


# --- pixels ------------------------------------------------------------------------------------------------
def _decode(s: _Slice, cache: dict | None = None) -> np.ndarray | SkippedFile:
    """Decode one file (or one frame) -> float32 (rows, cols) in MONOCHROME2 sense, rescale applied."""
    arr = _decode_stored(s, cache)
    return arr if isinstance(arr, SkippedFile) else to_float(arr, *_transform(s))


def _decode_stored(s: _Slice, cache: dict | None = None, out: np.ndarray | None = None) -> np.ndarray | SkippedFile:
    """Decode one file (or one frame) -> its stored values (rows, cols), as the file holds them. `cache` keeps
    a multi-frame file's decoded frames (or its failure) for its other frames. `out` (rows, cols): where the
    decoder may write them when they fit it (a single-frame file on the fast route); the caller checks whether
    the array returned is `out`.

    The pixel attributes come from the header already checked (`s.ds`); the file's size claims were checked
    against the pixel budget there, before this allocates anything.
    """
    key = str(s.path)
    if cache is not None and key in cache:
        arr = cache[key]
    else:
        arr = _decode_file(s, out if s.frame is None else None)
        if cache is not None and s.frame is not None:
            cache[key] = arr
    if isinstance(arr, SkippedFile):
        return arr
    if s.frame is not None:
        if arr.ndim != 3 or s.frame >= arr.shape[0]:
            return SkippedFile(key, f"pixel data has shape {arr.shape}, header says {s.ds.get('NumberOfFrames')} "
                                    f"frames of {s.rows}x{s.cols}")
        arr = arr[s.frame]
    if arr.shape != (s.rows, s.cols):
        return SkippedFile(key, f"pixel data has shape {arr.shape}, header says {s.rows}x{s.cols}")
    return arr


@functools.lru_cache(maxsize=None)
def _decoder(ts: str):
    """pydicom's decoder for a transfer syntax when one of its plugins is installed, else None."""
    import pydicom.pixels

    try:
        decoder = pydicom.pixels.get_decoder(_uid(ts))
    except NotImplementedError:
        return None
    return decoder if decoder.is_available else None


def _decode_options(ds: Dataset, ts: str) -> dict | None:
    """What pydicom's decoder needs to decode Pixel Data bytes without the dataset, from the header already
    checked; None where the dataset route must be taken (an extended offset table, or a value missing)."""
    if "ExtendedOffsetTable" in ds:
        return None
    values = {k: _int(ds.get(kw)) for k, kw in (("bits_allocated", "BitsAllocated"), ("bits_stored", "BitsStored"),
                                                 ("pixel_representation", "PixelRepresentation"))}
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if None in values.values() or not photometric:
        return None
    return dict(values, rows=int(ds.Rows), columns=int(ds.Columns), samples_per_pixel=1,
                number_of_frames=_int(ds.get("NumberOfFrames")) or 1, photometric_interpretation=photometric,
                transfer_syntax_uid=_uid(ts), pixel_keyword="PixelData")


_DEVNULL: list[int] = []  # /dev/null's descriptor, opened once
# Threads that never write to stderr (predict's readers watch their parent in one): they may run beside a call
# whose stderr is quieted.
SILENT_THREAD = "spinegrade-silent"


def _alone() -> bool:
    """Whether this is the process's one Python thread, but for threads named SILENT_THREAD."""
    if threading.active_count() == 1:
        return True
    me = threading.current_thread()
    return all(t is me or t.name.startswith(SILENT_THREAD) for t in threading.enumerate())


@contextmanager
def _native_stderr_quiet(active: bool):
    """pylibjpeg-rle prints a Rust panic message on the process's stderr ("thread '<unnamed>' panicked at ...")
    before it raises on damaged RLE data. The error is caught and the file skipped with its reason, but the
    message reads like a crash. In a process with one Python thread (the command line, prepare's workers,
    predict's readers; threads named SILENT_THREAD aside), file descriptor 2 goes to /dev/null for the call
    (Python's warnings are off there too, see `_decode_any`; the DICOM node grades in such processes too); with
    other threads it is left alone, as they may be logging (serve, whose grading thread runs beside its web
    server, reads each study in a reader process of its own for this reason among others)."""
    saved = None
    if active and _alone():
        try:
            if not _DEVNULL:
                _DEVNULL.append(os.open(os.devnull, os.O_WRONLY))
            sys.stderr.flush()
            saved = os.dup(2)
            os.dup2(_DEVNULL[0], 2)
        except (OSError, ValueError, AttributeError):  # no stderr to quiet (closed, or not a file)
            if saved is not None:
                os.close(saved)
            saved = None
    try:
        yield
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)


def _decode_file(s: _Slice, out: np.ndarray | None = None) -> np.ndarray | SkippedFile:
    with _native_stderr_quiet(s.transfer_syntax == scan.RLE_LOSSLESS):
        return _decode_any(s, out)


def _decode_any(s: _Slice, out: np.ndarray | None = None) -> np.ndarray | SkippedFile:
    if s.raw is not None and isinstance(s.ds, scan.FlatHeader):  # the fast route's file: no pydicom
        try:
            arr = scan.decode_fast(s.raw[1], s.raw[2], s.transfer_syntax, s.ds, out)
        except Exception:  # noqa: BLE001 - not expected; pydicom's decoder then decides, and says why
            arr = None
        if arr is not None:
            s.raw = None
            return arr
    import pydicom
    from pydicom.dataelem import DataElement

    ts = _uid(s.transfer_syntax) if s.transfer_syntax else None
    what = ts.name if ts else "unknown transfer syntax"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # damaged-but-decodable files warn; the result is checked below
            if s.raw is None:  # read without its pixel bytes (a deflated file, or a header-only read)
                ds = pydicom.dcmread(s.path)
                _drop_damaged(ds)
                return ds.pixel_array
            # the header parsed once already holds every element but Pixel Data, and the bytes were read with it:
            # the decoder takes them with the pixel description from that header (the dataset's own route
            # decodes the same bytes the same way, after reading that description again element by element)
            vr, value, undefined = s.raw
            decoder = _decoder(s.transfer_syntax) if ts else None
            options = _decode_options(s.ds, s.transfer_syntax) if decoder is not None else None
            if options is not None:
                arr, _ = decoder.as_array(value, **options)
                return arr
            ds = s.ds = _full_header(s)
            ds[_PIXEL_DATA_TAG] = DataElement(_PIXEL_DATA_TAG, vr, value, is_undefined_length=undefined)
            try:
                return ds.pixel_array
            finally:
                del ds[_PIXEL_DATA_TAG]  # the header stays light: the slice keeps it until the series is built
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # plugins raise anything; pylibjpeg-rle even panics (a BaseException)
        return SkippedFile(str(s.path), f"could not decode pixel data ({what}): {_decoder_message(e)}")
    finally:
        s.raw = None


def _transform(s: _Slice) -> tuple[float, float, float]:
    """(invert, slope, intercept) taking this slice's stored values to float32 pixels in MONOCHROME2 sense with
    the rescale applied (see `types.to_float`); invert is NaN unless the slice is MONOCHROME1."""
    header, invert = s.ds, float("nan")
    if str(header.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        bits = _int(header.get("BitsStored")) or (_int(header.get("BitsAllocated")) or 16)
        lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if _int(header.get("PixelRepresentation")) == 1 \
            else (0, 2 ** bits - 1)
        invert = float(lo + hi)
    slope, intercept = s.rescale if s.rescale is not None else (1.0, 0.0)
    return invert, float(slope), float(intercept)


# --- grouping, sorting, assembling -------------------------------------------------------------------------
@dataclass
class _Group:
    """Slices that can form one volume, and what the reader noticed about them."""

    slices: list[_Slice]
    orientation: np.ndarray | None
    pixels: np.ndarray | StoredPixels | None = None
    skipped: list[SkippedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Largest angle between the row directions or the column directions of two orientations."""
    cos = min(float(np.dot(a[:3], b[:3])), float(np.dot(a[3:], b[3:])))
    return float(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))))


def _same_spacing(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """np.allclose(a, b, rtol=1e-3) on two pairs, without numpy's cost per call (it runs once per slice)."""
    return all(abs(x - y) <= 1e-8 + 1e-3 * abs(y) for x, y in zip(a, b))


def _split(slices: list[_Slice]) -> list[_Group]:
    """Group slices that stack: same SeriesInstanceUID, size, pixel spacing and orientation (within tolerance).

    Slices without geometry form their own group: they cannot be placed relative to the others. Slices are
    visited in InstanceNumber order so that the groups do not depend on file names.
    """
    groups: list[_Group] = []
    for s in sorted(slices, key=lambda s: (s.instance is None, s.instance or 0, _natural_key(s.path))):
        for g in groups:
            ref = g.slices[0]
            same = (ref.series_uid == s.series_uid and (ref.rows, ref.cols) == (s.rows, s.cols)
                    and _same_spacing(ref.spacing, s.spacing) and ref.has_geometry == s.has_geometry
                    and (not s.has_geometry or _angle_deg(ref.orientation, s.orientation)
                         <= ORIENTATION_TOLERANCE_DEG))
            if same:
                g.slices.append(s)
                break
        else:
            groups.append(_Group([s], s.orientation if s.has_geometry else None))
    return groups


def _order(g: _Group) -> None:
    """Sort along the slice normal and drop files at a position already taken (kept: lowest InstanceNumber)."""
    if g.orientation is None:
        g.slices.sort(key=lambda s: (s.instance is None, s.instance or 0))
        return
    normal = np.cross(g.orientation[:3], g.orientation[3:])
    normal /= np.linalg.norm(normal)
    offsets = np.array([float(s.position @ normal) for s in g.slices])
    inst = np.array([s.instance if s.instance is not None else np.iinfo(np.int64).max for s in g.slices])
    order = np.lexsort((inst, offsets))
    kept: list[_Slice] = []
    last = None
    for i in order:
        s = g.slices[i]
        if last is not None and abs(offsets[i] - last) < DUPLICATE_TOLERANCE_MM:
            g.skipped.append(SkippedFile(str(s.path), f"duplicate: same slice position as {kept[-1].path.name}"))
            continue
        kept.append(s)
        last = offsets[i]
    dropped = len(g.slices) - len(kept)
    if dropped:
        g.notes.append(f"{dropped} file(s) at the same slice position as another were dropped "
                       "(kept the lowest InstanceNumber)")
    g.slices = kept


class VolumePool:
    """Memory for the stored-value volumes of one study after another, reused instead of allocated anew.

    A volume is tens of MB (27 MB per real RSNA study): allocated fresh for each study, the C allocator takes
    it from the system and gives it back after the study, so every page is faulted in and zeroed again (on the
    real studies that was 100,000 page faults, a third of prepare's system time). Inside `volumes_from(pool)`,
    the reader takes its volumes from the pool; `release()` says that every volume it lent is no longer used
    (prepare calls it once the study is written), and the next study reuses their memory. It keeps at most
    what the last study used."""

    def __init__(self) -> None:
        self._free: list[np.ndarray] = []  # uint8 buffers
        self._lent: list[np.ndarray] = []

    def empty(self, shape: tuple[int, ...], dtype) -> np.ndarray:
        """An uninitialised C-contiguous array of that shape and type (a view of one of the pool's buffers)."""
        dtype = np.dtype(dtype)
        n = math.prod(shape) * dtype.itemsize
        fits = [i for i, b in enumerate(self._free) if b.size >= n]
        if fits:
            buf = self._free.pop(min(fits, key=lambda i: self._free[i].size))  # the smallest that fits
        else:
            buf = np.empty(n, dtype=np.uint8)
        self._lent.append(buf)
        return buf[:n].view(dtype).reshape(shape)

    def release(self) -> None:
        """Every array lent is free to be lent again (the caller holds none of them any more); buffers that
        were not lent since the last release are given back to the allocator."""
        self._free, self._lent = self._lent, []


_VOLUMES: contextvars.ContextVar[VolumePool | None] = contextvars.ContextVar("spinegrade_volumes", default=None)


@contextmanager
def volumes_from(pool: VolumePool):
    """Within this block (in this thread), the reader's stored-value volumes come from `pool`."""
    token = _VOLUMES.set(pool)
    try:
        yield pool
    finally:
        _VOLUMES.reset(token)


def _empty_volume(shape: tuple[int, ...], dtype) -> np.ndarray:
    pool = _VOLUMES.get()
    return pool.empty(shape, dtype) if pool is not None else np.empty(shape, dtype=dtype)


def _load_pixels(g: _Group, cache: dict, want: str) -> None:
    """Decode every slice; files that fail are skipped with the decoder's reason. `want`: "float" gives a
    float32 array, "stored" a StoredPixels (the stored values and each slice's transform).

    For "stored" the volume is allocated once the first slice is decoded (its shape and type, one plane per
    slice) and each later slice is decoded straight into its plane where the decoder can, or copied there: the
    stored values are written once, not decoded, then stacked. A slice of another type (never seen in one
    series) ends that: the planes are then stacked as np.stack stacks them, promoting the type."""
    planes, kept = [], []
    volume = None  # (slices, rows, cols): the planes so far are its first len(planes)
    for s in g.slices:
        slot = volume[len(planes)] if volume is not None else None
        r = _decode_stored(s, cache, slot)
        if isinstance(r, SkippedFile):
            if r not in g.skipped:  # the frames of one undecodable file: said once
                g.skipped.append(r)
            continue
        if want == "stored":
            if volume is None and not planes:
                volume = _empty_volume((len(g.slices), *r.shape), r.dtype)
                slot = volume[0]
            if slot is not None and r is not slot:
                if r.dtype == slot.dtype and r.shape == slot.shape:
                    slot[...] = r
                else:
                    volume = None  # the planes so far stay views of it
            if volume is not None:
                r = slot
        planes.append(r)
        kept.append(s)
    g.slices = kept
    if not planes:
        g.pixels = None
    elif want == "stored":
        t = np.array([_transform(s) for s in kept], dtype=np.float64).reshape(-1, 3)
        if volume is None:
            values = np.stack(planes)
        else:  # every plane is in it: the volume is what np.stack(planes) gives (fewer planes: a copy of its top)
            values = volume if len(planes) == len(volume) else volume[:len(planes)].copy()
        if values.dtype.kind not in "iub":  # not integers (never seen in MR): keep the float pixels
            values = np.stack([to_float(a, *tk) for a, tk in zip(planes, t)])
            t = np.array([[np.nan, 1.0, 0.0]] * len(planes))
        g.pixels = StoredPixels(values, t[:, 0], t[:, 1], t[:, 2])
    else:
        g.pixels = np.stack([to_float(a, *_transform(s)) for a, s in zip(planes, kept)])


def _assemble(slices: list[_Slice], study_id: str, series_id: str, load_pixels: str
              ) -> tuple[list[Series], list[SkippedFile]]:
    """Readable slices of one source series -> one Series per stackable group (largest first), and the
    skipped files of groups in which no file decoded.

    The largest group keeps the source id; the others become `<id>.2`, `<id>.3`, ... with notes saying how
    they differ from it.
    """
    groups = _split(slices)
    cache: dict = {}  # a multi-frame file is decoded once for all its frames, whatever group they fall in
    for g in groups:
        _order(g)
        if load_pixels:
            _load_pixels(g, cache, load_pixels)
    cache.clear()
    dead = [k for g in groups if not g.slices for k in g.skipped]
    groups = [g for g in groups if g.slices]
    groups.sort(key=lambda g: (-len(g.slices), min((s.instance or 0) for s in g.slices)))
    ids = [series_id] + [f"{series_id}.{i + 1}" for i in range(1, len(groups))]
    if len(groups) > 1:
        main = groups[0]
        why = sorted({w for g in groups[1:] for w in _differences(main, g)})
        main.notes.insert(0, f"the files of series {series_id} form {len(groups)} stacks that differ in "
                             f"{', '.join(why)}; this is the largest, the others are {', '.join(ids[1:])}")
        for g, sid in zip(groups[1:], ids[1:]):
            g.notes.insert(0, f"split from series {series_id}: {'; '.join(_differences(main, g, detail=True))}")
    return [_to_series(g, study_id, sid, series_id) for g, sid in zip(groups, ids)], dead


def _differences(a: _Group, b: _Group, detail: bool = False) -> list[str]:
    sa, sb = a.slices[0], b.slices[0]
    out = []
    if sa.series_uid != sb.series_uid:
        out.append("SeriesInstanceUID")
    if (sa.rows, sa.cols) != (sb.rows, sb.cols):
        out.append(f"image size {sb.rows}x{sb.cols} vs {sa.rows}x{sa.cols}" if detail else "image size")
    if not _same_spacing(sa.spacing, sb.spacing):
        out.append(f"pixel spacing {sb.spacing[0]:g}x{sb.spacing[1]:g} vs {sa.spacing[0]:g}x{sa.spacing[1]:g} mm"
                   if detail else "pixel spacing")
    if (a.orientation is None) != (b.orientation is None):
        out.append("no ImageOrientationPatient/ImagePositionPatient" if detail else "geometry tags")
    elif a.orientation is not None and _angle_deg(a.orientation, b.orientation) > ORIENTATION_TOLERANCE_DEG:
        out.append(f"orientation {_angle_deg(a.orientation, b.orientation):.1f} degrees apart" if detail
                   else "orientation")
    return out


def _full_header(s: _Slice) -> Dataset:
    """The slice's header as pydicom's Dataset: read now, as the pydicom route reads it, when the fast route
    read it as a `scan.FlatHeader`."""
    if not isinstance(s.ds, scan.FlatHeader):
        return s.ds
    ds, problems = _pydicom_header(s.path, only_read=True)
    s.problems += problems
    return ds


def _to_series(g: _Group, study_id: str, series_id: str, source_id: str) -> Series:
    first = g.slices[0]
    # The tags read once per series come from this header alone. The fast route read them from the file
    # already, and accepts no file with an element pydicom could not decode; other headers are decoded now.
    header = first.ds
    if not isinstance(header, scan.FlatHeader):
        first.problems += _drop_damaged(header)
    notes = list(g.notes)
    files: dict[str, dict[str, None]] = {}  # problem -> the files that have it, in order (a multi-frame file once)
    for s in g.slices:
        for problem in s.problems:
            files.setdefault(problem, {})[str(s.path)] = None
    if files:
        total = len({s.path for s in g.slices})
        folder = os.path.commonpath([str(s.path.parent) for s in g.slices])
        for problem, paths in sorted(files.items()):
            notes.append(f"{problem} in {len(paths)} of {total} files: {_listed(list(paths), folder)}")
    if first.spacing_source == "ImagerPixelSpacing":
        notes.append("no PixelSpacing: used ImagerPixelSpacing")
    elif first.spacing_source == "default":
        notes.append("no PixelSpacing or ImagerPixelSpacing: assumed 1.0 mm pixels")
    missing = [i for i, s in enumerate(g.slices) if s.instance is None]
    instances = np.array([s.instance if s.instance is not None else i + 1 for i, s in enumerate(g.slices)],
                         dtype=np.int64)
    if missing:
        notes.append(f"{len(missing)} file(s) without InstanceNumber: numbered by slice order")
    if g.orientation is not None:
        geometry = SeriesGeometry(g.orientation, np.stack([s.position for s in g.slices]), first.spacing,
                                  (first.rows, first.cols))
    else:
        steps = [_floats(header.get(kw), 1) for kw in ("SpacingBetweenSlices", "SliceThickness")]
        step = next((abs(float(v[0])) for v in steps if v is not None and v[0] != 0), 1.0)
        geometry = SeriesGeometry(np.array([1.0, 0, 0, 0, 1.0, 0]),
                                  np.array([[0.0, 0.0, k * step] for k in range(len(g.slices))]),
                                  first.spacing, (first.rows, first.cols))
        notes.append("no ImageOrientationPatient/ImagePositionPatient: slices in InstanceNumber order, "
                     "placeholder geometry (do not project points)")
    syntaxes = sorted({s.transfer_syntax for s in g.slices if s.transfer_syntax})
    if len(syntaxes) > 1:
        notes.append(f"files use {len(syntaxes)} transfer syntaxes")
    tags = _plain_tags(header)
    return Series(
        study_id=str(study_id), series_id=str(series_id), role="", role_reason="",
        description=str(tags.get("SeriesDescription", "")), geometry=geometry, instance_numbers=instances,
        pixels=g.pixels, files=[str(s.path) for s in g.slices],
        sop_instance_uids=[_value_text(s.ds.get("SOPInstanceUID", "")) for s in g.slices],
        transfer_syntax=", ".join(syntaxes), tags=tags, skipped=list(g.skipped), notes=notes,
        source_series_id=str(source_id), geometry_known=g.orientation is not None,
        stored=g.pixels if isinstance(g.pixels, StoredPixels) else None,
    )


# Where an enhanced MR file keeps the acquisition tags that a classic file has at the top level.
_ENHANCED_TAGS = {
    "EchoTime": ("MREchoSequence", "EffectiveEchoTime"),
    "RepetitionTime": ("MRTimingAndRelatedParametersSequence", "RepetitionTime"),
    "FlipAngle": ("MRTimingAndRelatedParametersSequence", "FlipAngle"),
    "InversionTime": ("MRModifierSequence", "InversionTimes"),
    "SliceThickness": ("PixelMeasuresSequence", "SliceThickness"),
    "SpacingBetweenSlices": ("PixelMeasuresSequence", "SpacingBetweenSlices"),
}


def _plain_tags(ds: Dataset) -> dict:
    """The acquisition tags present, as JSON-ready values (numbers as float/int, multi-values as lists)."""
    if isinstance(ds, scan.FlatHeader):
        several: type | tuple = list  # its values with several parts; and pydicom stays unimported
    else:
        from pydicom.multival import MultiValue

        several = (MultiValue, list)
    out = {}
    for kw in _TAG_KEYWORDS:
        v = ds.get(kw)
        if v is None and kw in _ENHANCED_TAGS:
            group, inner = _ENHANCED_TAGS[kw]
            v = _find(ds, inner, group)
            if isinstance(v, several):
                v = v[0] if len(v) else None
        if v is None or v == "":
            continue
        if isinstance(v, float):
            out[kw] = float(v)
        elif isinstance(v, int):
            out[kw] = int(v)
        elif isinstance(v, several):
            out[kw] = [str(x) for x in v]
        else:
            out[kw] = str(v)
    return out
