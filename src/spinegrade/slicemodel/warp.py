"""Resampling a stored slice through an affine map: the letterbox view and crops around a foramen.

An affine (A, t) maps an output pixel position p (continuous, x right, y down) to the stored-image position
A @ p + t. Crops are specified in original pixels (isotropic) and composed with the stretch of the stored
image, so a crop of a stretched JPEG and of the DICOM it came from show the same anatomy.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .data import Frame


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


def warp(image: torch.Tensor, affines: list[tuple[np.ndarray, np.ndarray]], out: int) -> torch.Tensor:
    """Sample `image` (H, W) float through each affine: (N, 1, out, out), zero outside the image."""
    h, w = image.shape[-2:]
    g = np.arange(out, dtype=np.float64) + 0.5
    px, py = np.meshgrid(g, g)  # (out, out) output pixel centres
    grids = []
    for a, t in affines:
        sx = a[0, 0] * px + a[0, 1] * py + t[0]
        sy = a[1, 0] * px + a[1, 1] * py + t[1]
        grids.append(np.stack([sx / w * 2 - 1, sy / h * 2 - 1], axis=-1))
    grid = torch.from_numpy(np.stack(grids).astype(np.float32))
    src = image.reshape(1, 1, h, w).expand(len(affines), 1, h, w).float()
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Per-sample z-score over the last two dimensions."""
    m = x.mean(dim=(-2, -1), keepdim=True)
    s = x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-6)
    return (x - m) / s
