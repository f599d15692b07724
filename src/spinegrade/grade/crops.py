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
    offs = (np.arange(spec.n_slices) - spec.n_slices // 2) * spec.slice_step
    out = np.zeros((spec.n_slices, spec.out_px, spec.out_px), dtype=np.float32)
    for i, o in enumerate(offs):
        k = int(np.clip(k0 + o, 0, n - 1))
        out[i] = bilinear(np.asarray(pixels[k], dtype=np.float32), rows, cols, cval=lo)
    return ((out - lo) / (hi - lo)).astype(np.float32)


def bilinear(plane: np.ndarray, rows: np.ndarray, cols: np.ndarray, cval: float = 0.0) -> np.ndarray:
    """Sample a 2D plane at fractional (row, col) positions by linear interpolation; positions outside the
    pixel centres' extent read `cval`. The values of `scipy.ndimage.map_coordinates(plane, [rows, cols],
    order=1, mode="constant", cval=cval)` (tested), without importing scipy in the prediction path."""
    n, m = plane.shape
    r, c = np.asarray(rows, dtype=np.float64), np.asarray(cols, dtype=np.float64)
    inside = (r >= 0) & (r <= n - 1) & (c >= 0) & (c <= m - 1)
    r0 = np.clip(np.floor(r), 0, max(n - 2, 0)).astype(np.intp)
    c0 = np.clip(np.floor(c), 0, max(m - 2, 0)).astype(np.intp)
    r1, c1 = np.minimum(r0 + 1, n - 1), np.minimum(c0 + 1, m - 1)
    fr, fc = np.clip(r - r0, 0.0, 1.0), np.clip(c - c0, 0.0, 1.0)
    p = plane.astype(np.float64, copy=False)
    top = p[r0, c0] * (1 - fc) + p[r0, c1] * fc
    bottom = p[r1, c0] * (1 - fc) + p[r1, c1] * fc
    return np.where(inside, top * (1 - fr) + bottom * fr, float(cval)).astype(plane.dtype, copy=False)


def mirror_for(condition: str, role: str) -> bool:
    """Whether the crop of a condition on a series of this role is mirrored so right looks like left.

    Only axial images show both sides in one plane; a left-right flip there swaps the patient's sides.
    On sagittal slices left and right foramina lie on different slices and need no mirroring.
    """
    c = vocab.CONDITION_BY_KEY[condition]
    return role == vocab.AXIAL_T2 and c.side == "right"
