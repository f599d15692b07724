"""Point-labelled slices: `slices.csv` + `points.csv` + images, read, validated, and put in their true proportions.

Every image of the layout was stretched from its original `rows x cols` matrix to a fixed square; a point's
`x, y` are pixels of the stored image. `Frame` undoes that: it maps stored-image pixels to original pixels,
and original pixels to a square "letterbox" of side S where the anatomy keeps its proportions (the longer
side fills S, the shorter is centred with zero padding). A DICOM slice read later goes through the same
`Frame` (its stored image simply has `rows x cols` pixels), so a model sees the same anatomy either way.

`points.csv` columns: path, study_id, condition, level (what to predict) and, as truth only, severity, x, y.
Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import vocab
from ..errors import DataError

if TYPE_CHECKING:  # imported where used: the foramen models import this module to predict, without pandas
    import pandas as pd

SLICES_CSV = "slices.csv"
POINTS_CSV = "points.csv"
SLICE_COLUMNS = ("path", "study_id", "rows", "cols")
POINT_COLUMNS = ("path", "study_id", "condition", "level")
TRUTH_COLUMNS = ("severity", "x", "y")
FORAMINAL = vocab.FAMILY_CONDITIONS[vocab.FORAMINAL]


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
        return np.hypot(du, dv) * 250.0 / max(self.rows, self.cols)


@dataclass
class PointSlices:
    """A point-labelled slice set: one row per slice, one row per foramen (truth columns may be absent)."""

    root: Path
    slices: pd.DataFrame  # path, study_id, rows, cols (+ whatever else the file had), one row per path
    points: pd.DataFrame  # path, study_id, condition, level (+ label, x, y where truth is given)
    has_truth: bool  # severity given on every row
    has_points: bool  # x and y given on every row

    def __len__(self) -> int:
        return len(self.points)

    @property
    def labels(self) -> np.ndarray:
        return self.points["label"].to_numpy(np.int64) if self.has_truth else np.full(len(self.points), -1)

    def frame(self, path: str, size: int, stored: tuple[int, int]) -> Frame:
        r = self._by_path.loc[path]
        return Frame(int(r["rows"]), int(r["cols"]), stored, size)

    def __post_init__(self) -> None:
        self._by_path = self.slices.set_index("path")

    def subset_studies(self, study_ids) -> PointSlices:
        """The rows of these studies (ids as written), slices and points alike."""
        keep = set(map(str, study_ids))
        pts = self.points[self.points["study_id"].isin(keep)].reset_index(drop=True)
        sl = self.slices[self.slices["path"].isin(set(pts["path"]))].reset_index(drop=True)
        return PointSlices(self.root, sl, pts, self.has_truth, self.has_points)

    def drop_studies(self, study_ids) -> PointSlices:
        drop = set(map(str, study_ids))
        return self.subset_studies(sorted(set(self.points["study_id"]) - drop))


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found (a point-labelled slice folder has {SLICES_CSV} and {POINTS_CSV})")
    from ..data.slices import read_string_table

    return read_string_table(path, required)


def _parse(df: pd.DataFrame, col: str, parse, path: Path) -> list:
    out = []
    for i, v in enumerate(df[col]):
        try:
            out.append(parse(v))
        except (ValueError, TypeError) as e:
            raise DataError(f"{path}: line {i + 2}: {col} {v!r}: {e}") from None
    return out


def _positive_int(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise ValueError("must be a positive integer")
    return v


def _coordinate(s: str) -> float:
    v = float(s)
    if not np.isfinite(v) or v < 0:
        raise ValueError("must be a finite number >= 0")
    return v


def _foraminal(s: str) -> str:
    c = vocab.parse_condition(s)
    if c not in FORAMINAL:
        raise ValueError(f"not a neural foraminal condition ({', '.join(FORAMINAL)})")
    return c


def read_point_slices(folder: str | Path, check_files: bool = True) -> PointSlices:
    """Read and validate a point-labelled slice folder; DataError naming the file and line on any problem.

    Truth columns (severity, x, y) are optional: without them the set can be predicted, not scored.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected {SLICES_CSV}, {POINTS_CSV} and the images)")
    sp, pp = root / SLICES_CSV, root / POINTS_CSV
    slices = _read_csv(sp, SLICE_COLUMNS)
    points = _read_csv(pp, POINT_COLUMNS)
    slices["rows"] = _parse(slices, "rows", _positive_int, sp)
    slices["cols"] = _parse(slices, "cols", _positive_int, sp)
    dup = slices["path"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(f"{sp}: line {i + 2}: path {slices['path'].iloc[i]!r} listed twice")
    points["condition"] = _parse(points, "condition", _foraminal, pp)
    points["level"] = _parse(points, "level", vocab.parse_level, pp)
    known = set(slices["path"])
    for i, p in enumerate(points["path"]):
        if p not in known:
            raise DataError(f"{pp}: line {i + 2}: path {p!r} is not in {SLICES_CSV}")
    study_of = dict(zip(slices["path"], slices["study_id"]))
    for i, (p, s) in enumerate(zip(points["path"], points["study_id"])):
        if study_of[p] != s:
            raise DataError(f"{pp}: line {i + 2}: study_id {s} differs from {SLICES_CSV}'s {study_of[p]} for {p}")
    has_truth = "severity" in points.columns and bool((points["severity"].str.strip() != "").all())
    if has_truth:
        points["label"] = _parse(points, "severity", vocab.parse_severity, pp)
    has_points = all(c in points.columns for c in ("x", "y")) and bool(
        (points["x"].str.strip() != "").all() and (points["y"].str.strip() != "").all())
    if has_points:
        points["x"] = _parse(points, "x", _coordinate, pp)
        points["y"] = _parse(points, "y", _coordinate, pp)
    if check_files:
        absent = [p for p in slices["path"] if not (root / p).is_file()]
        if absent:
            raise DataError(f"{sp}: {len(absent)} image file(s) missing, e.g. {root / absent[0]}")
    return PointSlices(root, slices, points, has_truth, has_points)


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


def write_synthetic_point_slices(folder: str | Path, n_studies: int = 12, slices_per_study: int = 2,
                                 size: int = 64, seed: int = 0, rows_cols=((320, 320), (384, 384), (512, 640))
                                 ) -> Path:
    """A small point-labelled slice folder in the real layout, whose grade is visible at the point.

    Each slice holds five "foramina" (bright rings, one per level, top to bottom, slightly curved) whose
    hole shrinks with severity; the stored image is stretched from its `rows x cols` like the real set's.
    For tests and smoke runs without real data. Returns the folder.
    """
    from PIL import Image

    from ..files import write_csv_atomic

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    s_rows, p_rows = [], []
    for st in range(n_studies):
        study = str(5000 + st)
        rows, cols = rows_cols[st % len(rows_cols)]
        for k in range(slices_per_study):
            side = vocab.SIDES[k % 2]
            cond = vocab.condition_at(vocab.FORAMINAL, side)
            # Draw in original proportions, then stretch to the stored square like the real set.
            h, w = rows // 4, cols // 4
            yy, xx = np.mgrid[:h, :w]
            img = rng.normal(50, 8, size=(h, w))
            sev = rng.choice(3, size=5, p=(0.6, 0.25, 0.15))
            pts = []
            for li, lv in enumerate(vocab.LEVELS):
                cy = h * (0.2 + 0.15 * li) + rng.normal(0, h * 0.01)
                cx = w * (0.5 + 0.05 * np.sin(li)) + rng.normal(0, w * 0.01)
                r = np.hypot(yy - cy, xx - cx)
                ring = (r < h * 0.05) & (r > h * 0.05 * (0.7 - 0.3 * sev[li]))
                img[ring] += 150
                pts.append((lv, cx / w * size, cy / h * size, sev[li]))
            stored = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
            rel = f"images/{study}/{900 + st}_{k + 1}.jpg"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            stored.save(folder / rel, quality=95)
            labelled = [p for j, p in enumerate(pts) if rng.random() < 0.7 or j == k]
            s_rows.append({"path": rel, "study_id": study, "series_id": str(900 + st), "instance_number": k + 1,
                           "rows": rows, "cols": cols, "n_points": len(labelled)})
            for lv, x, y, sv in labelled:
                p_rows.append({"path": rel, "study_id": study, "series_id": str(900 + st),
                               "instance_number": k + 1, "condition": cond, "level": lv,
                               "severity": vocab.SEVERITIES[sv], "x": round(x, 3), "y": round(y, 3)})
    import pandas as pd

    write_csv_atomic(pd.DataFrame(s_rows), folder / SLICES_CSV)
    write_csv_atomic(pd.DataFrame(p_rows), folder / POINTS_CSV)
    return folder
