"""Pixel <-> patient coordinates for a stack of parallel slices, and projecting a point into another series.

Conventions (DICOM): x is the column index, y the row index, both in pixels (sub-pixel allowed, pixel centres
at integers). ImageOrientationPatient = (row_dir, col_dir): row_dir is the patient direction in which the
column index grows, col_dir the one in which the row index grows. PixelSpacing = (spacing between rows,
spacing between columns) in mm. The slice normal is row_dir x col_dir; slices are kept sorted along it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SeriesGeometry:
    """Geometry of a stack of parallel slices in the patient coordinate system (LPS, mm)."""

    orientation: np.ndarray  # (6,) row_dir then col_dir, unit vectors
    positions: np.ndarray  # (n, 3) ImagePositionPatient of each slice, sorted along the normal
    pixel_spacing: tuple[float, float]  # (row spacing, column spacing) in mm
    shape: tuple[int, int]  # (rows, cols)
    _normal: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.orientation = np.asarray(self.orientation, dtype=np.float64).reshape(6)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.pixel_spacing = (float(self.pixel_spacing[0]), float(self.pixel_spacing[1]))
        self.shape = (int(self.shape[0]), int(self.shape[1]))
        n = np.cross(self.row_dir, self.col_dir)
        norm = np.linalg.norm(n)
        if norm < 1e-6:
            raise ValueError("ImageOrientationPatient row and column directions are parallel")
        self._normal = n / norm

    # --- directions ------------------------------------------------------------------------------------
    @property
    def row_dir(self) -> np.ndarray:
        return self.orientation[:3]

    @property
    def col_dir(self) -> np.ndarray:
        return self.orientation[3:]

    @property
    def normal(self) -> np.ndarray:
        return self._normal

    @property
    def n_slices(self) -> int:
        return int(self.positions.shape[0])

    @property
    def slice_offsets(self) -> np.ndarray:
        """Signed position of each slice along the normal (mm)."""
        return self.positions @ self.normal

    @property
    def slice_spacing(self) -> float:
        """Median distance between neighbouring slices (mm); 0 for a single slice."""
        off = self.slice_offsets
        return float(np.median(np.abs(np.diff(off)))) if off.size > 1 else 0.0

    @property
    def plane(self) -> str:
        """'sagittal', 'coronal' or 'axial': the patient axis the slice normal is closest to."""
        return plane_of(self.orientation)

    # --- transforms ------------------------------------------------------------------------------------
    def pixel_to_patient(self, slice_index: int | float, x, y) -> np.ndarray:
        """Patient coordinates (mm) of pixel (x=column, y=row) on a slice; arrays broadcast, result (..., 3)."""
        k = int(round(float(slice_index)))
        if not 0 <= k < self.n_slices:
            raise IndexError(f"slice index {slice_index} outside 0..{self.n_slices - 1}")
        x = np.asarray(x, dtype=np.float64)[..., None]
        y = np.asarray(y, dtype=np.float64)[..., None]
        rs, cs = self.pixel_spacing
        return self.positions[k] + x * cs * self.row_dir + y * rs * self.col_dir

    def affine(self, slice_index: int) -> np.ndarray:
        """4x4 matrix mapping (x, y, 0, 1) on a slice to patient (X, Y, Z, 1)."""
        rs, cs = self.pixel_spacing
        m = np.eye(4)
        m[:3, 0] = self.row_dir * cs
        m[:3, 1] = self.col_dir * rs
        m[:3, 2] = self.normal
        m[:3, 3] = self.positions[int(slice_index)]
        return m

    def distance_to_slices(self, point) -> np.ndarray:
        """Signed distance (mm) of a patient point from each slice plane."""
        p = np.asarray(point, dtype=np.float64).reshape(3)
        return (p - self.positions) @ self.normal

    def nearest_slice(self, point) -> tuple[int, float]:
        """Index of the slice whose plane is nearest the point, and the distance (mm) to it."""
        d = self.distance_to_slices(point)
        k = int(np.argmin(np.abs(d)))
        return k, float(abs(d[k]))

    def fractional_slice(self, point) -> float:
        """Slice index as a real number (linear between neighbouring planes), for sub-slice precision."""
        off = self.slice_offsets
        t = float(np.asarray(point, dtype=np.float64).reshape(3) @ self.normal)
        if off.size == 1:
            return 0.0
        return float(np.interp(t, off, np.arange(off.size), left=np.nan, right=np.nan))

    def patient_to_pixel(self, point, slice_index: int | None = None) -> tuple[int, float, float, float]:
        """Project a patient point onto a slice (the nearest one unless given).

        Returns (slice_index, x, y, distance_mm), where distance is how far the point lies off that plane.
        """
        p = np.asarray(point, dtype=np.float64).reshape(3)
        if slice_index is None:
            slice_index, dist = self.nearest_slice(p)
        else:
            dist = float(abs(self.distance_to_slices(p)[int(slice_index)]))
        v = p - self.positions[int(slice_index)]
        rs, cs = self.pixel_spacing
        return int(slice_index), float(v @ self.row_dir / cs), float(v @ self.col_dir / rs), dist

    def contains_pixel(self, x: float, y: float, margin: float = 0.0) -> bool:
        rows, cols = self.shape
        return -margin <= x <= cols - 1 + margin and -margin <= y <= rows - 1 + margin

    # --- (de)serialisation -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "orientation": [float(v) for v in self.orientation],
            "positions": [[float(v) for v in p] for p in self.positions],
            "pixel_spacing": list(self.pixel_spacing),
            "shape": list(self.shape),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "SeriesGeometry":
        return cls(np.asarray(d["orientation"]), np.asarray(d["positions"]), tuple(d["pixel_spacing"]),
                   tuple(d["shape"]))


def plane_of(orientation) -> str:
    """Name the acquisition plane from ImageOrientationPatient via its slice normal."""
    o = np.asarray(orientation, dtype=np.float64).reshape(6)
    n = np.abs(np.cross(o[:3], o[3:]))
    return ("sagittal", "coronal", "axial")[int(np.argmax(n))]


def project_point(src: SeriesGeometry, slice_index: int, x: float, y: float,
                  dst: SeriesGeometry) -> tuple[int, float, float, float]:
    """Map pixel (x, y) on a slice of one series to the nearest slice of another: (slice, x, y, distance mm)."""
    return dst.patient_to_pixel(src.pixel_to_patient(slice_index, x, y))


def nearest_slice_among(point, geometries: list[SeriesGeometry]) -> tuple[int, int, float, float, float] | None:
    """Among several stacks (e.g. the per-level parts of an axial series), the slice nearest a patient point
    whose image holds the point: (stack index, slice, x, y, distance mm), or None if no image holds it."""
    best = None
    for i, g in enumerate(geometries):
        k, x, y, dist = g.patient_to_pixel(point)
        if g.contains_pixel(x, y) and (best is None or dist < best[4]):
            best = (i, k, x, y, dist)
    return best
