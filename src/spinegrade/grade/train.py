"""Train the stage-2 graders: one crop classifier per condition family, on the shared training engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import vocab
from ..inputs import COND_DIM
from .data import CropDataset, training_items
from .spec import GraderSpec


def train_family(spec: GraderSpec, cache, ds, train_ids, val_ids, out_dir: Path, loop, ctx, resume: bool = False,
                 log=print, extra: dict | None = None) -> dict:
    """Train one family's grader as `spec` says into `out_dir`; returns its best validation figures.

    `extra` goes into every checkpoint (the run's plan as `config`).
    """
    from dataclasses import asdict

    from ..errors import DataError
    from ..models import BACKBONE, create_model, model_kind
    from ..train.checkpoint import label_schema, prior_record
    from ..metric import weighted_log_loss
    from ..train.engine import ClassificationTask, fit, seed_everything

    family = spec.family
    if model_kind(spec.network) != BACKBONE:
        raise DataError(f"grader {family}: {spec.network!r} is not a grading backbone (see `spinegrade info`)")
    seed_everything(loop.seed)
    train = training_items(cache, ds, train_ids, family)
    val = training_items(cache, ds, val_ids, family)
    if not train:
        raise ValueError(f"no labelled {family} points to train on")
    kwargs = {"cond_dim": COND_DIM if spec.condition_input else 0, **spec.network_kwargs}
    model = create_model(spec.network, spec.in_channels, vocab.N_CLASSES, **kwargs)
    labels = [it.label for it in train]
    describe = {
        "kind": "grader",
        "family": family,
        "model": {"name": spec.network, "in_channels": spec.in_channels, "num_outputs": vocab.N_CLASSES,
                  "kwargs": kwargs},
        "spec": asdict(spec),
        "labels": label_schema(),
        "preprocessing": {"crop": asdict(spec.crop), "axial_channels": family == vocab.SPINAL,
                          "intensity": "series 1-99.5 pct"},
        "prior": prior_record(labels),
        **(extra or {}),
    }
    counts = np.bincount(labels, minlength=vocab.N_CLASSES).tolist()
    log(f"grader {family}: {len(train)} training crops {counts}, {len(val)} validation crops")
    task = ClassificationTask(class_weights=vocab.SEVERITY_WEIGHTS if spec.class_weights == "metric" else None)
    jitter = spec.jitter if spec.augment else None
    res = fit(model, CropDataset(train, family, spec.crop, jitter, seed=loop.seed), CropDataset(val, family, spec.crop),
              task, loop, out_dir, ctx, describe, resume=resume, log=log)
    val_labels = np.array([it.label for it in val], dtype=np.int64)
    prior = np.asarray(describe["prior"]["weighted_prior"])
    return {"family": family, "best_epoch": res.best_epoch, "val_wll": res.best_score,
            "prior_val_wll": weighted_log_loss(val_labels, np.tile(prior, (len(val_labels), 1))) if len(val) else
            float("nan"), "n_train": len(train), "n_val": len(val)}
