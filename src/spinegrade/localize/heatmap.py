"""Heatmap targets and their decoding: the localiser predicts one Gaussian blob per landmark channel.

Numpy only. A landmark is (x, y, amplitude) in heatmap pixels; amplitude < 1 marks a landmark that lies
on a neighbouring slice, so the peak height also tells which slice holds it.
"""

from __future__ import annotations

import numpy as np


def gaussian_heatmaps(points: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """(K, size, size) float32 from K rows of (x, y, amplitude); rows with NaN give an empty channel."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    g = np.arange(size, dtype=np.float64)
    out = np.zeros((pts.shape[0], size, size), dtype=np.float32)
    for k, (x, y, a) in enumerate(pts):
        if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(a)) or a <= 0:
            continue
        gx = np.exp(-((g - x) ** 2) / (2 * sigma**2))
        gy = np.exp(-((g - y) ** 2) / (2 * sigma**2))
        out[k] = (a * gy[:, None] * gx[None, :]).astype(np.float32)
    return out


def _parabola_offset(lm: float, l0: float, lp: float) -> float:
    """Sub-pixel offset of a peak from three log-values; exact for a Gaussian."""
    den = lm - 2 * l0 + lp
    return 0.0 if den >= 0 else float(np.clip(0.5 * (lm - lp) / den, -0.5, 0.5))


def refine_peak(hm: np.ndarray, px: int, py: int) -> tuple[float, float, float]:
    """(x, y, height) of the peak at pixel (px, py) of one heatmap, to sub-pixel precision."""
    h, w = hm.shape
    peak = float(hm[py, px])
    x, y = float(px), float(py)
    if peak > 0:
        lg = np.log(np.clip(hm, peak * 1e-6, None))
        if 0 < px < w - 1:
            x += _parabola_offset(lg[py, px - 1], lg[py, px], lg[py, px + 1])
        if 0 < py < h - 1:
            y += _parabola_offset(lg[py - 1, px], lg[py, px], lg[py + 1, px])
    return x, y, peak


def disc_sums(hm: np.ndarray, radius: float) -> np.ndarray:
    """(H, W): each pixel's sum of one heatmap over the disc of `radius` pixels around it (nothing outside the map)."""
    hm = np.asarray(hm, dtype=np.float64)
    r, (h, w) = int(np.floor(radius)), hm.shape
    pad = np.pad(hm, r)
    out = np.zeros((h, w))
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dx * dx + dy * dy <= radius * radius:
                out += pad[r + dy:r + dy + h, r + dx:r + dx + w]
    return out


def decode_heatmaps(hm: np.ndarray, radius: float = 0.0) -> np.ndarray:
    """(K, 3) rows of (x, y, peak) from (K, H, W) heatmaps: the arg-max refined to sub-pixel precision by a
    parabola through the log-heights of its neighbours (exact for Gaussian blobs).

    With `radius` > 0 (heatmap pixels) the point is instead where a disc of that radius holds the most heatmap
    (the same parabola on those sums): where the landmark most likely lies within that distance. On a symmetric
    blob that is its peak; where the map trails off to one side (readers who click a little lower than most), it
    moves toward that side. `peak` stays the heatmap's height at the point's pixel."""
    hm = np.asarray(hm, dtype=np.float64)
    out = np.zeros((hm.shape[0], 3))
    for i in range(hm.shape[0]):
        m = disc_sums(hm[i], radius) if radius > 0 else hm[i]
        py, px = divmod(int(np.argmax(m)), hm.shape[2])
        out[i] = refine_peak(m, px, py)
        out[i, 2] = hm[i, py, px]
    return out
