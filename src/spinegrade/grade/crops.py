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
    # u along columns (x), v along rows (y): the meshgrid of t, as a row and a column that broadcast to it (every
    # value below is the one the full grids give; unrotated, the sampling positions are worked out once per row
    # and once per column)
    u, v = t[None, :], t[:, None]
    if mirror:
        u = -u
    if rotation_deg:
        a = np.deg2rad(rotation_deg)
        u, v = u * np.cos(a) - v * np.sin(a), u * np.sin(a) + v * np.cos(a)
    cols = x + u / cs
    rows = y + v / rs
    k0 = int(round(float(slice_index)))
    ks = [min(max(k0 + (i - spec.n_slices // 2) * spec.slice_step, 0), n - 1) for i in range(spec.n_slices)]
    grid = _Grid(pixels.shape[1:], rows, cols)
    # only the window the samples touch is read and converted (of a memory-mapped cache: only its pages)
    out = grid.sample(np.asarray(pixels[(ks, *grid.window)], dtype=np.float32), cval=lo)
    return ((out - lo) / (hi - lo)).astype(np.float32)


class _Grid:
    """Where bilinear sampling at fractional (row, col) positions reads a plane of `shape`, worked out once and
    applied to any number of planes of that shape. `window` (two slices) is the part of a plane the samples
    touch; `sample` takes that part of one plane or of a stack of them. `rows` and `cols` may be any two arrays
    that broadcast together (a column and a row: each worked out once), the samples taking their broadcast
    shape."""

    def __init__(self, shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray):
        n, m = shape
        r, c = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
        self.inside = (r >= 0) & (r <= n - 1) & (c >= 0) & (c <= m - 1)
        # (np.minimum/np.maximum: np.clip's values, without its Python wrapper's cost on small arrays)
        r0 = np.minimum(np.maximum(np.floor(r), 0), max(n - 2, 0)).astype(np.intp)
        c0 = np.minimum(np.maximum(np.floor(c), 0), max(m - 2, 0)).astype(np.intp)
        fr = np.minimum(np.maximum(r - r0, 0.0), 1.0)
        fc = np.minimum(np.maximum(c - c0, 0.0), 1.0)
        self.fr, self.fc, self.gr, self.gc = fr, fc, 1 - fr, 1 - fc
        if r0.size and c0.size:
            top, left = int(r0.min()), int(c0.min())
            bottom, right = min(int(r0.max()) + 1, n - 1) + 1, min(int(c0.max()) + 1, m - 1) + 1
        else:
            top = left = bottom = right = 0
        self.window = (slice(top, bottom), slice(left, right))
        w = right - left  # flat positions in the window of each corner (row r0 or r1, column c0 or c1)
        r0w, c0w = (r0 - top) * w, c0 - left
        r1w, c1w = r0w + (w if n > 1 else 0), c0w + (1 if m > 1 else 0)
        self.corners = [a + b for a, b in ((r0w, c0w), (r0w, c1w), (r1w, c0w), (r1w, c1w))]  # (broadcast)

    def sample(self, part: np.ndarray, cval: float = 0.0) -> np.ndarray:
        """Samples of `part` (the window of one plane, or (planes, *window)), in its dtype."""
        lead = part.shape[:-2]
        p = part.astype(np.float64, copy=False).reshape(*lead, -1)
        p00, p01, p10, p11 = (p.take(i, axis=-1) for i in self.corners)
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
