"""Resampling a stored slice through an affine map: the letterbox view and crops around a foramen.

An affine (A, t) maps an output pixel position p (continuous, x right, y down) to the stored-image position
A @ p + t. Crops are specified in original pixels (isotropic) and composed with the stretch of the stored
image, so a crop of a stretched JPEG and of the DICOM it came from show the same anatomy.

Training resamples with torch (`warp`, `zscore`); inference with their numpy twins (`warp_numpy`,
`zscore_numpy`), which compute what `F.grid_sample(align_corners=False, padding_mode="zeros")` and torch's
unbiased std compute, in float32, so an install without torch sees the same inputs (tested against torch).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from .data import Frame

if TYPE_CHECKING:
    import torch


def letterbox_affine(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Letterbox pixel -> stored pixel."""
    d = np.array([frame.stored[1] / frame.cols, frame.stored[0] / frame.rows])
    ox, oy = frame.offset
    a = np.diag(d / frame.scale)
    return a, -a @ np.array([ox, oy])


def crop_affine(frame: Frame, centre_orig, side_orig: float, out: int, angle_deg: float = 0.0,
                zoom: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Crop pixel -> stored pixel for a square crop of `side_orig` original pixels (divided by `zoom`) around
    `centre_orig`, rotated by `angle_deg`, sampled on `out x out` pixels."""
    d = np.diag([frame.stored[1] / frame.cols, frame.stored[0] / frame.rows])
    step = side_orig / out / zoom
    th = math.radians(angle_deg)
    r = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    a = d @ r * step
    t = d @ np.asarray(centre_orig, dtype=np.float64) - a @ np.array([out / 2, out / 2])
    return a, t


def _grids(shape: tuple[int, int], affines: list[tuple[np.ndarray, np.ndarray]], out: int) -> np.ndarray:
    """(N, out, out, 2) float32 sampling grids in grid_sample's [-1, 1] convention, one per affine."""
    h, w = shape
    g = np.arange(out, dtype=np.float64) + 0.5
    px, py = np.meshgrid(g, g)  # (out, out) output pixel centres
    a = np.array([np.asarray(m, dtype=np.float64) for m, _ in affines]).reshape(-1, 2, 2, 1, 1)
    t = np.array([np.asarray(v, dtype=np.float64) for _, v in affines]).reshape(-1, 2, 1, 1)
    grid = np.empty((len(a), out, out, 2), np.float32)  # float64 arithmetic, rounded to float32 once
    grid[..., 0] = (a[:, 0, 0] * px + a[:, 0, 1] * py + t[:, 0]) / w * 2 - 1
    grid[..., 1] = (a[:, 1, 0] * px + a[:, 1, 1] * py + t[:, 1]) / h * 2 - 1
    return grid


def warp(image: torch.Tensor, affines: list[tuple[np.ndarray, np.ndarray]], out: int) -> torch.Tensor:
    """Sample `image` (H, W) float through each affine: (N, 1, out, out), zero outside the image."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    grid = torch.from_numpy(_grids((h, w), affines, out))
    src = image.reshape(1, 1, h, w).expand(len(affines), 1, h, w).float()
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def warp_numpy(image: np.ndarray, affines: list[tuple[np.ndarray, np.ndarray]], out: int) -> np.ndarray:
    """`warp` in numpy: (N, 1, out, out) float32, the same arithmetic in float32 as torch's CPU kernel."""
    img = np.asarray(image, dtype=np.float32)
    h, w = img.shape[-2:]
    img = img.reshape(h, w)
    grid = _grids((h, w), affines, out)
    one = np.float32(1)
    # grid_sample's unnormalisation (align_corners=False): (g + 1) * size / 2 - 0.5, its last two steps one fused
    # multiply-add as torch's vectorised kernel does (rounded once: float64, then float32)
    gp = (grid + one).astype(np.float64)
    x = (gp[..., 0] * np.float32(w / 2) - 0.5).astype(np.float32)
    y = (gp[..., 1] * np.float32(h / 2) - 0.5).astype(np.float32)
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = x - x0, y - y0
    gx, gy = one - fx, one - fy
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)

    # the four neighbours' values from the image framed by one pixel of zeros: an index clipped onto that frame
    # reads 0, as grid_sample reads outside the image
    pad = np.zeros((h + 2, w + 2), np.float32)
    pad[1:-1, 1:-1] = img
    flat = pad.ravel()
    c0, c1 = np.clip(x0 + 1, 0, w + 1), np.clip(x0 + 2, 0, w + 1)
    r0, r1 = np.clip(y0 + 1, 0, h + 1) * (w + 2), np.clip(y0 + 2, 0, h + 1) * (w + 2)
    res = flat[r0 + c0] * (gy * gx) + flat[r0 + c1] * (gy * fx) + flat[r1 + c0] * (fy * gx) \
        + flat[r1 + c1] * (fy * fx)
    return res.astype(np.float32)[:, None]


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Per-sample z-score over the last two dimensions."""
    m = x.mean(dim=(-2, -1), keepdim=True)
    s = x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    return (x - m) / s


def zscore_numpy(x: np.ndarray) -> np.ndarray:
    """`zscore` in numpy (torch's unbiased std), float32."""
    x64 = np.asarray(x, dtype=np.float64)
    m = x64.mean(axis=(-2, -1), keepdims=True)
    s = np.maximum(x64.std(axis=(-2, -1), keepdims=True, ddof=1), 1e-6)
    return ((x64 - m) / s).astype(np.float32)
