"""Stage-2 samples: one 2.5D crop per (condition, level) around a point, with the true grade.

Training takes the ground-truth points and jitters them like localiser errors; inference takes the
localiser's points. The spinal canal sees its sagittal T2 crop and, as extra channels, the axial T2 crop
at the same level (zeros where there is no axial series), so one model reads both views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import vocab
from ..errors import DataError
from ..geometry import nearest_slice_among
from ..inputs import condition_vector, intensity_of
from ..io.types import Series
from .crops import extract_crop, mirror_for
from .spec import DEFAULT_SPECS, CropSpec, Jitter, crop_channels


def in_channels(family: str, crop: CropSpec | None = None) -> int:
    """Input channels of a family's grader for `crop` (default: the family's default crop)."""
    return crop_channels(family, crop or DEFAULT_SPECS[family])


@dataclass
class CropItem:
    """Where to crop: a series, a slice, a point; plus what it is and (in training) its grade."""

    study_id: int
    condition: str
    level: str
    series: Series
    slice_index: int
    x: float
    y: float
    label: int = -1
    axial: tuple | None = None  # (series, slice, x, y) of the axial crop for the spinal canal


class CropDataset:
    """Torch-style dataset of crops for one condition family, cropped as `crop` says.

    `crop` comes from the plan in training and from the checkpoint at inference, so both cut alike.
    """

    def __init__(self, items: list[CropItem], family: str, crop: CropSpec, jitter: Jitter | None = None,
                 seed: int = 0):
        self.items, self.family, self.jitter, self.seed = items, family, jitter, seed
        self.spec: CropSpec = crop
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def _range(self, s: Series) -> tuple[float, float]:
        return intensity_of(s)

    def _crop(self, s: Series, k: int, x: float, y: float, mirror: bool, rng) -> np.ndarray:
        spec, j = self.spec, self.jitter
        rot = scale = 0.0
        if j is not None:
            rs, cs = s.pixel_spacing
            x += rng.normal(0, j.shift_mm) / cs
            y += rng.normal(0, j.shift_mm) / rs
            if rng.random() < j.slice_prob:
                k = int(np.clip(k + rng.choice([-1, 1]), 0, s.n_slices - 1))
            rot = rng.uniform(-j.rotate_deg, j.rotate_deg)
            scale = rng.uniform(-j.scale, j.scale)
        return extract_crop(s.pixels, s.pixel_spacing, k, x, y, spec, mirror=mirror, intensity=self._range(s),
                            rotation_deg=rot, scale=1.0 + scale)

    def image(self, i: int, rng=None) -> np.ndarray:
        it = self.items[i]
        img = self._crop(it.series, it.slice_index, it.x, it.y, mirror_for(it.condition, it.series.role), rng)
        if self.family == vocab.SPINAL:
            if it.axial is not None:
                s, k, x, y = it.axial
                ax = self._crop(s, k, x, y, False, rng)
            else:
                ax = np.zeros_like(img)
            img = np.concatenate([img, ax], axis=0)
        if self.jitter is not None and rng is not None:
            img = img * rng.uniform(1 - self.jitter.intensity, 1 + self.jitter.intensity)
        return img.astype(np.float32)

    def __getitem__(self, i: int) -> dict:
        import torch

        rng = np.random.default_rng((self.seed, self.epoch, i)) if self.jitter is not None else None
        it = self.items[i]
        return {"image": torch.from_numpy(self.image(i, rng)),
                "cond": torch.from_numpy(condition_vector(it.condition, it.level).astype(np.float32)),
                "label": torch.tensor(it.label, dtype=torch.long)}


def _axial_for(point_xyz: np.ndarray, axials: list[Series]) -> tuple | None:
    best = nearest_slice_among(point_xyz, [s.geometry for s in axials])
    return None if best is None else (axials[best[0]], *best[1:4])


def _missing(y) -> bool:
    """A label cell without a grade: None, NaN or pandas' NA (pandas itself is not imported to predict)."""
    try:
        return y is None or bool(y != y)
    except TypeError:  # pd.NA: its comparisons are NA, whose truth value raises
        return True


def training_items(cache, ds, study_ids, family: str) -> list[CropItem]:
    """Crop items at the ground-truth points of the given studies for one family (labelled rows only)."""
    items: list[CropItem] = []
    conds = vocab.FAMILY_CONDITIONS[family]
    for sid in study_ids:
        sid = int(sid)
        if not cache.has_study(sid) or ds.labels is None or sid not in ds.labels.index:
            continue
        c = ds.coords_for(sid)
        c = c[c["condition"].isin(conds)]
        if c.empty:
            continue
        study = cache.load_study(sid)
        axials = study.by_role(vocab.AXIAL_T2)
        for r in c.itertuples(index=False):
            y = ds.labels.at[sid, vocab.target(r.condition, r.level)]
            if _missing(y):
                continue
            loc = study.locate_row(r)
            if loc is None:
                continue
            axial = _axial_for(loc.patient, axials) if family == vocab.SPINAL and axials else None
            items.append(CropItem(sid, r.condition, r.level, loc.series, loc.slice_index, loc.x, loc.y, int(y),
                                  axial))
    return items


def inference_items(study, points, family: str) -> list[CropItem]:
    """Crop items at the localiser's points of one study (label -1)."""
    by_id = {s.series_id: s for s in study.series}
    view = vocab.FAMILY_VIEW[family]
    axial_canal = {p.level: p for p in points if p.condition == vocab.CANAL and p.role == vocab.AXIAL_T2}
    items = []
    for p in points:
        if vocab.CONDITION_BY_KEY[p.condition].family != family or p.role != view:
            continue
        s = by_id.get(p.series_id)
        if s is None:
            raise DataError(f"study {study.study_id}: point on unknown series {p.series_id}")
        axial = None
        if family == vocab.SPINAL and p.level in axial_canal:
            a = axial_canal[p.level]
            axial = (by_id[a.series_id], a.slice_index, a.x, a.y)
        items.append(CropItem(int(study.study_id) if str(study.study_id).isdigit() else 0, p.condition, p.level, s,
                              p.slice_index, p.x, p.y, -1, axial))
    return items
