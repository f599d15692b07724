"""Training-time augmentation of a slice: shift, zoom, rotation, intensity, and a label-safe mirror.

Mirroring an image left-right means different things per view. On a sagittal slice it swaps anterior and
posterior; the patient's sides do not change (a para-sagittal slice through the left foramen still shows
the left foramen). On an axial slice it swaps the patient's left and right, so a left-sided condition
becomes a right-sided one: `mirror` returns the condition the mirrored image shows (vocab.mirror_condition).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .. import vocab
from .config import AugmentConfig

_SIDES_SWAP_ON_MIRROR = {vocab.SAGITTAL_T1: False, vocab.SAGITTAL_T2: False, vocab.AXIAL_T2: True}


def mirror_swaps_sides(view: str) -> bool:
    """Whether a left-right image mirror of a slice of this series role swaps the patient's sides."""
    try:
        return _SIDES_SWAP_ON_MIRROR[view]
    except KeyError:
        raise ValueError(f"no mirror rule for series role {view!r}") from None


def mirror(image: torch.Tensor, condition: str, view: str) -> tuple[torch.Tensor, str]:
    """Mirror (..., H, W) left-right; returns it with the condition it now shows."""
    return image.flip(-1), vocab.mirror_condition(condition) if mirror_swaps_sides(view) else condition


def _affine(image: torch.Tensor, shift: tuple[float, float], scale: float, angle: float) -> torch.Tensor:
    """Rotate by `angle` rad, zoom by `scale` and shift by `shift` (fractions of the size) in one resample."""
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    # affine_grid maps output to input coordinates in [-1, 1]: the inverse transform, hence 1/scale
    # and a shift of -2*fraction.
    theta = torch.tensor([[cos, -sin, -2 * shift[0]], [sin, cos, -2 * shift[1]]], dtype=image.dtype)[None]
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    return F.grid_sample(image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]


def augment_slice(image: torch.Tensor, condition: str, view: str, rng: np.random.Generator,
                  cfg: AugmentConfig) -> tuple[torch.Tensor, str]:
    """One random augmentation of a (C, H, W) image scaled to [0, 1]; returns it and the condition it shows."""
    if not cfg.enabled:
        return image, condition
    u = rng.uniform(-1, 1, size=7)
    image = _affine(image, (cfg.shift * u[0], cfg.shift * u[1]), 1 + cfg.zoom * u[2], math.radians(cfg.rotate * u[3]))
    gamma = math.exp(cfg.intensity * u[4])
    image = image.clamp(0, 1) ** gamma * (1 + cfg.intensity * u[5]) + cfg.intensity * u[6]
    if cfg.hflip and rng.random() < 0.5:
        image, condition = mirror(image, condition, view)
    return image, condition
