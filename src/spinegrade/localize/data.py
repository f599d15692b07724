"""Stage-1 inputs and targets: whole slices resized to a square, with landmark heatmaps.

Three localiser views, each a 2D heatmap model over one slice (plus its neighbours as channels):
- `sagittal_t2`: the mid-sagittal T2 slice -> 5 channels, the spinal canal at each disc level;
- `sagittal_t1`: a sagittal T1 slice -> 5 channels, the foramen at each level on that slice; trained on the
  labelled slices and their neighbours, whose target amplitude falls off with the distance (in slices), so
  among a few candidate slices the highest peak picks the slice;
- `axial_t2`: the axial slice at a level -> 2 channels, the left and right subarticular recesses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .. import vocab
from ..inputs import intensity_of
from .heatmap import gaussian_heatmaps
from .spec import INPUT_SIZE, N_CHANNELS, SIGMA, SLICE_SIGMA

if TYPE_CHECKING:  # only named in annotations: the localisers import this module to predict, without pandas
    import pandas as pd


VIEWS = (vocab.SAGITTAL_T2, vocab.SAGITTAL_T1, vocab.AXIAL_T2)
VIEW_CHANNELS: dict[str, list[tuple[str, str]]] = {
    # (condition, level) per output channel; foraminal channels hold left and right (different slices)
    vocab.SAGITTAL_T2: [(vocab.CANAL, lv) for lv in vocab.LEVELS],
    vocab.SAGITTAL_T1: [(vocab.FAMILY_TERMS[vocab.FORAMINAL], lv) for lv in vocab.LEVELS],
    vocab.AXIAL_T2: [(c, "") for c in vocab.FAMILY_CONDITIONS[vocab.SUBARTICULAR]],
}


def resize_stack(pixels: np.ndarray, size: int, intensity: tuple[float, float]) -> np.ndarray:
    """Every slice resized to size x size (aspect not kept) and scaled to ~0..1 by the series range."""
    from PIL import Image

    lo, hi = intensity
    out = np.empty((pixels.shape[0], size, size), dtype=np.float32)
    for k in range(pixels.shape[0]):
        im = Image.fromarray(np.asarray(pixels[k], dtype=np.float32), mode="F")
        out[k] = np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.float32)
    return (out - lo) / (hi - lo)


def neighbours(stack: np.ndarray, k: int, n: int = N_CHANNELS) -> np.ndarray:
    """(n, S, S): slice k with its neighbours (edge slices repeated)."""
    idx = np.clip(np.arange(k - n // 2, k - n // 2 + n), 0, stack.shape[0] - 1)
    return stack[idx]


@dataclass
class SeriesInput:
    """A series made ready for the localiser: resized stack plus the scale back to the original pixels."""

    stack: np.ndarray  # (n, S, S) float32
    scale_x: float  # original columns per input pixel
    scale_y: float  # original rows per input pixel
    mm_per_px: tuple[float, float]  # (y, x) mm per input pixel

    @classmethod
    def from_series(cls, series, size: int = INPUT_SIZE) -> "SeriesInput":
        rows, cols = series.shape
        rs, cs = series.pixel_spacing
        stack = resize_stack(series.pixels, size, intensity_of(series))
        return cls(stack, cols / size, rows / size, (rows / size * rs, cols / size * cs))

    def to_input(self, x: float, y: float) -> tuple[float, float]:
        """Original pixel -> input pixel (pixel centres map to pixel centres)."""
        return (x + 0.5) / self.scale_x - 0.5, (y + 0.5) / self.scale_y - 0.5

    def to_original(self, x: float, y: float) -> tuple[float, float]:
        return (x + 0.5) * self.scale_x - 0.5, (y + 0.5) * self.scale_y - 0.5


def _points_on(located: list[tuple], view: str, inp: SeriesInput, k: int, slice_sigma: float = SLICE_SIGMA) -> np.ndarray:
    """(K, 3) target rows (x, y, amplitude) in input pixels for slice k, from (coordinate row, slice) pairs.

    On sagittal T1 the amplitude falls off with the distance in slices from the labelled slice, so the
    height of a predicted peak says which slice holds the foramen.
    """
    pts = np.full((len(VIEW_CHANNELS[view]), 3), np.nan)
    for r, ks in located:
        if view == vocab.AXIAL_T2:
            amp = 1.0
            ch = [c for c, _ in VIEW_CHANNELS[view]].index(r.condition)
        elif view == vocab.SAGITTAL_T2:  # all five canal points belong on the one mid-sagittal slice
            amp = 1.0
            ch = vocab.LEVELS.index(r.level)
        else:
            amp = float(np.exp(-((ks - k) ** 2) / (2 * slice_sigma**2)))
            ch = vocab.LEVELS.index(r.level)
            if amp < 0.05 or (np.isfinite(pts[ch, 2]) and pts[ch, 2] >= amp):
                continue
        x, y = inp.to_input(float(r.x), float(r.y))
        pts[ch] = (x, y, amp)
    return pts


_VIEW_CONDITIONS = {vocab.SAGITTAL_T2: (vocab.CANAL,),
                    vocab.SAGITTAL_T1: vocab.FAMILY_CONDITIONS[vocab.FORAMINAL],
                    vocab.AXIAL_T2: vocab.FAMILY_CONDITIONS[vocab.SUBARTICULAR]}


def view_samples(cache, coords: pd.DataFrame, study_ids, view: str, training: bool,
                 size: int = INPUT_SIZE, n_channels: int = N_CHANNELS, slice_sigma: float = SLICE_SIGMA) -> list[dict]:
    """Samples {image (C,S,S), points (K,3), mm (2,), study_id} for one localiser view.

    sagittal_t2: the labelled slice; sagittal_t1: the labelled slices, and in training their neighbours
    (lower amplitude); axial_t2: the labelled slice of each level.
    """
    out: list[dict] = []
    for sid in study_ids:
        c = coords[(coords["study_id"] == int(sid)) & coords["condition"].isin(_VIEW_CONDITIONS[view])]
        if c.empty or not cache.has_study(sid):
            continue
        study = cache.load_study(sid)
        by_part: dict[str, list[tuple]] = {}
        for r in c.itertuples(index=False):
            loc = study.locate_row(r)
            if loc is not None and loc.series.role == view:
                by_part.setdefault(loc.series.series_id, []).append((r, loc.slice_index))
        for part, located in by_part.items():
            s = study.get(part)
            inp = SeriesInput.from_series(s, size)
            labelled = sorted({k for _, k in located})
            if view == vocab.AXIAL_T2:
                # one sample per level: both recesses lie (nearly) in one plane even when the annotators
                # clicked them on neighbouring slices
                levels: dict[str, list[tuple]] = {}
                for r, k in located:
                    levels.setdefault(r.level, []).append((r, k))
                todo = [(int(round(np.mean([k for _, k in rows]))), rows) for rows in levels.values()]
            elif view == vocab.SAGITTAL_T1 and training:  # labelled slices and neighbours (lower amplitude)
                near = sorted({j for k in labelled for j in range(k - 2, k + 3) if 0 <= j < s.n_slices})
                todo = [(k, located) for k in near]
            elif view == vocab.SAGITTAL_T1:
                todo = [(k, located) for k in labelled]
            else:
                # one mid-sagittal slice carries all five canal points; training it with lower-amplitude
                # neighbours as well was tried and made the levels much harder to learn (median error
                # 30 mm instead of 1 mm after 14 epochs on 96 synthetic studies)
                todo = [(max(labelled, key=lambda j: sum(k == j for _, k in located)), located)]
            for k, rows in todo:
                pts = _points_on(rows, view, inp, k, slice_sigma)
                out.append({"image": neighbours(inp.stack, k, n_channels), "points": pts.astype(np.float32),
                            "mm": np.asarray(inp.mm_per_px, dtype=np.float32), "study_id": int(sid)})
    return out


class HeatmapDataset:
    """Torch-style dataset over samples; draws shift and intensity augmentation when `augment`."""

    def __init__(self, samples: list[dict], size: int = INPUT_SIZE, augment: bool = False, seed: int = 0,
                 sigma: float = SIGMA):
        self.samples, self.size, self.augment, self.seed, self.sigma = samples, size, augment, seed, sigma
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        import torch

        s = self.samples[i]
        img, pts = s["image"].astype(np.float32), s["points"].astype(np.float32).copy()
        if self.augment:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            dx, dy = rng.integers(-8, 9, size=2)
            img = np.roll(img, (int(dy), int(dx)), axis=(1, 2))
            pts[:, 0] += dx
            pts[:, 1] += dy
            img = img * rng.uniform(0.8, 1.25) + rng.uniform(-0.1, 0.1)
            img = np.sign(img) * np.abs(img) ** rng.uniform(0.8, 1.25)
        target = gaussian_heatmaps(pts, self.size, self.sigma)
        return {"image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
                "target": torch.from_numpy(target), "points": torch.from_numpy(pts),
                "mm": torch.from_numpy(s["mm"])}
