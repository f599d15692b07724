"""What reading a study gives back: studies, series and the files that were skipped."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..geometry import SeriesGeometry


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not used, and why (zero-byte, truncated, not DICOM, no pixels, ...)."""

    path: str
    reason: str


def to_float(values: np.ndarray, invert: float, slope: float, intercept: float) -> np.ndarray:
    """Stored values -> float32 pixels: `invert - values` when invert is not NaN (MONOCHROME1), then the rescale.
    The one definition the reader and the cache both use, so their pixels agree bit for bit."""
    out = np.asarray(values).astype(np.float32)
    if not np.isnan(invert):
        out = np.float32(invert) - out
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


class StoredPixels:
    """A series' pixels as the files store them (integers, `values` (n, rows, cols)) with, per slice, what turns
    them into the float32 pixels the reader returns: MONOCHROME1 inversion (`invert` = the stored range's lo + hi,
    NaN for MONOCHROME2), then `* slope`, then `+ intercept`, in float32 and in that order, so the result equals
    the reader's bit for bit. Indexing gives float32 (only the slices asked for are converted), so `values` can be
    a memory map of the cache: a training set holds thousands of series without their pixels in memory.
    """

    def __init__(self, values: np.ndarray, invert, slope, intercept):
        n = values.shape[0]
        self.values = values
        self.invert = np.broadcast_to(np.asarray(invert, dtype=np.float64), (n,))
        self.slope = np.broadcast_to(np.asarray(slope, dtype=np.float64), (n,))
        self.intercept = np.broadcast_to(np.asarray(intercept, dtype=np.float64), (n,))
        t = np.stack([self.invert, self.slope, self.intercept], axis=1)
        self.uniform = n == 0 or bool(np.all((t == t[0]) | (np.isnan(t) & np.isnan(t[0]))))

    shape = property(lambda self: self.values.shape)
    ndim = property(lambda self: self.values.ndim)
    dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.values.shape[0]

    def transform(self, k: int) -> tuple[float, float, float]:
        return float(self.invert[k]), float(self.slope[k]), float(self.intercept[k])

    def convert(self, v: np.ndarray, k: int) -> np.ndarray:
        """Stored values of slice k (any part of it) -> float32 pixels."""
        return to_float(v, *self.transform(k))

    def __getitem__(self, key) -> np.ndarray:
        first = key[0] if isinstance(key, tuple) and key else key
        if first is Ellipsis or first is None:
            return np.asarray(self)[key]
        picked = np.arange(len(self))[first]
        v = self.values[key]
        if self.uniform or np.ndim(picked) == 0:
            return self.convert(v, 0 if self.uniform else int(picked))
        out = np.empty(v.shape, dtype=np.float32)
        for j, k in enumerate(picked):
            out[j] = self.convert(v[j], int(k))
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"StoredPixels({self.values.dtype} {self.shape}, {'uniform' if self.uniform else 'per-slice'})"


@dataclass
class Series:
    """One image series: slices sorted along the slice normal, pixels as float32 with rescale applied."""

    study_id: str
    series_id: str
    role: str  # vocab.SERIES_ROLES or vocab.UNKNOWN_ROLE
    role_reason: str  # why that role, in words
    description: str  # SeriesDescription inside the files ("" when absent)
    geometry: SeriesGeometry
    instance_numbers: np.ndarray  # (n,) int, in slice order
    # (n, rows, cols) float32, or None when read without pixels; from the cache a StoredPixels (float32 on indexing)
    pixels: np.ndarray | StoredPixels | None
    files: list[str] = field(default_factory=list)  # file of each slice, in slice order
    sop_instance_uids: list[str] = field(default_factory=list)
    transfer_syntax: str = ""
    tags: dict = field(default_factory=dict)  # acquisition tags used for the role (EchoTime, ...), UIDs
    skipped: list[SkippedFile] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. "split from a folder that mixed orientations"
    # The series id in the source data (RSNA folder name / SeriesInstanceUID): labels and description CSVs use
    # it. Equals series_id unless the reader split a folder ("123.2" -> "123"); "" when not recorded.
    source_series_id: str = ""
    # False when the files had no ImageOrientationPatient/ImagePositionPatient: the geometry is then a
    # placeholder (identity orientation, slices in InstanceNumber order) and must not be used to project points.
    geometry_known: bool = True
    # The pixels as stored in the files (integers and the per-slice float transform), kept when the reader is
    # asked for them (the prepare cache writes these, a fraction of float32's size); None otherwise.
    stored: StoredPixels | None = None
    # (low, high) intensity of the series (`inputs.series_intensity_range`), once computed or read from the cache.
    intensity: tuple[float, float] | None = None

    @property
    def n_slices(self) -> int:
        return self.geometry.n_slices

    @property
    def shape(self) -> tuple[int, int]:
        return self.geometry.shape

    @property
    def pixel_spacing(self) -> tuple[float, float]:
        return self.geometry.pixel_spacing

    @property
    def orientation(self) -> np.ndarray:
        return self.geometry.orientation

    @property
    def positions(self) -> np.ndarray:
        return self.geometry.positions

    def slice_of_instance(self, instance_number: int) -> int:
        """Index (in slice order) of the slice with this InstanceNumber; KeyError if absent."""
        hits = np.nonzero(self.instance_numbers == int(instance_number))[0]
        if hits.size == 0:
            raise KeyError(f"series {self.series_id} has no instance {instance_number}")
        return int(hits[0])


@dataclass(frozen=True)
class LocatedPoint:
    """A labelled point found in a study: the series part and slice holding it, its pixel position."""

    series: Series
    slice_index: int
    x: float
    y: float

    @property
    def patient(self) -> np.ndarray:
        """Patient coordinates (LPS, mm) of the point."""
        return self.series.geometry.pixel_to_patient(self.slice_index, self.x, self.y)


@dataclass
class Study:
    """A study folder: its series (possibly several per role) and what could not be read."""

    study_id: str
    path: str
    series: list[Series]
    skipped: list[SkippedFile] = field(default_factory=list)  # files outside any usable series

    def by_role(self, role: str) -> list[Series]:
        return [s for s in self.series if s.role == role]

    def first(self, role: str) -> Series | None:
        """The series for a role (the one with most slices when there are several), or None."""
        cands = self.by_role(role)
        return max(cands, key=lambda s: s.n_slices) if cands else None

    def parts(self, series_id) -> list[Series]:
        """The series read from one source series id (several when the reader split a folder)."""
        sid = str(series_id)
        return [s for s in self.series if s.series_id == sid or (s.source_series_id or s.series_id) == sid]

    def locate(self, series_id, instance_number: int) -> tuple[Series, int]:
        """The series part and slice index holding an instance of a source series (labels use those ids)."""
        for s in self.parts(series_id):
            if int(instance_number) in s.instance_numbers:
                return s, s.slice_of_instance(int(instance_number))
        raise KeyError(f"study {self.study_id}: no instance {instance_number} in series {series_id}")

    def locate_point(self, series_id, instance_number: int, x: float, y: float) -> LocatedPoint | None:
        """Where a labelled point (source series id, instance number, pixel x, y) lies in this study: its series
        part, slice and patient coordinates; None when the study does not hold that instance."""
        try:
            s, k = self.locate(series_id, instance_number)
        except KeyError:
            return None
        return LocatedPoint(s, int(k), float(x), float(y))

    def locate_row(self, row) -> LocatedPoint | None:
        """`locate_point` for a coordinate-table row (attributes series_id, instance_number, x, y)."""
        return self.locate_point(row.series_id, int(row.instance_number), row.x, row.y)

    def get(self, series_id: str) -> Series:
        for s in self.series:
            if s.series_id == str(series_id):
                return s
        raise KeyError(f"study {self.study_id} has no series {series_id}")
