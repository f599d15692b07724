"""The RSNA 2024 challenge layout: its CSVs, its image folders, checks of both, and cross-validation folds.

Torch-free on purpose: dataset checks, fold making and the metric's ground truth all need these tables
without a deep-learning stack. Every reader says which file and which line is wrong (as a text editor numbers
lines, header = 1), because a wrong severity spelling in a 2,000-row CSV is otherwise a long hunt.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import vocab
from ..errors import DataError

__all__ = [
    "COORD_COLUMNS",
    "SERIES_COLUMNS",
    "RsnaDataset",
    "StudyRecord",
    "make_folds",
    "read_coordinates",
    "read_labels",
    "read_series_descriptions",
    "split_studies",
    "validate_dataset",
]

SPLITS: tuple[str, ...] = ("train", "test")  # auto-detection order: a full download has both; train has labels
SERIES_COLUMNS: tuple[str, ...] = ("study_id", "series_id", "role", "description")
COORD_COLUMNS: tuple[str, ...] = ("study_id", "series_id", "instance_number", "condition", "level", "x", "y")
_N_EXAMPLES = 5  # how many offenders a validation message names before "and N more"


# --- reading CSVs with line numbers ----------------------------------------------------------------------

@dataclass
class _Table:
    """A CSV as raw strings per column, with the line each record starts on (for error messages)."""

    path: Path
    header: list[str]
    cols: dict[str, list[str]]
    lines: np.ndarray

    def at(self, i: int) -> str:
        return f"{self.path}:{int(self.lines[i])}"


def _read_table(path: str | os.PathLike, required: Sequence[str]) -> _Table:
    # The csv module rather than pandas: it reports where each record starts, so messages can say
    # "train.csv:1234" even when blank lines or quoted line breaks are present.
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    header: list[str] | None = None
    header_line = 0
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            prev = 0
            for row in reader:
                start, prev = prev + 1, reader.line_num
                if not any(f.strip() for f in row):
                    continue  # blank lines and the all-comma rows spreadsheets leave behind
                if header is None:
                    header, header_line = [h.strip() for h in row], start
                    continue
                if len(row) != len(header):
                    raise DataError(f"{path}:{start}: {len(row)} fields, but the header (line {header_line}) "
                                    f"has {len(header)}")
                rows.append(row)
                lines.append(start)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except csv.Error as e:
        raise DataError(f"{path}:{prev + 1}: not valid CSV ({e})") from None
    if header is None:
        raise DataError(f"{path}: empty file (expected a header with {', '.join(required)})")
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        raise DataError(f"{path}: column(s) named twice in the header: {', '.join(dup)}")
    missing = [c for c in required if c not in header]
    if missing:
        unexpected = [h for h in header if h not in required]
        hint = f"; unexpected column(s): {_examples(unexpected)}" if unexpected else ""
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}{hint}")
    values = list(zip(*rows)) if rows else [()] * len(header)
    cols = {h: list(v) for h, v in zip(header, values)}
    return _Table(path, header, cols, np.asarray(lines, dtype=np.int64))


def _error_at(t: _Table, mask: np.ndarray, col: str, problem: str) -> DataError:
    i = int(np.flatnonzero(mask)[0])
    return DataError(f"{t.at(i)}: {col} {problem}, got {t.cols[col][i]!r}")


def _int_column(t: _Table, col: str) -> np.ndarray:
    """Integers (ids, instance numbers); '12.0' is accepted since spreadsheets and pandas write ints so."""
    raw = pd.Series([v.strip() for v in t.cols[col]], dtype=object)
    num = pd.to_numeric(raw, errors="coerce")
    if num.dtype.kind in "iu":
        return num.to_numpy(dtype=np.int64)
    f = num.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(f)
    bad[~bad] = f[~bad] != np.round(f[~bad])
    if bad.any():
        raise _error_at(t, bad, col, "must be a whole number")
    return f.astype(np.int64)


def _float_column(t: _Table, col: str) -> np.ndarray:
    raw = pd.Series([v.strip() for v in t.cols[col]], dtype=object)
    f = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(f)
    if bad.any():
        raise _error_at(t, bad, col, "must be a finite number")
    return f


def _vocab_column(t: _Table, col: str, parse: Callable[[str], object], blank_ok: bool = False) -> list:
    """Map a column through a vocab parser, once per distinct spelling; the first bad row is reported."""
    raw = t.cols[col]
    mapping: dict[str, object] = {}
    errors: dict[str, str] = {}
    for u in dict.fromkeys(raw):
        if blank_ok and not u.strip():
            mapping[u] = None
            continue
        try:
            mapping[u] = parse(u)
        except ValueError as e:
            errors[u] = str(e)
    if errors:
        i = next(i for i, v in enumerate(raw) if v in errors)
        raise DataError(f"{t.at(i)}: column {col}: {errors[raw[i]]}")
    return [mapping[v] for v in raw]


def _check_unique(t: _Table, keys: Sequence, what: str) -> None:
    seen: dict = {}
    for i, k in enumerate(keys):
        if k in seen:
            shown = "/".join(map(str, k)) if isinstance(k, tuple) else k
            raise DataError(f"{t.at(i)}: {what} {shown} appears again (first on line {int(t.lines[seen[k]])})")
        seen[k] = i


def read_labels(path: str | os.PathLike) -> pd.DataFrame:
    """Read train.csv: index study_id (int64), the 25 `vocab.TARGETS` as nullable Int8 class indices.

    Blank cells are <NA> (not scored, still predicted). Columns may come in any order; columns that are
    not targets are ignored. Raises DataError naming file and line for a bad id, severity or duplicate.
    """
    t = _read_table(path, ("study_id", *vocab.TARGETS))
    ids = _int_column(t, "study_id")
    _check_unique(t, ids.tolist(), "study_id")
    data = {c: pd.array(_vocab_column(t, c, vocab.parse_severity, blank_ok=True), dtype="Int8")
            for c in vocab.TARGETS}
    df = pd.DataFrame(data, index=pd.Index(ids, dtype="int64", name="study_id"))
    return df.sort_index()


def read_series_descriptions(path: str | os.PathLike) -> pd.DataFrame:
    """Read `<split>_series_descriptions.csv` into columns study_id, series_id (int64), role, description.

    The role comes from the CSV because the SeriesDescription inside the real files is often just "T1".
    Rows are sorted by study then series. Raises DataError (file:line) for unknown descriptions and duplicates.
    """
    t = _read_table(path, ("study_id", "series_id", "series_description"))
    df = pd.DataFrame({
        "study_id": _int_column(t, "study_id"),
        "series_id": _int_column(t, "series_id"),
        "role": pd.Series(_vocab_column(t, "series_description", vocab.parse_role), dtype=str),
        "description": pd.Series(t.cols["series_description"], dtype=str),
    })
    _check_unique(t, list(zip(df["study_id"].tolist(), df["series_id"].tolist())), "study_id/series_id")
    return df.sort_values(["study_id", "series_id"], kind="stable").reset_index(drop=True)


def read_coordinates(path: str | os.PathLike | Sequence[str | os.PathLike]) -> pd.DataFrame:
    """Read a label-coordinates table (or several, concatenated, e.g. the original split by condition).

    Columns `COORD_COLUMNS` with condition and level as vocab keys, whichever spelling the file uses
    ("Spinal Canal Stenosis"/"L1/L2" or "spinal_canal_stenosis"/"l1_l2"), followed by any extra columns as
    found (hengck23's `fix` flag, ...). x is the column and y the row, in pixels of that instance.
    """
    if isinstance(path, (str, os.PathLike)):
        return _read_one_coordinates(path)
    frames = [_read_one_coordinates(p) for p in path]
    if not frames:
        raise ValueError("read_coordinates needs at least one path")
    return pd.concat(frames, ignore_index=True)


def _read_one_coordinates(path: str | os.PathLike) -> pd.DataFrame:
    t = _read_table(path, COORD_COLUMNS)
    df = pd.DataFrame({
        "study_id": _int_column(t, "study_id"),
        "series_id": _int_column(t, "series_id"),
        "instance_number": _int_column(t, "instance_number"),
        "condition": pd.Series(_vocab_column(t, "condition", vocab.parse_condition), dtype=str),
        "level": pd.Series(_vocab_column(t, "level", vocab.parse_level), dtype=str),
        "x": _float_column(t, "x"),
        "y": _float_column(t, "y"),
    })
    for col in t.header:
        if col not in COORD_COLUMNS:
            df[col] = _infer_extra(t.cols[col])
    return df


def _infer_extra(values: list[str]) -> pd.Series:
    """Extra columns become whole numbers, numbers or text (blank = missing), whichever fits every row."""
    s = pd.Series(values, dtype=object).str.strip()
    blank = s == ""
    num = pd.to_numeric(s.mask(blank), errors="coerce")
    if not (num.isna() & ~blank).any() and not blank.all():
        whole = num.dropna()
        if (whole == np.round(whole)).all() and whole.abs().max() < 2**53:
            return num.astype("Int64")
        return num.astype("float64")
    return pd.Series(values, dtype=str).mask(blank)


# --- the dataset folder --------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudyRecord:
    """What training and inference need of one study, without reading any image."""

    study_id: int
    path: Path | None  # the study's image folder; None when it has none
    series: dict[str, list[int]]  # role -> series ids (sorted); folders without a description: "unknown"
    labels: list[int | None] | None  # 25 class indices in vocab.TARGETS order; None without labels
    coords: pd.DataFrame  # its rows of the coordinates table (possibly empty)


@dataclass(frozen=True)
class _SplitPaths:
    labels: Path
    series: Path
    coords: Path
    images: Path


def _split_paths(root: Path, split: str) -> _SplitPaths:
    return _SplitPaths(root / f"{split}.csv", root / f"{split}_series_descriptions.csv",
                       root / f"{split}_label_coordinates.csv", root / f"{split}_images")


def _detect_split(root: Path, split: str | None) -> str:
    if split is not None:
        if not split or any(ch in split for ch in "/\\"):
            raise ValueError(f"split must be a plain name such as 'train' or 'test', got {split!r}")
        return split
    for s in SPLITS:
        p = _split_paths(root, s)
        if p.labels.is_file() or p.series.is_file() or p.images.is_dir():
            return s
    raise DataError(f"{root}: not an RSNA dataset folder (found none of train.csv, "
                    "train_series_descriptions.csv, train_images/, test_series_descriptions.csv, test_images/)")


def _int_names(folder: Path) -> list[int]:
    """Numeric sub-folder names (study or series ids); anything else (.DS_Store, __MACOSX) is not data."""
    with os.scandir(folder) as it:
        return sorted(int(e.name) for e in it if e.name.isdigit() and e.is_dir())


class RsnaDataset:
    """A folder in the challenge layout: `<split>.csv`, `<split>_series_descriptions.csv`,
    `<split>_label_coordinates.csv` (optional) and `<split>_images/<study>/<series>/<instance>.dcm`.

    `split=None` picks train when any train file is there, else test. `coordinates=` reads another
    coordinates table instead of the folder's own (e.g. hengck23's corrected one). Labels and
    coordinates are None where the files are absent; series descriptions are then an empty table and
    series roles must be inferred from the images.
    """

    def __init__(self, root: str | os.PathLike, split: str | None = None,
                 coordinates: str | os.PathLike | None = None):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: dataset folder not found")
        self.root = root
        self.split = _detect_split(root, split)
        p = _split_paths(root, self.split)
        self.labels_path = p.labels if p.labels.is_file() else None
        self.series_path = p.series if p.series.is_file() else None
        self.coords_path = Path(coordinates) if coordinates is not None else (
            p.coords if p.coords.is_file() else None)
        self._images_dir = p.images
        if self.labels_path is None and self.series_path is None and not p.images.is_dir():
            raise DataError(f"{root}: no {self.split} data (none of {p.labels.name}, {p.series.name}, "
                            f"{p.images.name}/)")
        self._labels = read_labels(self.labels_path) if self.labels_path else None
        self._series = (read_series_descriptions(self.series_path) if self.series_path
                        else pd.DataFrame({c: pd.Series(dtype="int64" if c.endswith("_id") else str)
                                           for c in SERIES_COLUMNS}))
        self._coords = read_coordinates(self.coords_path) if self.coords_path else None
        self._series_rows = self._series.groupby("study_id").indices
        self._coord_rows = self._coords.groupby("study_id").indices if self._coords is not None else {}
        self._study_ids: list[int] | None = None

    def __repr__(self) -> str:
        return f"RsnaDataset({str(self.root)!r}, split={self.split!r}, studies={len(self)})"

    def __len__(self) -> int:
        return len(self.study_ids)

    @property
    def labels(self) -> pd.DataFrame | None:
        """`read_labels` of `<split>.csv`, or None when there is none (the test split)."""
        return self._labels

    @property
    def series(self) -> pd.DataFrame:
        """`read_series_descriptions` of the split (empty, same columns, when the CSV is absent)."""
        return self._series

    @property
    def coords(self) -> pd.DataFrame | None:
        """`read_coordinates` of the chosen table, or None when there is none."""
        return self._coords

    @property
    def images_dir(self) -> Path:
        """`<root>/<split>_images` (it may not exist: a labels-only folder)."""
        return self._images_dir

    @property
    def has_images(self) -> bool:
        return self._images_dir.is_dir()

    @property
    def study_ids(self) -> list[int]:
        """Sorted ids of the studies with an image folder; without images, those with labels (else series)."""
        if self._study_ids is None:
            if self.has_images:
                self._study_ids = _int_names(self._images_dir)
            elif self._labels is not None:
                self._study_ids = [int(s) for s in self._labels.index]
            else:
                self._study_ids = sorted(int(s) for s in self._series_rows)
        return list(self._study_ids)

    def study_dir(self, study_id: int | str) -> Path:
        """Where the study's series folders are (whether or not it exists)."""
        return self._images_dir / str(int(study_id))

    def series_of(self, study_id: int | str) -> pd.DataFrame:
        """The study's rows of the series descriptions (possibly none)."""
        rows = self._series_rows.get(int(study_id), [])
        return self._series.iloc[rows].reset_index(drop=True)

    def descriptions_for(self, study_id: int | str) -> dict[int, str]:
        """series_id -> role, from the descriptions CSV (empty when the study has no rows there)."""
        s = self.series_of(study_id)
        return {int(k): str(r) for k, r in zip(s["series_id"], s["role"])}

    def label_vector(self, study_id: int | str) -> list[int | None]:
        """The study's 25 class indices in `vocab.TARGETS` order (None where blank); KeyError if unlabelled."""
        sid = int(study_id)
        if self._labels is None or sid not in self._labels.index:
            where = self.labels_path or f"{self.root} (no {self.split}.csv)"
            raise KeyError(f"study {sid} has no labels in {where}")
        row = self._labels.loc[sid, list(vocab.TARGETS)]
        return [None if pd.isna(v) else int(v) for v in row]

    def coords_for(self, study_id: int | str) -> pd.DataFrame:
        """The study's coordinate rows (empty, with `COORD_COLUMNS`, when it has none or there is no table)."""
        if self._coords is None:
            return pd.DataFrame({c: pd.Series(dtype=object) for c in COORD_COLUMNS})
        rows = self._coord_rows.get(int(study_id), [])
        return self._coords.iloc[rows].reset_index(drop=True)

    def iter_studies(self, study_ids: Iterable[int | str] | None = None) -> Iterator[StudyRecord]:
        """One `StudyRecord` per study (all of `study_ids` by default), in the order given."""
        for sid in (self.study_ids if study_ids is None else study_ids):
            sid = int(sid)
            folder = self.study_dir(sid)
            has_folder = folder.is_dir()
            roles: dict[str, list[int]] = {}
            described = self.descriptions_for(sid)
            for series_id, role in sorted(described.items()):
                roles.setdefault(role, []).append(series_id)
            if has_folder:
                for series_id in _int_names(folder):
                    if series_id not in described:
                        roles.setdefault(vocab.UNKNOWN_ROLE, []).append(series_id)
            labelled = self._labels is not None and sid in self._labels.index
            yield StudyRecord(sid, folder if has_folder else None, roles,
                              self.label_vector(sid) if labelled else None, self.coords_for(sid))


# --- checking a dataset folder -------------------------------------------------------------------------

def _examples(items: Iterable, n: int = _N_EXAMPLES) -> str:
    items = list(items)
    head = ", ".join(str(i) for i in items[:n])
    return head + (f" (and {len(items) - n} more)" if len(items) > n else "")


@dataclass
class _ImageTree:
    series: dict[int, list[int]]  # study -> series folders
    sizes: dict[tuple[int, int, int], int]  # (study, series, instance) -> bytes, for <instance>.dcm files
    zero_byte: list[str]  # every empty .dcm, as study/series/name
    unreadable: list[str]  # entries that cannot be stat'ed (dangling links)


def _scan_images(images: Path) -> _ImageTree:
    # stat only: decoding 147k DICOMs would take an hour, and zero-byte placeholders are the common fault.
    tree = _ImageTree({}, {}, [], [])
    for study in _int_names(images):
        tree.series[study] = _int_names(images / str(study))
        for ser in tree.series[study]:
            with os.scandir(images / str(study) / str(ser)) as it:
                for e in it:
                    stem, ext = os.path.splitext(e.name)
                    if ext.lower() != ".dcm":
                        continue
                    rel = f"{study}/{ser}/{e.name}"
                    try:
                        size = e.stat().st_size
                    except OSError:
                        tree.unreadable.append(rel)
                        continue
                    if size == 0:
                        tree.zero_byte.append(rel)
                    if stem.isdigit():
                        tree.sizes[(study, ser, int(stem))] = size
    tree.zero_byte.sort(key=_natural)
    tree.unreadable.sort(key=_natural)
    return tree


def _natural(rel: str) -> tuple:
    """Sort key listing 2.dcm before 10.dcm."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in rel.replace(".dcm", "").split("/"))


def validate_dataset(root: str | os.PathLike, check_images: bool = True, *, split: str | None = None,
                     coordinates: str | os.PathLike | None = None) -> list[str]:
    """Human-readable problems with a dataset folder; an empty list means it is usable.

    Checks the CSVs (each one's first error), that they agree with each other, and with `check_images` the
    image tree: studies without folders, folders without descriptions, coordinates pointing at missing or
    empty instance files, zero-byte .dcm files. Only names and sizes are read, so it is cheap.
    """
    root = Path(root)
    if not root.is_dir():
        return [f"{root}: dataset folder not found"]
    try:
        split = _detect_split(root, split)
    except DataError as e:
        return [str(e)]
    p = _split_paths(root, split)
    if coordinates is not None:
        p = _SplitPaths(p.labels, p.series, Path(coordinates), p.images)
    problems: list[str] = []

    def attempt(reader, path: Path, needed: str | None):
        if not path.is_file():
            if needed:
                problems.append(f"{path}: file not found ({needed})")
            return None
        try:
            return reader(path)
        except DataError as e:
            problems.append(str(e))
            return None

    labels = attempt(read_labels, p.labels, "a training split needs labels" if split == "train" else None)
    series = attempt(read_series_descriptions, p.series, "series roles would have to be guessed from the images")
    coords = attempt(read_coordinates, p.coords, "given as coordinates=" if coordinates is not None else None)
    problems += _check_tables(p, labels, series, coords)
    if check_images:
        if p.images.is_dir():
            problems += _check_images(p, _scan_images(p.images), labels, series, coords)
        else:
            problems.append(f"{p.images}: image folder not found")
    return problems


def _check_tables(p: _SplitPaths, labels: pd.DataFrame | None, series: pd.DataFrame | None,
                  coords: pd.DataFrame | None) -> list[str]:
    """Do the CSVs agree with each other?"""
    problems: list[str] = []
    if labels is not None and series is not None:
        lonely = sorted(set(labels.index.tolist()) - set(series["study_id"].tolist()))
        if lonely:
            problems.append(f"{p.labels}: {len(lonely)} labelled studies have no series in {p.series.name}: "
                            f"{_examples(lonely)}")
    if coords is not None and series is not None:
        described = set(zip(series["study_id"].tolist(), series["series_id"].tolist()))
        bad = sorted(set(zip(coords["study_id"].tolist(), coords["series_id"].tolist())) - described)
        if bad:
            problems.append(f"{p.coords}: {len(bad)} series named by coordinates are not in {p.series.name}: "
                            f"{_examples(f'{a}/{b}' for a, b in bad)}")
    if coords is not None and labels is not None:
        bad = sorted(set(coords["study_id"].tolist()) - set(labels.index.tolist()))
        if bad:
            problems.append(f"{p.coords}: {len(bad)} studies have coordinates but no labels in {p.labels.name}: "
                            f"{_examples(bad)}")
    return problems


def _check_images(p: _SplitPaths, tree: _ImageTree, labels: pd.DataFrame | None, series: pd.DataFrame | None,
                  coords: pd.DataFrame | None) -> list[str]:
    """Do the CSVs agree with the image folders, and are the files there non-empty?"""
    problems: list[str] = []
    folders = tree.series
    if labels is not None:
        no_images = sorted(set(labels.index.tolist()) - set(folders))
        if no_images:
            problems.append(f"{p.images}: {len(no_images)} of {len(labels)} labelled studies have no image "
                            f"folder: {_examples(no_images)}")
        unlabelled = sorted(set(folders) - set(labels.index.tolist()))
        if unlabelled:
            problems.append(f"{p.images}: {len(unlabelled)} study folders have no row in {p.labels.name}: "
                            f"{_examples(unlabelled)}")
    if series is not None:
        described = set(zip(series["study_id"].tolist(), series["series_id"].tolist()))
        on_disk = {(st, se) for st, ss in folders.items() for se in ss}
        undescribed = sorted(on_disk - described)
        if undescribed:
            problems.append(f"{p.images}: {len(undescribed)} series folders have no row in {p.series.name}: "
                            f"{_examples(f'{a}/{b}' for a, b in undescribed)}")
        absent = sorted(k for k in described - on_disk if k[0] in folders)  # missing studies: reported above
        if absent:
            problems.append(f"{p.series}: {len(absent)} described series have no folder in {p.images.name}/: "
                            f"{_examples(f'{a}/{b}' for a, b in absent)}")
    if coords is not None:
        named = set(zip(coords["study_id"].tolist(), coords["series_id"].tolist(),
                        coords["instance_number"].tolist()))
        missing = sorted(k for k in named if k not in tree.sizes and k[0] in folders)
        empty = sorted(k for k in named if tree.sizes.get(k) == 0)
        if missing:
            problems.append(f"{p.coords}: {len(missing)} instance files named by coordinates do not exist "
                            f"under {p.images.name}/: {_examples('{}/{}/{}.dcm'.format(*k) for k in missing)}")
        if empty:
            problems.append(f"{p.coords}: {len(empty)} instance files named by coordinates are zero-byte: "
                            f"{_examples('{}/{}/{}.dcm'.format(*k) for k in empty)}")
    if tree.zero_byte:
        problems.append(f"{p.images}: {len(tree.zero_byte)} zero-byte .dcm files: {_examples(tree.zero_byte)}")
    if tree.unreadable:
        problems.append(f"{p.images}: {len(tree.unreadable)} .dcm entries cannot be read (dangling links?): "
                        f"{_examples(tree.unreadable)}")
    return problems


# --- cross-validation folds ----------------------------------------------------------------------------

_MOD_SEVERE_BUCKETS = (1, 3, 6, 10)  # 0 | 1-2 | 3-5 | 6-9 | 10+ moderate-or-severe cells per study


def _strata(labels: pd.DataFrame, n_folds: int) -> np.ndarray:
    """One stratification key per study, coarsened until every stratum can reach every fold.

    Keys: worst spinal grade (drives the any_severe_spinal term), any severe anywhere, and how many of
    the 25 cells are moderate or severe (bucketed). A stratum smaller than `n_folds` falls back to a
    coarser key, then to one "rare" stratum, which joins the largest one if still too small.
    """
    missing = [c for c in vocab.TARGETS if c not in labels.columns]
    if missing:
        raise ValueError(f"labels lack target column(s) {', '.join(missing[:3])}; use read_labels")
    v = labels[list(vocab.TARGETS)].astype("float64").fillna(0).to_numpy()
    spinal = v[:, [vocab.TARGETS.index(vocab.target(vocab.CANAL, lv)) for lv in vocab.LEVELS]]
    worst = spinal.max(axis=1).astype(int)
    severe = (v == 2).any(axis=1).astype(int)
    bucket = np.digitize((v >= 1).sum(axis=1), _MOD_SEVERE_BUCKETS)
    levels = [
        np.array([f"s{a}|a{b}|m{c}" for a, b, c in zip(worst, severe, bucket)], dtype=object),
        np.array([f"s{a}|a{b}" for a, b in zip(worst, severe)], dtype=object),
        np.array([f"s{a}" for a in worst], dtype=object),
        np.full(len(v), "rare", dtype=object),
    ]
    keys = levels[0].copy()
    for coarser in levels[1:]:
        counts = pd.Series(keys).value_counts()
        rare = np.isin(keys, counts[counts < n_folds].index.to_numpy())
        if not rare.any():
            return keys
        keys[rare] = coarser[rare]
    counts = pd.Series(keys).value_counts()
    if counts.get("rare", n_folds) < n_folds:
        keys[keys == "rare"] = counts.drop("rare").idxmax() if len(counts) > 1 else "rare"
    return keys


def make_folds(labels: pd.DataFrame, n_folds: int = 5, seed: int = 0) -> pd.Series:
    """Assign each study (the labels' index) to one of `n_folds` folds, stratified on its severity profile.

    Study-level so that no study's series leak between training and validation. The result (index
    study_id, values 0..n_folds-1, name "fold") depends only on the labels and the seed, not on row order.
    """
    from sklearn.model_selection import StratifiedKFold

    if n_folds < 2:
        raise ValueError(f"n_folds must be at least 2, got {n_folds}")
    if labels.index.has_duplicates:
        raise ValueError("labels have duplicate study ids")
    labels = labels.sort_index()
    n = len(labels)
    if n < n_folds:
        raise DataError(f"{n} labelled studies cannot fill {n_folds} folds")
    keys = _strata(labels, n_folds)
    folds = np.full(n, -1, dtype=np.int64)
    skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, val) in enumerate(skf.split(np.zeros(n), keys)):
        folds[val] = k
    return pd.Series(folds, index=pd.Index(labels.index.astype("int64"), name="study_id"), name="fold")


def split_studies(labels: pd.DataFrame, n_folds: int = 5, val_fold: int = 0,
                  seed: int = 0) -> tuple[list[int], list[int]]:
    """(train ids, validation ids), sorted, for one fold of `make_folds`."""
    if not 0 <= val_fold < n_folds:
        raise ValueError(f"val_fold must be in 0..{n_folds - 1}, got {val_fold}")
    folds = make_folds(labels, n_folds, seed)
    val = folds.to_numpy() == val_fold
    ids = folds.index.to_numpy()
    return [int(s) for s in ids[~val]], [int(s) for s in ids[val]]
