"""A run's split: one file format for every kind of run, `RUN/splits.csv`.

Columns `study_id` (as written in the data), `fold` and `role` (`train` | `val`): every study the run
could use, so `evaluate` scores only the studies a run never trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError

SPLITS = "splits.csv"
_OLD_STUDY_SPLIT = "split.json"  # study-pipeline runs before splits.csv: {folds, val_fold, train, val}


def split_frame(folds: pd.Series, val_fold: int) -> pd.DataFrame:
    """The split table from each study's fold (a Series study_id -> fold) and the validation fold."""
    f = folds.to_numpy()
    return pd.DataFrame({"study_id": folds.index.astype(str), "fold": f.astype(np.int64),
                         "role": np.where(f == val_fold, "val", "train")})


def write_split(run_dir: str | Path, folds: pd.Series, val_fold: int) -> Path:
    """Write `RUN/splits.csv` atomically."""
    from ..files import write_csv_atomic

    return write_csv_atomic(split_frame(folds, val_fold), Path(run_dir) / SPLITS)


def read_split(run_dir: str | Path) -> pd.DataFrame:
    """A run's split: study_id (str), fold, role (train | val); DataError when the run has none."""
    run_dir = Path(run_dir)
    p = run_dir / SPLITS
    if p.is_file():
        return pd.read_csv(p, dtype={"study_id": str, "role": str})
    old = run_dir / _OLD_STUDY_SPLIT
    if old.is_file():
        d = json.loads(old.read_text())
        rows = [(str(s), -1, role) for role in ("train", "val") for s in d[role]]
        df = pd.DataFrame(rows, columns=["study_id", "fold", "role"])
        df.loc[df.role == "val", "fold"] = int(d["val_fold"])
        return df
    raise DataError(f"{p}: no split recorded in this run folder (is {run_dir} a run folder?)")


def studies(split: pd.DataFrame, role: str) -> list[str]:
    """Study ids of one role (`train` or `val`), in the file's order."""
    return split.loc[split.role == role, "study_id"].tolist()
