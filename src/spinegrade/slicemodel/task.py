"""What makes one slice task differ from another: its folder's reader, the localiser's channels, the grader's
classes, how its predictions are written and scored. Everything else (localiser, crop grader, training,
calibration, inference, fold ensembles) is the one machinery of this package.

Two tasks exist: `foramina` (Sagittal T1 slices, one heatmap per level at the foramen, three severities) and
`canal` (mid-sagittal T2 slices, a disc-centre and a canal heatmap per level, canal stenosis yes/no). A
checkpoint's kind names its task (`<task>-localizer`, `<task>-refiner`, `<task>-grader`), so a model folder says what it is.
Torch-free.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import vocab

if TYPE_CHECKING:
    import pandas as pd

    from .data import PointSlices


class SliceTask:
    """The base: one channel per level, the grade point on the level's channel, three severities."""

    name: str = ""
    channels: tuple[str, ...] = tuple(vocab.LEVELS)
    classes: tuple[str, ...] = tuple(vocab.SEVERITY_KEYS)
    default_class_weights: str = "metric"  # metric (the challenge's 1, 2, 4) | none
    folder_kind: str = ""  # what a folder of this task holds, for messages
    # the task's recipe: changes to the default LocalizerSpec, GraderSpec and their LoopConfigs
    localizer_defaults: dict = {}
    grader_defaults: dict = {}
    localizer_loop_defaults: dict = {}
    grader_loop_defaults: dict = {}
    refine = False  # the recipe trains a refiner (a second look at each localiser point; refiner.py)
    # further graders the recipe trains beside the first, averaged with it: each a tag and its changes to the
    # first grader's GraderSpec ("grader") and LoopConfig ("loop")
    extra_graders: tuple[dict, ...] = ()
    # graders started from pretrained weights, added to those when asked (`train --slices --pretrained-grader`):
    # they need the optional `pretrained` extra, so the plain recipe trains without them
    pretrained_graders: tuple[dict, ...] = ()
    # the points of a level on the slices of one series made to agree where a second candidate allows (sides.py);
    # for tasks whose levels are seen on several slices of a series
    series_together = False
    # the conditions a study-level stage reads together (each at every level; `study.py`); () for none
    stage_conditions: tuple[str, ...] = ()

    @property
    def localizer_kind(self) -> str:
        return f"{self.name}-localizer"

    @property
    def refiner_kind(self) -> str:
        return f"{self.name}-refiner"

    @property
    def grader_kind(self) -> str:
        return f"{self.name}-grader"

    def class_weights(self, mode: str) -> tuple[float, ...] | None:
        return tuple(vocab.SEVERITY_WEIGHTS) if mode == "metric" and len(self.classes) == 3 else None

    def is_folder(self, folder: Path) -> bool:
        """Does this folder hold this task's files?"""
        raise NotImplementedError

    def read(self, folder: str | Path) -> PointSlices:
        raise NotImplementedError

    decode_together = False  # True: `decode` reads all channels at once (else each channel's peak alone)

    def decode(self, heatmaps: np.ndarray) -> np.ndarray:
        """(C, 3) peaks (x, y, height) in heatmap pixels from (C, H, W) heatmaps (with `decode_together`)."""
        from ..localize.heatmap import decode_heatmaps

        return decode_heatmaps(heatmaps)

    def row_channels(self, level: str) -> tuple[int, ...]:
        """The localiser channels of a grade row: the first is where its crop is centred."""
        return (vocab.LEVELS.index(level),)

    def prediction_row(self, probs: np.ndarray, xy: list[tuple[float, float]]) -> dict:
        """A row's columns in predictions.csv after path, condition and level."""
        return {**dict(zip(self.classes, map(float, probs))), "x_pred": round(xy[0][0], 3), "y_pred": round(xy[0][1], 3)}

    def output_columns(self) -> list[str] | None:
        """The columns of predictions.csv (None: every column predict_rows gives)."""
        return None

    def loss(self, y: np.ndarray, p: np.ndarray) -> float:
        """What the temperature minimises on held-back rows."""
        from ..metric import weighted_log_loss

        return weighted_log_loss(y, p)

    def score(self, ps: PointSlices, pred: pd.DataFrame, train_ps: PointSlices | None = None) -> dict:
        raise NotImplementedError

    def summary_line(self, heldout: dict) -> str:
        """One line of a held-out fold's figures, for the training log."""
        return ""

    def fold_row(self, heldout: dict) -> dict:
        """A fold's figures for cv.csv."""
        return {}

    def evaluate_line(self, ps: PointSlices, metrics: dict) -> str:
        """What `evaluate` says of its figures ('' where there is no truth to score)."""
        return ""


def task_by_name(name: str) -> SliceTask:
    if name == "foramina":
        from .foramina import FORAMINA

        return FORAMINA
    if name == "canal":
        from .canal import CANAL

        return CANAL
    from ..errors import DataError

    raise DataError(f"unknown slice task {name!r} (foramina, canal)")


def task_of_kind(kind: str | None) -> SliceTask:
    """The task a checkpoint kind (`<task>-localizer|grader`) belongs to."""
    return task_by_name(str(kind or "").rsplit("-", 1)[0])


def task_of_folder(folder: str | Path) -> SliceTask:
    """Which task a labelled slice folder is for, from its files; DataError naming what was looked for."""
    from ..errors import DataError

    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    for name in ("foramina", "canal"):
        t = task_by_name(name)
        if t.is_folder(root):
            return t
    raise DataError(f"{root}: neither a foramen slice folder (slices.csv + points.csv) nor a Sagittal T2 folder "
                    "(images/ with boxes.csv or images.csv)")
