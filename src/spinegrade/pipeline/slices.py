"""`spinegrade train` for slice graders: split by study, build datasets and model, run the engine.

The run folder gets `config.json` (the TrainConfig), `splits.csv` (every study's fold and whether it
trained or validated; `evaluate` reads it to score only unseen studies), and what the engine writes.
Rows come from a slice index today; another source of rows (an RSNA folder) is another `_datasets_from_*`.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path

from .. import progress, vocab
from ..data.slices import NORMALISATION, SliceDataset, png_source, read_index, study_folds
from ..data.splits import split_frame, write_split
from ..errors import DataError
from ..export import export_trained
from ..inputs import COND_DIM
from ..train.checkpoint import LAST
from ..train.config import CONFIG, TrainConfig


def _check_run_dir(out: Path, cfg: TrainConfig, resume: bool) -> None:
    if not resume:
        if (out / LAST).exists():
            raise DataError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose "
                            f"another --out")
        return
    cfg.check_resume(out)


def _datasets_from_index(cfg: TrainConfig):
    """(train dataset, val dataset, split table) for a slice index; rows without a label do not train."""
    from ..train.augment import augment_slice

    index = read_index(cfg.index)
    folds = study_folds(index, cfg.folds, cfg.loop.seed)
    in_val = folds.reindex(index.study_id).to_numpy() == cfg.val_fold
    labelled = index.label >= 0
    train_idx, val_idx = index.subset(~in_val & labelled), index.subset(in_val & labelled)
    if not len(train_idx) or not len(val_idx):
        raise DataError(f"{cfg.index}: fold {cfg.val_fold} of {cfg.folds} leaves "
                        f"{len(train_idx)} labelled training and {len(val_idx)} validation rows")
    split = split_frame(folds, cfg.val_fold)
    source = png_source(index.root)
    aug = partial(augment_slice, cfg=cfg.augment) if cfg.augment.enabled else None
    return (SliceDataset(train_idx, source, cfg.image_size, augment=aug, seed=cfg.loop.seed),
            SliceDataset(val_idx, source, cfg.image_size), split, folds)


def train_slices(cfg: TrainConfig, out: str | Path, resume: bool = False, log=print):
    """Train a slice grader as `cfg` says into the run folder `out`; returns the engine's FitResult.

    resume: continue from `out/last.pt` when it exists (the configuration must match), else start.
    Under torchrun every process calls this; rank 0 writes.
    """
    from ..models import create_model
    from ..train.checkpoint import label_schema, prior_record
    from ..train.distributed import barrier, setup, teardown
    from ..train.engine import ClassificationTask, fit, seed_everything

    if cfg.index is None:
        raise DataError("no training rows: give --index INDEX.csv")
    cfg = dataclasses.replace(cfg, index=str(Path(cfg.index).resolve())).validate()
    out = Path(out)
    ctx = setup(cfg.loop.device)
    try:
        _check_run_dir(out, cfg, resume)
        train_ds, val_ds, split, folds = _datasets_from_index(cfg)
        barrier(ctx)  # every rank has checked the folder before rank 0 writes to it
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            cfg.save(out / CONFIG)
            write_split(out, folds, cfg.val_fold)
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
            "kind": "slice-grader",
            "model": spec,
            "labels": label_schema(),
            "preprocessing": {"image_size": cfg.image_size, "in_channels": spec["in_channels"],
                              "normalisation": NORMALISATION, "resize": "bilinear, antialiased, aspect not kept"},
            "prior": prior_record(y_train),
            "config": cfg.to_dict(),
        }
        task = ClassificationTask(vocab.SEVERITY_WEIGHTS if cfg.class_weights == "metric" else None)
        with progress.command(cfg.loop.epochs, "epochs"):
            result = fit(model, train_ds, val_ds, task, cfg.loop, out, ctx, describe, resume=resume, log=log)
        if ctx.is_main:
            log(f"best epoch {result.best_epoch + 1}: {task.score_key} {result.best_score:.4f} -> {out / 'best.pt'}")
            export_trained(out, log)
        return result
    finally:
        teardown(ctx)
