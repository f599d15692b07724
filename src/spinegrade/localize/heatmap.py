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


def decode_heatmaps(hm: np.ndarray) -> np.ndarray:
    """(K, 3) rows of (x, y, peak) from (K, H, W) heatmaps: the arg-max refined to sub-pixel precision by a
    parabola through the log-heights of its neighbours (exact for Gaussian blobs)."""
    hm = np.asarray(hm, dtype=np.float64)
    out = np.zeros((hm.shape[0], 3))
    for i in range(hm.shape[0]):
        py, px = divmod(int(np.argmax(hm[i])), hm.shape[2])
        out[i] = refine_peak(hm[i], px, py)
    return out
