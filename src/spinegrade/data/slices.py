"""Slice datasets: one image (or 2.5D stack) per row, graded for one condition at one level.

An index CSV lists the rows: `path` (relative to the CSV's folder), `study_id`, `condition`, `level`,
`severity` (blank where unknown); other columns are kept but not used. Where the pixels come from is a
*source*: a callable that takes a row (a dict of the index columns) and returns a float array, (H, W) or
(C, H, W). `png_source` reads the index's PNG files; another source (a prepare cache, crops around
predicted points) plugs into the same `SliceDataset`.

The model is told which condition and level it grades through a condition vector (level, side and family
one-hot): one slice may carry rows for several levels and sides.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .. import vocab
from ..errors import DataError
from ..inputs import COND_DIM, COND_LAYOUT, condition_vector  # noqa: F401  (re-exported for existing callers)

if TYPE_CHECKING:
    import torch

INDEX_COLUMNS: tuple[str, ...] = ("path", "study_id", "condition", "level", "severity")
NORMALISATION = "per-image z-score after resizing"

Source = Callable[[Mapping[str, str]], np.ndarray]
# augment(image in [0, 1], condition, view, rng) -> (image, condition the image now shows)
Augment = Callable[["torch.Tensor", str, str, np.random.Generator], tuple["torch.Tensor", str]]


@dataclass
class SliceIndex:
    """The rows of an index, parsed: `table` keeps every column as written (strings), the arrays are parsed."""

    table: pd.DataFrame
    root: Path  # folder that `path` is relative to
    condition: np.ndarray  # vocab condition keys
    level: np.ndarray  # vocab level keys
    label: np.ndarray  # class index, -1 where unlabelled
    view: np.ndarray  # series role each image was taken from

    def __len__(self) -> int:
        return len(self.table)

    @property
    def study_id(self) -> np.ndarray:
        return self.table["study_id"].to_numpy()

    def subset(self, mask) -> SliceIndex:
        """The rows where `mask` is true (a boolean array or integer positions), order kept."""
        pos = np.flatnonzero(mask) if np.asarray(mask).dtype == bool else np.asarray(mask, dtype=np.int64)
        return SliceIndex(self.table.iloc[pos].reset_index(drop=True), self.root, self.condition[pos],
                          self.level[pos], self.label[pos], self.view[pos])


def _parse_column(values, parse, what: str, csv: Path) -> list:
    out = []
    for i, v in enumerate(values):
        try:
            out.append(parse(v))
        except ValueError as e:
            raise DataError(f"{csv}: line {i + 2}: {what}: {e}") from None
    return out


def read_string_table(path: Path, required, noun: str = "") -> pd.DataFrame:
    """A CSV with every cell a string as written (paths echoed back verbatim, blank cells blank); DataError
    naming the file when it cannot be read, lacks a `required` column or has no rows. `noun` names the table
    in the messages ("index")."""
    what = f"{noun} " if noun else ""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the {noun or 'CSV'}: {e}") from None
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise DataError(f"{path}: {what}lacks column(s) {', '.join(missing)} (needs {', '.join(required)})")
    if table.empty:
        raise DataError(f"{path}: {what}has no rows")
    return table


def read_index(csv: str | Path, check_files: bool = True) -> SliceIndex:
    """Read a slice index CSV; DataError naming the file and row on a missing column or an unknown word.

    A `view` column (a series role) is optional; without it each row's view is the one its condition is
    read on best. check_files: fail early, naming one, when image files are missing.
    """
    csv = Path(csv)
    table = read_string_table(csv, INDEX_COLUMNS, "index")
    condition = _parse_column(table["condition"], vocab.parse_condition, "condition", csv)
    level = _parse_column(table["level"], vocab.parse_level, "level", csv)
    label = _parse_column(table["severity"], lambda s: vocab.parse_severity(s) if s.strip() else -1,
                          "severity", csv)
    if "view" in table.columns:
        view = _parse_column(table["view"], vocab.parse_role, "view", csv)
    else:
        view = [vocab.CONDITION_BY_KEY[c].view for c in condition]
    index = SliceIndex(table, csv.parent, np.array(condition, dtype=object), np.array(level, dtype=object),
                       np.array(label, dtype=np.int64), np.array(view, dtype=object))
    if check_files:
        absent = [p for p in table["path"] if not (index.root / p).is_file()]
        if absent:
            raise DataError(f"{csv}: {len(absent)} image file(s) missing, e.g. {index.root / absent[0]}")
    return index


def png_source(root: str | Path) -> Source:
    """A source reading the row's `path` (relative to `root`) as a grey image, float32 in its own units."""
    root = Path(root)

    def read(row: Mapping[str, str]) -> np.ndarray:
        from PIL import Image

        path = root / row["path"]
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "I", "I;16", "F"):
                    im = im.convert("L")
                return np.asarray(im, dtype=np.float32)
        except OSError as e:
            raise DataError(f"{path}: cannot read the image: {e}") from None

    return read


class SliceDataset:
    """Items `{image (C, S, S) float32, cond (COND_DIM,), label (-1 unlabelled), row}` for a SliceIndex.

    Images are resized to `image_size` and z-scored per image. An `augment` callable gets the image
    scaled to [0, 1] and may mirror it; it returns the condition the image then shows, from which the
    condition vector is built. Augmentation draws from a generator seeded by (seed, epoch, row), so a
    run is reproducible whatever the number of loader workers and after a resume (`set_epoch`).
    """

    def __init__(self, index: SliceIndex, source: Source, image_size: int, augment: Augment | None = None,
                 seed: int = 0):
        self.index = index
        self.source = source
        self.image_size = int(image_size)
        self.augment = augment
        self.seed = int(seed)
        self.epoch = 0
        self._rows = index.table.to_dict("records")

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def load_image(self, i: int):
        """Row i's image as a (C, S, S) float tensor scaled to [0, 1] (before augmentation)."""
        import torch
        import torch.nn.functional as F

        arr = np.asarray(self.source(self._rows[i]), dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise DataError(f"row {i} ({self._rows[i].get('path', '')}): expected a 2D image or a (C, H, W) "
                            f"stack, got shape {arr.shape}")
        x = torch.from_numpy(np.ascontiguousarray(arr))[None]
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        x = x[0]
        lo, hi = x.amin(), x.amax()
        return (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)

    def __getitem__(self, i: int) -> dict:
        import torch

        x = self.load_image(i)
        condition = self.index.condition[i]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            x, condition = self.augment(x, condition, self.index.view[i], rng)
        x = (x - x.mean()) / x.std().clamp_min(1e-6)
        return {
            "image": x.float().contiguous(),
            "cond": torch.from_numpy(condition_vector(condition, self.index.level[i])),
            "label": torch.tensor(self.index.label[i], dtype=torch.long),
            "row": torch.tensor(i, dtype=torch.long),
        }


def study_folds(index: SliceIndex, n_folds: int, seed: int = 0) -> pd.Series:
    """Fold of each study of the index (Series study_id -> fold), by the project's `rsna.make_folds`.

    The index's labels are laid out as a train.csv-like table (one row per study, its worst grade per
    target), so folds are stratified on each study's severity profile the same way everywhere.
    """
    from .rsna import make_folds

    sid = pd.to_numeric(pd.Series(index.study_id), errors="coerce")
    if sid.isna().any():
        bad = index.study_id[sid.isna().to_numpy()][0]
        raise DataError(f"study id {bad!r} is not an integer (RSNA study ids are)")
    rows = pd.DataFrame({"study_id": sid.astype("int64"),
                         "target": [vocab.target(c, lv) for c, lv in zip(index.condition, index.level)],
                         "label": np.where(index.label >= 0, index.label, np.nan)})
    wide = rows.pivot_table(index="study_id", columns="target", values="label", aggfunc="max", dropna=False)
    wide = wide.reindex(columns=list(vocab.TARGETS), index=pd.unique(rows["study_id"]))
    wide.index.name = "study_id"
    folds = make_folds(wide, n_folds, seed)
    folds.index = folds.index.map(dict(zip(rows["study_id"], index.study_id)))  # back to the ids as written
    return folds


def write_synthetic_index(folder: str | Path, n_studies: int = 8, rows_per_study: int = 6, size: int = 48,
                          seed: int = 0, unlabelled: int = 0) -> Path:
    """Write a small PNG slice index whose grade is visible (a bright disc that grows with severity).

    For tests and smoke runs without real data. Images lie in a folder whose name has spaces; conditions
    alternate over foraminal (sagittal) and subarticular (axial) on both sides. `unlabelled` rows at the
    end get a blank severity. Returns the index path.
    """
    from PIL import Image

    from ..files import write_csv_atomic

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    conditions = vocab.FAMILY_CONDITIONS[vocab.FORAMINAL] + vocab.FAMILY_CONDITIONS[vocab.SUBARTICULAR]
    yy, xx = np.mgrid[:size, :size]
    rows = []
    n = n_studies * rows_per_study
    for k in range(n):
        study = 1000 + k // rows_per_study
        sev = int(rng.choice(3, p=(0.6, 0.25, 0.15)))
        cy, cx = rng.uniform(0.35, 0.65, size=2) * size
        img = rng.normal(60, 12, size=(size, size))
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < (size * (0.08 + 0.07 * sev)) ** 2] += 140
        rel = f"slices of study {study}/img {k}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / rel)
        rows.append({"path": rel, "study_id": str(study), "condition": conditions[k % 4],
                     "level": vocab.LEVELS[k % len(vocab.LEVELS)],
                     "severity": "" if k >= n - unlabelled else vocab.SEVERITIES[sev]})
    return write_csv_atomic(pd.DataFrame(rows), folder / "index.csv")
