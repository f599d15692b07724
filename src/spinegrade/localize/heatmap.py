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


def decode_heatmaps(hm: np.ndarray, window: int = 2) -> np.ndarray:
    """(K, 3) rows of (x, y, peak) from (K, H, W) heatmaps: the arg-max refined by the centroid of the
    (2*window+1)^2 neighbourhood, for sub-pixel precision."""
    hm = np.asarray(hm, dtype=np.float64)
    k, h, w = hm.shape
    out = np.zeros((k, 3))
    for i in range(k):
        idx = int(np.argmax(hm[i]))
        py, px = divmod(idx, w)
        y0, y1 = max(0, py - window), min(h, py + window + 1)
        x0, x1 = max(0, px - window), min(w, px + window + 1)
        patch = np.clip(hm[i, y0:y1, x0:x1], 0, None)
        s = patch.sum()
        if s > 0:
            yy, xx = np.mgrid[y0:y1, x0:x1]
            out[i] = ((patch * xx).sum() / s, (patch * yy).sum() / s, hm[i, py, px])
        else:
            out[i] = (px, py, hm[i, py, px])
    return out
