"""`spinegrade train` for slice graders: split by study, build datasets and model, run the engine.

The run folder gets `config.json` (the TrainConfig), `splits.csv` (every study's fold and whether it
trained or validated; `evaluate` reads it to score only unseen studies), and what the engine writes.
Rows come from a slice index today; another source of rows (an RSNA folder) is another `_datasets_from_*`.
"""

from __future__ import annotations

import dataclasses
import json
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from .. import vocab
from ..files import atomic_write_text, write_csv_atomic
from ..data.slices import COND_DIM, COND_LAYOUT, NORMALISATION, SliceDataset, png_source, read_index, study_folds
from ..errors import DataError
from ..evaluate.metric import prior_probs
from .checkpoint import LAST
from .config import TrainConfig

CONFIG = "config.json"
SPLITS = "splits.csv"
# Fields that may differ when a run is resumed: where and how fast it runs, not what it computes.
_RESUMABLE_CHANGES = {("loop", "device"), ("loop", "workers")}


def label_schema() -> dict:
    """What a grader's outputs and condition input mean, stored in its checkpoints."""
    return {"classes": list(vocab.SEVERITY_KEYS), "severities": list(vocab.SEVERITIES),
            "class_weights": list(vocab.SEVERITY_WEIGHTS), "conditions": list(vocab.CONDITIONS),
            "levels": list(vocab.LEVELS), "cond_layout": list(COND_LAYOUT)}


def read_split(run_dir: str | Path) -> pd.DataFrame:
    """A run's splits.csv: study_id (str), fold, role (train | val)."""
    p = Path(run_dir) / SPLITS
    if not p.is_file():
        raise DataError(f"{p}: no split recorded in this run folder")
    return pd.read_csv(p, dtype={"study_id": str, "role": str})


def _config_changes(old: dict, new: dict, prefix: tuple = ()) -> list[str]:
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict) and k not in ("model_kwargs",):
            out += _config_changes(a, b, prefix + (k,))
        elif a != b and prefix + (k,) not in _RESUMABLE_CHANGES:
            out.append(f"{'.'.join(prefix + (k,))}: {a!r} -> {b!r}")
    return out


def _check_run_dir(out: Path, cfg: TrainConfig, resume: bool) -> None:
    if not resume:
        if (out / LAST).exists():
            raise DataError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose "
                            f"another --out")
        return
    if (out / CONFIG).exists():
        # Compared as JSON so that a tuple given in Python equals the list read back from config.json.
        changes = _config_changes(TrainConfig.load(out / CONFIG).to_dict(), json.loads(json.dumps(cfg.to_dict())))
        if changes:
            raise DataError(f"{out}: --resume with a different configuration: {'; '.join(changes)}")


def _datasets_from_index(cfg: TrainConfig):
    """(train dataset, val dataset, split table) for a slice index; rows without a label do not train."""
    from .augment import augment_slice

    index = read_index(cfg.index)
    folds = study_folds(index, cfg.folds, cfg.loop.seed)
    in_val = folds.reindex(index.study_id).to_numpy() == cfg.val_fold
    labelled = index.label >= 0
    train_idx, val_idx = index.subset(~in_val & labelled), index.subset(in_val & labelled)
    if not len(train_idx) or not len(val_idx):
        raise DataError(f"{cfg.index}: fold {cfg.val_fold} of {cfg.folds} leaves "
                        f"{len(train_idx)} labelled training and {len(val_idx)} validation rows")
    split = pd.DataFrame({"study_id": folds.index, "fold": folds.to_numpy(),
                          "role": np.where(folds.to_numpy() == cfg.val_fold, "val", "train")})
    source = png_source(index.root)
    aug = partial(augment_slice, cfg=cfg.augment) if cfg.augment.enabled else None
    return (SliceDataset(train_idx, source, cfg.image_size, augment=aug, seed=cfg.loop.seed),
            SliceDataset(val_idx, source, cfg.image_size), split)


def train_slices(cfg: TrainConfig, out: str | Path, resume: bool = False, log=print):
    """Train a slice grader as `cfg` says into the run folder `out`; returns the engine's FitResult.

    resume: continue from `out/last.pt` when it exists (the configuration must match), else start.
    Under torchrun every process calls this; rank 0 writes.
    """
    from ..models import create_model
    from .distributed import barrier, setup, teardown
    from .engine import ClassificationTask, fit, seed_everything

    if cfg.index is None:
        raise DataError("no training rows: give --index INDEX.csv")
    cfg = dataclasses.replace(cfg, index=str(Path(cfg.index).resolve())).validate()
    out = Path(out)
    ctx = setup(cfg.loop.device)
    try:
        _check_run_dir(out, cfg, resume)
        train_ds, val_ds, split = _datasets_from_index(cfg)
        barrier(ctx)  # every rank has checked the folder before rank 0 writes to it
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / CONFIG, json.dumps(cfg.to_dict(), indent=2) + "\n")
            write_csv_atomic(split, out / SPLITS)
            log(f"train: {len(train_ds)} rows of {int((split.role == 'train').sum())} studies; "
                f"validate: {len(val_ds)} rows of {int((split.role == 'val').sum())} studies (fold {cfg.val_fold}"
                f"/{cfg.folds}); model {cfg.model}; device {ctx.device}"
                + (f" x {ctx.world_size} processes" if ctx.distributed else ""))

        seed_everything(cfg.loop.seed)
        y_train = train_ds.index.label
        spec = {"name": cfg.model, "in_channels": int(train_ds.load_image(0).shape[0]),
                "num_outputs": vocab.N_CLASSES,
                "kwargs": {**cfg.model_kwargs, "cond_dim": COND_DIM if cfg.condition_input else 0}}
        model = create_model(spec["name"], spec["in_channels"], spec["num_outputs"], **spec["kwargs"])
        describe = {
            "task": "slice-grader",
            "model": spec,
            "labels": label_schema(),
            "preprocessing": {"image_size": cfg.image_size, "in_channels": spec["in_channels"],
                              "normalisation": NORMALISATION, "resize": "bilinear, antialiased, aspect not kept"},
            "prior": {"class_counts": np.bincount(y_train, minlength=vocab.N_CLASSES).tolist(),
                      "class_prior": prior_probs(y_train).tolist(),
                      "weighted_prior": prior_probs(y_train, weighted=True).tolist()},
            "config": cfg.to_dict(),
        }
        task = ClassificationTask(vocab.SEVERITY_WEIGHTS if cfg.class_weights == "metric" else None)
        result = fit(model, train_ds, val_ds, task, cfg.loop, out, ctx, describe, resume=resume, log=log)
        if ctx.is_main:
            log(f"best epoch {result.best_epoch + 1}: {task.score_key} {result.best_score:.4f} -> {out / 'best.pt'}")
        return result
    finally:
        teardown(ctx)
