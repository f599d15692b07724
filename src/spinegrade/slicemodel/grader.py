"""Stage 2 on a slice: a crop of fixed anatomical size around a foramen, graded by a CNN told level and side.

A left and a right foramen are seen on different sagittal slices, not mirrored in one, so a crop is never
flipped to change side; the side reaches the network through the condition vector. Training crops sit on the
true point moved by a random offset of about the localiser's error, so the grader learns to read crops that
are a few pixels off, as it will be given at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..inputs import condition_vector
from .data import Frame, PointSlices, SpecDict, normalise_intensity
from .warp import crop_affine, warp, warp_numpy, zscore, zscore_numpy


@dataclass(frozen=True)
class GraderSpec(SpecDict):
    """What the grader sees and how it learns: written into its checkpoint and read back at inference."""

    network: str = "resnet10"
    network_kwargs: tuple = (("widen_factor", 0.5),)  # (name, value) pairs for the backbone factory
    crop_frac: float = 0.16  # crop side as a fraction of the slice's longer side (original pixels)
    crop_px: int = 64
    jitter: float = 0.012  # std of the training offset per axis, fraction of the longer side
    zoom: float = 0.10
    rotate: float = 10.0
    gamma: float = 0.25
    class_weights: str = "metric"  # metric (1, 2, 4) | none
    pretrained: bool = False
    label_smoothing: float = 0.0  # share of each training target spread evenly over the classes
    context_frac: float = 0.0  # > 0: a second channel, the same centre seen over this fraction (two scales)
    # > 0: a further channel, the same crop on the series' nearest other slice at most this many slices away
    # (several at that distance: graded with each, averaged; none: the slice itself)
    neighbour_slices: int = 0

    @property
    def input_key(self) -> tuple:
        """The fields that decide what the grader is given at inference (`crop_batch`): graders whose keys are
        equal read the same crops."""
        return self.crop_frac, self.crop_px, self.context_frac, self.neighbour_slices

    @property
    def in_channels(self) -> int:
        return 1 + bool(self.context_frac) + bool(self.neighbour_slices)

    def crop_side(self, frame: Frame) -> float:
        return self.crop_frac * max(frame.rows, frame.cols)

    def crop_sides(self, frame: Frame) -> list[float]:
        """The crop's side per input channel (original pixels): the crop, then the context where there is one."""
        return [self.crop_side(frame)] + ([self.context_frac * max(frame.rows, frame.cols)] if self.context_frac
                                          else [])


def crop_batch(img01: np.ndarray, frame: Frame, spec: GraderSpec, centres_orig, angles=None, zooms=None,
               neighbour01: np.ndarray | None = None) -> np.ndarray:
    """(N, spec.in_channels, crop_px, crop_px) z-scored crops of one normalised slice around original-pixel
    centres (each channel one scale, z-scored alone; with `spec.neighbour_slices`, last the first scale's crop on
    `neighbour01`, a normalised neighbouring slice of the same series, or on the slice itself where None)."""
    n = len(centres_orig)
    angles = np.zeros(n) if angles is None else angles
    zooms = np.ones(n) if zooms is None else zooms
    scales, first = [], None
    for side in spec.crop_sides(frame):
        affs = [crop_affine(frame, c, side, spec.crop_px, a, z) for c, a, z in zip(centres_orig, angles, zooms)]
        first = affs if first is None else first
        scales.append(zscore_numpy(warp_numpy(img01, affs, spec.crop_px)))
    if spec.neighbour_slices:  # the first scale's crops, on the neighbouring slice
        other = img01 if neighbour01 is None or neighbour01.shape != img01.shape else neighbour01
        scales.append(zscore_numpy(warp_numpy(other, first, spec.crop_px)))
    return scales[0] if len(scales) == 1 else np.concatenate(scales, axis=1)


class CropDataset:
    """Items {image (channels, C, C), cond (COND_DIM,), label, row} for every point row, cropped at the true point
    (+ random offset, zoom, rotation and gamma when `augment`)."""

    def __init__(self, ps: PointSlices, images: dict[str, np.ndarray], spec: GraderSpec, augment: bool,
                 seed: int = 0):
        if not ps.has_points:
            raise ValueError("training crops need the true points (x, y)")
        self.ps, self.images, self.spec, self.augment, self.seed = ps, images, spec, augment, seed
        self.epoch = 0
        self.rows = ps.points.to_dict("records")
        self.labels = ps.labels

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        r, spec = self.rows[i], self.spec
        img = self.images[r["path"]]
        frame = self.ps.frame(r["path"], spec.crop_px, img.shape)
        u, v = frame.stored_to_original(r["x"], r["y"])
        angle, zoom = 0.0, 1.0
        rng = np.random.default_rng([self.seed, self.epoch, i])
        if self.augment:
            side = max(frame.rows, frame.cols)
            du, dv = np.clip(rng.normal(0, spec.jitter, 2), -3 * spec.jitter, 3 * spec.jitter) * side
            u, v = u + du, v + dv
            angle = rng.uniform(-spec.rotate, spec.rotate)
            zoom = float(np.exp(rng.uniform(np.log(1 - spec.zoom), np.log(1 + spec.zoom))))
        import torch

        x = warp(torch.from_numpy(normalise_intensity(img)),
                 [crop_affine(frame, (float(u), float(v)), side, spec.crop_px, angle, zoom)
                  for side in spec.crop_sides(frame)], spec.crop_px)[:, 0]  # (channels, C, C)
        if spec.neighbour_slices:
            near = self.ps.neighbours(r["path"], spec.neighbour_slices)
            other = self.images[near[int(rng.integers(len(near)))]] if near else img
            other = img if other.shape != img.shape else other
            y = warp(torch.from_numpy(normalise_intensity(other)),
                     [crop_affine(frame, (float(u), float(v)), spec.crop_side(frame), spec.crop_px, angle, zoom)],
                     spec.crop_px)[:, 0]
            x = torch.cat([x, y], dim=0)
        if self.augment and spec.gamma:
            x = x.clamp_min(0) ** float(np.exp(rng.uniform(-spec.gamma, spec.gamma)))
        return {"image": zscore(x).float(), "cond": torch.from_numpy(condition_vector(r["condition"], r["level"])),
                "label": torch.tensor(int(self.labels[i]), dtype=torch.long), "row": torch.tensor(i)}

