"""Labelled real slices, whatever their task: the container, the frame that undoes a stored image's stretch,
reading images, intensity and study folds. Torch-free.

A slice set is one row per stored image (`slices`: path, study_id, rows, cols = the original matrix) and one
row per thing to grade on it (`points`: path, study_id, condition, level and, as truth where given, label and
x, y = the point the crop is centred on). `landmarks` (path, channel, x, y), where a task gives them, are what
the localiser learns; a task without them learns its grade points (channel = the level). Each task's reader
(`foramina.read_point_slices`, `canal.read_canal_slices`) makes one.

Every image may have been stretched from its original `rows x cols` matrix to a fixed square; a point's `x, y`
are pixels of the stored image. `Frame` undoes that: it maps stored-image pixels to original pixels, and
original pixels to a square "letterbox" of side S where the anatomy keeps its proportions (the longer side
fills S, the shorter is centred with zero padding). A DICOM slice read later goes through the same `Frame`
(its stored image simply has `rows x cols` pixels), so a model sees the same anatomy either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import vocab
from ..errors import DataError

if TYPE_CHECKING:  # imported where used: the slice models import this module to predict, without pandas
    import pandas as pd

SLICE_COLUMNS = ("path", "study_id", "rows", "cols")
POINT_COLUMNS = ("path", "study_id", "condition", "level")
PX250 = 250.0  # distances are measured in pixels of the slice shrunk so its longer side is this


class SpecDict:
    """For the frozen stage specs: plain-data round trip, network options kept as sorted (name, value) pairs so the
    spec stays hashable."""

    def to_dict(self) -> dict:
        from dataclasses import asdict

        d = asdict(self)
        d["network_kwargs"] = dict(self.network_kwargs)
        return d

    @classmethod
    def from_dict(cls, d: dict):
        d = dict(d)
        d["network_kwargs"] = tuple(sorted(dict(d.get("network_kwargs") or {}).items()))
        return cls(**d)


@dataclass(frozen=True)
class Frame:
    """Where a stored image's pixels lie in its original matrix and in a square letterbox of side `size`.

    Coordinates are continuous pixel positions (x right, y down). `stored` is the stored image's (h, w).
    """

    rows: int
    cols: int
    stored: tuple[int, int]
    size: int

    @property
    def scale(self) -> float:
        """Letterbox pixels per original pixel."""
        return self.size / max(self.rows, self.cols)

    @property
    def offset(self) -> tuple[float, float]:
        return ((self.size - self.cols * self.scale) / 2, (self.size - self.rows * self.scale) / 2)

    def stored_to_original(self, x, y):
        return np.asarray(x) * self.cols / self.stored[1], np.asarray(y) * self.rows / self.stored[0]

    def original_to_stored(self, u, v):
        return np.asarray(u) * self.stored[1] / self.cols, np.asarray(v) * self.stored[0] / self.rows

    def original_to_box(self, u, v):
        ox, oy = self.offset
        return np.asarray(u) * self.scale + ox, np.asarray(v) * self.scale + oy

    def box_to_original(self, bx, by):
        ox, oy = self.offset
        return (np.asarray(bx) - ox) / self.scale, (np.asarray(by) - oy) / self.scale

    def error_px250(self, du, dv):
        """A distance in original pixels, in pixels of the image shrunk so its longer side is 250."""
        return np.hypot(du, dv) * PX250 / max(self.rows, self.cols)


@dataclass
class PointSlices:
    """A labelled slice set: one row per slice, one row per point to grade (truth columns may be absent)."""

    root: Path
    slices: pd.DataFrame  # path, study_id, rows, cols (+ whatever else the file had), one row per path
    points: pd.DataFrame  # path, study_id, condition, level (+ label, x, y where truth is given)
    has_truth: bool  # a label on every row
    has_points: bool  # x and y on every row
    landmarks: pd.DataFrame | None = None  # path, channel, x, y: what the localiser learns (None: the points)

    def __len__(self) -> int:
        return len(self.points)

    @property
    def labels(self) -> np.ndarray:
        """Each row's class index, -1 where it has none."""
        if "label" not in self.points.columns:
            return np.full(len(self.points), -1)
        return self.points["label"].to_numpy(np.int64)

    def frame(self, path: str, size: int, stored: tuple[int, int]) -> Frame:
        r = self._by_path.loc[path]
        return Frame(int(r["rows"]), int(r["cols"]), stored, size)

    def __post_init__(self) -> None:
        self._by_path = self.slices.set_index("path")
        self._series_slices = None  # (study, series) -> [(instance number, path)], built on first use

    def row_series(self) -> pd.Series:
        """Each point row's series, as `study/series`: the slices' `series_id` where the set has one, else the study
        (index as `points`)."""
        study = self.points["study_id"].astype(str)
        if "series_id" not in self.slices.columns:
            return study
        by_path = dict(zip(self.slices["path"], self.slices["series_id"].astype(str)))
        return study + "/" + self.points["path"].map(by_path).fillna("")

    def neighbours(self, path: str, max_gap: int) -> list[str]:
        """The set's other slices of `path`'s series nearest to it, at most `max_gap` instance numbers away (all
        those at the nearest distance; none where the set has no `series_id` / `instance_number`)."""
        if max_gap <= 0 or not {"series_id", "instance_number"} <= set(self.slices.columns):
            return []
        if self._series_slices is None:
            import pandas as pd

            sl = self.slices.assign(_n=pd.to_numeric(self.slices["instance_number"], errors="coerce"))
            sl = sl.dropna(subset=["series_id", "_n"])
            self._series_slices = {(str(st), str(se)): list(zip(g["_n"].astype(int), g["path"]))
                                   for (st, se), g in sl.groupby(["study_id", "series_id"])}
        r = self._by_path.loc[path]
        try:
            me = int(r["instance_number"])
        except (TypeError, ValueError):  # none written for this slice
            return []
        gaps = [(abs(n - me), p) for n, p in self._series_slices.get((str(r["study_id"]), str(r["series_id"])), [])
                if p != path and 0 < abs(n - me) <= max_gap]
        if not gaps:
            return []
        best = min(g for g, _ in gaps)
        return sorted(p for g, p in gaps if g == best)

    def subset_studies(self, study_ids) -> PointSlices:
        """The rows of these studies (ids as written), slices, points and landmarks alike."""
        keep = set(map(str, study_ids))
        pts = self.points[self.points["study_id"].isin(keep)].reset_index(drop=True)
        sl = self.slices[self.slices["path"].isin(set(pts["path"]))].reset_index(drop=True)
        lm = None
        if self.landmarks is not None:
            lm = self.landmarks[self.landmarks["path"].isin(set(sl["path"]))].reset_index(drop=True)
        return PointSlices(self.root, sl, pts, self.has_truth, self.has_points, lm)

    def drop_studies(self, study_ids) -> PointSlices:
        drop = set(map(str, study_ids))
        return self.subset_studies(sorted(set(self.points["study_id"]) - drop))

    def labelled(self) -> PointSlices:
        """Only the rows with a label and a point (what a grader can learn from)."""
        pts = self.points
        ok = self.labels >= 0
        if "x" in pts.columns:
            ok &= np.isfinite(pts["x"].to_numpy(float)) & np.isfinite(pts["y"].to_numpy(float))
        return PointSlices(self.root, self.slices, pts[ok].reset_index(drop=True), True, True, self.landmarks)

    def blind(self) -> PointSlices:
        """The same rows without truth: what a predictor may see."""
        return PointSlices(self.root, self.slices, self.points[list(POINT_COLUMNS)].copy(), False, False)

    def landmark_lists(self, channel_of_level) -> list[list[tuple[int, float, float]]]:
        """Per slice (in `slices` order) its labelled landmarks as (channel, x, y)."""
        out: dict[str, list] = {p: [] for p in self.slices["path"]}
        if self.landmarks is not None:
            for r in self.landmarks.itertuples(index=False):
                if r.path in out and r.channel >= 0:  # a negative channel is a landmark kept only to score
                    out[r.path].append((int(r.channel), float(r.x), float(r.y)))
        elif self.has_points:
            for r in self.points.itertuples(index=False):
                out[r.path].append((channel_of_level(r.level), float(r.x), float(r.y)))
        return list(out.values())


def read_gray(path: Path) -> np.ndarray:
    """A stored slice as a 2D uint8 array; DataError naming the file when it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("L"), dtype=np.uint8)
    except OSError as e:
        raise DataError(f"{path}: cannot read the image: {e}") from None


def load_images(ps: PointSlices, log=None) -> dict[str, np.ndarray]:
    """Every slice of the set decoded once (uint8, ~60 KB per 250 px slice), keyed by path."""
    out = {}
    for i, p in enumerate(ps.slices["path"]):
        out[p] = read_gray(ps.root / p)
        if log and (i + 1) % 2000 == 0:
            log(f"read {i + 1}/{len(ps.slices)} slices")
    return out


def normalise_intensity(img: np.ndarray) -> np.ndarray:
    """Scale a slice to [0, 1] between its 0.5th and 99.5th percentiles (a JPEG and its DICOM give the same)."""
    a = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(a, (0.5, 99.5))
    if hi <= lo:
        return np.zeros_like(a)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


def study_folds(ps: PointSlices, n_folds: int, seed: int = 0) -> pd.Series:
    """Fold of each study (study_id as written -> fold), stratified on each study's grades where given.

    The same assignment as the slice-index path (`data.slices.study_folds`) for the same rows and seed, so
    whole-slice and crop figures are measured on the same folds.
    """
    from ..data.slices import SliceIndex
    from ..data.slices import study_folds as slice_folds

    pts = ps.points
    idx = SliceIndex(pts[["path", "study_id", "condition", "level"]], ps.root, pts["condition"].to_numpy(object),
                     pts["level"].to_numpy(object), ps.labels, np.full(len(pts), vocab.SAGITTAL_T1, dtype=object))
    return slice_folds(idx, n_folds, seed)


_SHAPES: dict = {}


def stored_shape(ps: PointSlices, path: str) -> tuple[int, int]:
    """(height, width) of a stored image, read from its header once."""
    key = (str(ps.root), path)
    if key not in _SHAPES:
        from PIL import Image

        with Image.open(ps.root / path) as im:
            _SHAPES[key] = (im.height, im.width)
    return _SHAPES[key]


def error_summary(e: np.ndarray) -> dict:
    """Median, mean, 90th percentile, share within 5 and over 20 of a set of distances."""
    if not e.size:
        return {}
    return {"n": int(e.size), "median": float(np.median(e)), "mean": float(e.mean()), "p90": float(np.percentile(e, 90)),
            "within_5px": float((e <= 5).mean()), "over_20px": float((e > 20).mean())}
