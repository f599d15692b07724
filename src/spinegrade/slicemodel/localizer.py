"""Stage 1 on a slice: one heatmap per landmark channel (a task's: the foramen of each level; a disc centre and
a canal point per level).

A real slice is labelled only at the landmarks annotated on it; the others may well be visible but are
unlabelled, not absent. So only the labelled channels of a slice give a loss (masked supervision), and a
channel's peak is read only where it is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import vocab
from ..localize.heatmap import decode_heatmaps, gaussian_heatmaps
from .data import PX250, PointSlices, SpecDict, normalise_intensity
from .warp import letterbox_affine, warp, zscore

N_LEVELS = len(vocab.LEVELS)  # the foramen task's channels
OUT_STRIDE = 2  # the heatmap network's output is half its input size


@dataclass(frozen=True)
class LocalizerSpec(SpecDict):
    """What the localiser sees and learns: written into its checkpoint and read back at inference."""

    network: str = "keypoint-half"
    network_kwargs: tuple = ()  # (name, value) pairs for the heatmap network factory
    input_size: int = 96  # letterbox side, pixels
    sigma: float = 1.5  # target blob, heatmap pixels
    pos_weight: float = 20.0
    # training-time augmentation: shift (fraction of the side), zoom, rotation (degrees), gamma jitter
    shift: float = 0.06
    zoom: float = 0.12
    rotate: float = 8.0
    gamma: float = 0.25
    # inference: the letterbox zoomed about its centre by each factor, the views' points' median (empty: one view)
    tta_zooms: tuple = ()
    # inference: each channel's second-highest peak (at least `second_peak_gap` heatmap pixels from the first) is
    # graded too, its grade mixed in with weight h2^p / (h1^p + h2^p) for the peaks' heights h (p = 0: not used)
    second_peak_power: float = 0.0
    second_peak_gap: int = 3

    def __post_init__(self):
        object.__setattr__(self, "tta_zooms", tuple(float(z) for z in self.tta_zooms))  # a JSON list reads back

    @property
    def heatmap_size(self) -> int:
        return self.input_size // OUT_STRIDE



def _augment_affine(a: np.ndarray, t: np.ndarray, size: int, rng: np.random.Generator, spec: LocalizerSpec):
    """Compose a random similarity about the letterbox centre (output -> letterbox) with the letterbox map."""
    th = np.deg2rad(rng.uniform(-spec.rotate, spec.rotate))
    z = rng.uniform(1 - spec.zoom, 1 + spec.zoom)
    sh = rng.uniform(-spec.shift, spec.shift, size=2) * size
    r = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]]) / z
    c = np.array([size / 2, size / 2])
    # output p -> letterbox q = r @ (p - c) + c + sh
    m_a, m_t = r, c + sh - r @ c
    return a @ m_a, a @ m_t + t, (m_a, m_t)


class LocalizerDataset:
    """Items {image (1, S, S), target (C, S/2, S/2), mask (C,), points (C, 2) letterbox px, NaN unlabelled}."""

    def __init__(self, ps: PointSlices, images: dict[str, np.ndarray], spec: LocalizerSpec, augment: bool,
                 seed: int = 0, n_channels: int = N_LEVELS):
        self.ps, self.images, self.spec, self.augment, self.seed = ps, images, spec, augment, seed
        self.n_channels = n_channels
        self.epoch = 0
        self.paths = list(ps.slices["path"])
        self.points = ps.landmark_lists(vocab.LEVELS.index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        spec, s = self.spec, self.spec.input_size
        img = self.images[self.paths[i]]
        frame = self.ps.frame(self.paths[i], s, img.shape)
        a, t = letterbox_affine(frame)
        m_a, m_t = np.eye(2), np.zeros(2)
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if self.augment:
            a, t, (m_a, m_t) = _augment_affine(a, t, s, rng, spec)
        import torch

        x = warp(torch.from_numpy(normalise_intensity(img)), [(a, t)], s)[0]
        if self.augment and spec.gamma:
            x = x.clamp_min(0) ** float(np.exp(rng.uniform(-spec.gamma, spec.gamma)))
        inv = np.linalg.inv(m_a)
        placed = []
        for lv, x0, y0 in self.points[i]:
            bx, by = frame.original_to_box(*frame.stored_to_original(x0, y0))
            placed.append((lv, inv @ (np.array([bx, by]) - m_t)))  # letterbox -> augmented output position
        targets, mask, pts = blob_targets(placed, self.n_channels, spec.heatmap_size, spec.sigma)
        return {"image": zscore(x).float(), "target": torch.from_numpy(targets), "mask": torch.from_numpy(mask),
                "points": torch.from_numpy(pts), "scale250": torch.tensor(PX250 / s, dtype=torch.float32)}


def blob_targets(placed, n: int, size: int, sigma: float, inside: float | None = None):
    """Heatmap targets (n, size, size), mask (n,) and scored points (n, 2) of labelled landmarks `placed` as
    (channel, network-input pixel position): a Gaussian blob each (both sides of one level on a slice: two).
    With `inside` (the input's side), a landmark outside the input stays labelled (masked in, no blob: nothing of
    it here) but is not scored (NaN point)."""
    pts = np.full((n, 2), np.nan, dtype=np.float32)
    mask = np.zeros(n, dtype=np.float32)
    targets = np.zeros((n, size, size), dtype=np.float32)
    for c, p in placed:
        mask[c] = 1
        if inside is not None and not np.all((p >= 0) & (p < inside)):
            continue
        pts[c] = p
        blob = np.array([[p[0] / OUT_STRIDE - 0.5, p[1] / OUT_STRIDE - 0.5, 1.0]])  # heatmap pixel i is centred at i
        targets[c] = np.maximum(targets[c], gaussian_heatmaps(blob, size, sigma)[0])
    return targets, mask, pts


def heatmap_to_box(xy_heatmap: np.ndarray) -> np.ndarray:
    """Heatmap pixel indices (centre of pixel i at i) -> letterbox continuous position."""
    return (np.asarray(xy_heatmap, dtype=np.float64) + 0.5) * OUT_STRIDE


@dataclass
class MaskedHeatmapTask:
    """Engine task: logistic loss on the labelled level channels only; validation error in 250-px units."""

    pos_weight: float = 20.0
    score_key: str = "val_err_mean_px"

    def forward(self, model, batch):
        return model(batch["image"])

    def loss(self, outputs, batch):
        t, m = batch["target"], batch["mask"]
        import torch.nn.functional as F

        per_px = F.binary_cross_entropy_with_logits(outputs.float(), t, reduction="none") * (1 + self.pos_weight * t)
        per_ch = per_px.mean(dim=(2, 3)) * m
        return per_ch.sum() / m.sum().clamp_min(1)

    def targets(self, batch):
        import torch

        return torch.cat([batch["points"].flatten(1), batch["scale250"][:, None]], dim=1)

    def score(self, outputs, targets):
        import torch

        errs = localisation_errors(torch.sigmoid(outputs).numpy(), targets.numpy())
        if not errs.size:
            return {"val_err_mean_px": float("nan"), "val_err_median_px": float("nan")}
        # The mean (not the median) picks the epoch: points on the wrong level are what hurts downstream.
        return {"val_err_mean_px": float(errs.mean()), "val_err_median_px": float(np.median(errs)),
                "val_within5": float((errs <= 5).mean())}


def localisation_errors(heatmaps: np.ndarray, packed: np.ndarray) -> np.ndarray:
    """Errors (px of a 250-px letterbox) of every labelled point of a batch of heatmaps."""
    n, c = heatmaps.shape[:2]
    pts = packed[:, : c * 2].reshape(n, c, 2)
    scale = packed[:, c * 2]
    errs = []
    for i in range(n):
        dec = heatmap_to_box(decode_heatmaps(heatmaps[i])[:, :2])
        ok = np.isfinite(pts[i, :, 0])
        errs.extend(np.hypot(*(dec[ok] - pts[i, ok]).T) * scale[i])
    return np.asarray(errs, dtype=np.float64)
