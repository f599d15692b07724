"""2.5D crops of fixed physical size around a point: the stage-2 graders' input.

A crop is `n_slices` adjacent slices centred on the point's slice, each resampled to `out_px` x `out_px`
pixels covering `size_mm` x `size_mm` of the slice plane around (x, y), so crops from series with
different pixel spacings look alike. Intensities are scaled by the series' own robust range.
Right-side crops are mirrored to look like left ones (see `mirror_for`), so one model serves both sides.
"""

from __future__ import annotations

import numpy as np

from .. import vocab
from ..inputs import series_intensity_range  # noqa: F401  (re-exported)
from .spec import DEFAULT_SPECS, CropSpec  # noqa: F401  (re-exported)


def extract_crop(pixels: np.ndarray, pixel_spacing: tuple[float, float], slice_index: float, x: float, y: float,
                 spec: CropSpec, mirror: bool = False, intensity: tuple[float, float] | None = None,
                 rotation_deg: float = 0.0, scale: float = 1.0) -> np.ndarray:
    """Crop (n_slices, out_px, out_px) float32 around (x, y) on a slice; out-of-image samples read 0.

    mirror flips the crop's columns (patient left <-> right on axial images). rotation/scale let training
    augment geometrically in the same resampling step.
    """
    n = pixels.shape[0]
    lo, hi = intensity if intensity is not None else series_intensity_range(pixels)
    rs, cs = float(pixel_spacing[0]), float(pixel_spacing[1])
    half = spec.size_mm * scale / 2.0
    t = (np.arange(spec.out_px) + 0.5) / spec.out_px * 2 * half - half  # mm offsets of sample centres
    u, v = np.meshgrid(t, t)  # u along columns (x), v along rows (y)
    if mirror:
        u = -u
    if rotation_deg:
        a = np.deg2rad(rotation_deg)
        u, v = u * np.cos(a) - v * np.sin(a), u * np.sin(a) + v * np.cos(a)
    cols = x + u / cs
    rows = y + v / rs
    k0 = int(round(float(slice_index)))
    ks = np.clip(k0 + (np.arange(spec.n_slices) - spec.n_slices // 2) * spec.slice_step, 0, n - 1)
    grid = _Grid(pixels.shape[1:], rows, cols)
    # only the window the samples touch is read and converted (of a memory-mapped cache: only its pages)
    out = grid.sample(np.asarray(pixels[(ks, *grid.window)], dtype=np.float32), cval=lo)
    return ((out - lo) / (hi - lo)).astype(np.float32)


class _Grid:
    """Where bilinear sampling at fractional (row, col) positions reads a plane of `shape`, worked out once and
    applied to any number of planes of that shape. `window` (two slices) is the part of a plane the samples
    touch; `sample` takes that part of one plane or of a stack of them."""

    def __init__(self, shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray):
        n, m = shape
        r, c = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
        self.inside = (r >= 0) & (r <= n - 1) & (c >= 0) & (c <= m - 1)
        r0 = np.clip(np.floor(r), 0, max(n - 2, 0)).astype(np.intp)
        c0 = np.clip(np.floor(c), 0, max(m - 2, 0)).astype(np.intp)
        r1, c1 = np.minimum(r0 + 1, n - 1), np.minimum(c0 + 1, m - 1)
        fr, fc = np.clip(r - r0, 0.0, 1.0), np.clip(c - c0, 0.0, 1.0)
        self.fr, self.fc, self.gr, self.gc = fr, fc, 1 - fr, 1 - fc
        top, left = (int(r0.min()), int(c0.min())) if r0.size else (0, 0)
        bottom, right = (int(r1.max()) + 1, int(c1.max()) + 1) if r0.size else (0, 0)
        self.window = (slice(top, bottom), slice(left, right))
        w = right - left  # flat positions in the window of each corner
        self.corners = [((a - top) * w + (b - left)) for a, b in ((r0, c0), (r0, c1), (r1, c0), (r1, c1))]

    def sample(self, part: np.ndarray, cval: float = 0.0) -> np.ndarray:
        """Samples of `part` (the window of one plane, or (planes, *window)), in its dtype."""
        lead = part.shape[:-2]
        p = part.astype(np.float64, copy=False).reshape(*lead, -1)
        p00, p01, p10, p11 = (np.take(p, i, axis=-1) for i in self.corners)
        top = p00 * self.gc + p01 * self.fc
        bottom = p10 * self.gc + p11 * self.fc
        return np.where(self.inside, top * self.gr + bottom * self.fr, float(cval)).astype(part.dtype, copy=False)


def bilinear(plane: np.ndarray, rows: np.ndarray, cols: np.ndarray, cval: float = 0.0) -> np.ndarray:
    """Sample a 2D plane at fractional (row, col) positions by linear interpolation; positions outside the
    pixel centres' extent read `cval`. The values of `scipy.ndimage.map_coordinates(plane, [rows, cols],
    order=1, mode="constant", cval=cval)` (tested), without importing scipy in the prediction path."""
    grid = _Grid(plane.shape, rows, cols)
    return grid.sample(plane[grid.window], cval)


def mirror_for(condition: str, role: str) -> bool:
    """Whether the crop of a condition on a series of this role is mirrored so right looks like left.

    Only axial images show both sides in one plane; a left-right flip there swaps the patient's sides.
    On sagittal slices left and right foramina lie on different slices and need no mirroring.
    """
    c = vocab.CONDITION_BY_KEY[condition]
    return role == vocab.AXIAL_T2 and c.side == "right"
