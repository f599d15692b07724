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
    pixels: np.ndarray | None  # (n, rows, cols) float32, or None when read without pixels
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
