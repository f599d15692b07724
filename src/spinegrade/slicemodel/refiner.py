"""Stage 1b on a slice: a second, closer look at each landmark the localiser placed.

The localiser sees the whole slice letterboxed to 96 px; its heatmap cells lie 5 px of a 250-px slice apart,
and most of the foramen points it misses by more than 5 px are near misses (5-7 px). The refiner crops a
window of fixed anatomical size (`crop_frac` of the slice's longer side) around each placed point at
`input_size` pixels (one heatmap cell: about 1.6 px of a 250-px slice) and reads the same landmark's channel
there. It learns on windows around the true points moved by about the localiser's error (`jitter`), with
every labelled landmark inside a window as a target and a labelled landmark outside it as "not here" (the
unlabelled ones give no loss, as in the localiser). Used by the tasks that ask for it (`SliceTask.refine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import vocab
from ..localize.heatmap import decode_heatmaps
from .data import PX250, Frame, PointSlices, SpecDict, normalise_intensity
from .localizer import OUT_STRIDE, blob_targets, heatmap_to_box
from .warp import crop_affine, warp, warp_numpy, zscore, zscore_numpy


@dataclass(frozen=True)
class RefinerSpec(SpecDict):
    """What the refiner sees and learns: written into its checkpoint and read back at inference."""

    network: str = "keypoint-half"
    network_kwargs: tuple = ()
    input_size: int = 64  # window side, pixels (a multiple of 32 for keypoint-half)
    crop_frac: float = 0.2  # window side as a fraction of the slice's longer side (original pixels)
    sigma: float = 1.5  # target blob, heatmap pixels
    pos_weight: float = 20.0
    jitter: float = 0.016  # std of the window's offset from the true point per axis, fraction of the longer side
    zoom: float = 0.10
    rotate: float = 8.0
    gamma: float = 0.25
    max_move: float = 0.35  # a refined point further than this share of the window from the placed one is not taken
    # the refined point is where the heatmap holds the most within this distance (pixels of a 250-px slice: the
    # within-5-px aim) rather than its arg-max; 0: the arg-max. Read at inference; older checkpoints get it too.
    peak_radius: float = 5.0

    @property
    def heatmap_size(self) -> int:
        return self.input_size // OUT_STRIDE

    @property
    def peak_radius_cells(self) -> float:
        """`peak_radius` in heatmap pixels (the window spans `crop_frac` of the longer side in every slice)."""
        return self.peak_radius * self.heatmap_size / (self.crop_frac * PX250)

    def crop_side(self, frame: Frame) -> float:
        return self.crop_frac * max(frame.rows, frame.cols)


class RefinerDataset:
    """Items like the localiser's ({image, target, mask, points, scale250}), one per labelled point: a window
    around the point moved by a random offset (also in validation, drawn once: the refiner is judged from a
    displaced start), rotated and zoomed when `augment`."""

    def __init__(self, ps: PointSlices, images: dict[str, np.ndarray], spec: RefinerSpec, augment: bool,
                 seed: int = 0, n_channels: int = len(vocab.LEVELS)):
        if not ps.has_points:
            raise ValueError("refiner windows need the true points (x, y)")
        self.ps, self.images, self.spec, self.augment, self.seed = ps, images, spec, augment, seed
        self.n_channels = n_channels
        self.epoch = 0
        self.rows = ps.points[["path", "x", "y"]].to_dict("records")
        self.on_slice = dict(zip(ps.slices["path"], ps.landmark_lists(vocab.LEVELS.index)))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        import torch

        spec, s, r = self.spec, self.spec.input_size, self.rows[i]
        img = self.images[r["path"]]
        frame = self.ps.frame(r["path"], s, img.shape)
        u, v = frame.stored_to_original(r["x"], r["y"])
        rng = np.random.default_rng([self.seed, self.epoch if self.augment else 0, i])
        side = max(frame.rows, frame.cols)
        du, dv = np.clip(rng.normal(0, spec.jitter, 2), -3 * spec.jitter, 3 * spec.jitter) * side
        angle, zoom = 0.0, 1.0
        if self.augment:
            angle = rng.uniform(-spec.rotate, spec.rotate)
            zoom = float(np.exp(rng.uniform(np.log(1 - spec.zoom), np.log(1 + spec.zoom))))
        a, t = crop_affine(frame, (float(u + du), float(v + dv)), spec.crop_side(frame), s, angle, zoom)
        x = warp(torch.from_numpy(normalise_intensity(img)), [(a, t)], s)[0]
        if self.augment and spec.gamma:
            x = x.clamp_min(0) ** float(np.exp(rng.uniform(-spec.gamma, spec.gamma)))
        inv = np.linalg.inv(a)
        placed = [(lv, inv @ (np.array([x0, y0]) - t)) for lv, x0, y0 in self.on_slice[r["path"]]]  # -> window px
        targets, mask, pts = blob_targets(placed, self.n_channels, spec.heatmap_size, spec.sigma, inside=s)
        scale250 = PX250 * spec.crop_frac / (s * zoom)  # window pixels -> pixels of a 250-px slice
        return {"image": zscore(x).float(), "target": torch.from_numpy(targets), "mask": torch.from_numpy(mask),
                "points": torch.from_numpy(pts), "scale250": torch.tensor(scale250, dtype=torch.float32)}


def refine_points(net, spec: RefinerSpec, img01: np.ndarray, rows: int, cols: int, placed: np.ndarray,
                  sigmoid) -> np.ndarray:
    """(C, 2) stored-pixel points of every channel after a closer look: channel c's window is centred on its
    placed point `placed[c]` (stored pixels) and its peak is read on channel c; a peak further than
    `max_move` of the window from the placed point leaves that point where it was. The peak is decoded as
    `decode_heatmaps` with the spec's `peak_radius`."""
    frame = Frame(rows, cols, img01.shape, spec.input_size)
    s, n = spec.input_size, len(placed)
    affs = [crop_affine(frame, frame.stored_to_original(*placed[c]), spec.crop_side(frame), s) for c in range(n)]
    hm = sigmoid(net(zscore_numpy(warp_numpy(img01, affs, s))))  # (C windows, C channels, h, h)
    out = np.array(placed, dtype=np.float64)
    limit = spec.max_move * spec.crop_side(frame)
    for c, (a, t) in enumerate(affs):
        dec = decode_heatmaps(hm[c, c:c + 1], spec.peak_radius_cells)[0]
        q = a @ heatmap_to_box(dec[:2]) + t
        du, dv = np.subtract(frame.stored_to_original(*q), frame.stored_to_original(*placed[c]))
        if np.hypot(du, dv) <= limit:
            out[c] = q
    return out
