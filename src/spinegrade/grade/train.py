"""Train the stage-2 graders: one crop classifier per condition family, on the shared training engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import vocab
from ..inputs import COND_DIM
from ..metric import prior_probs
from .crops import DEFAULT_SPECS
from .data import CropDataset, Jitter, in_channels, training_items


def train_family(family: str, cache, ds, train_ids, val_ids, out_dir: Path, loop, ctx, model_name: str = "seed-cnn",
                 model_kwargs: dict | None = None, class_weights: str = "metric", resume: bool = False,
                 log=print) -> dict:
    """Train one family's grader into `out_dir`; returns its best validation figures."""
    from dataclasses import asdict

    from ..models import create_model
    from ..train.engine import ClassificationTask, fit, seed_everything

    seed_everything(loop.seed)
    train = training_items(cache, ds, train_ids, family)
    val = training_items(cache, ds, val_ids, family)
    if not train:
        raise ValueError(f"no labelled {family} points to train on")
    kwargs = dict(model_kwargs or {})
    model = create_model(model_name, in_channels(family), vocab.N_CLASSES, cond_dim=COND_DIM, **kwargs)
    prior = prior_probs([it.label for it in train])
    describe = {
        "kind": "grader",
        "family": family,
        "model": {"name": model_name, "in_channels": in_channels(family), "num_outputs": vocab.N_CLASSES,
                  "kwargs": {"cond_dim": COND_DIM, **kwargs}},
        "labels": {"severities": list(vocab.SEVERITIES), "keys": list(vocab.SEVERITY_KEYS)},
        "preprocessing": {"crop": asdict(DEFAULT_SPECS[family]), "axial_channels": family == vocab.SPINAL,
                          "intensity": "series 1-99.5 pct"},
        "prior": [float(v) for v in prior],
    }
    counts = np.bincount([it.label for it in train], minlength=vocab.N_CLASSES).tolist()
    log(f"grader {family}: {len(train)} training crops {counts}, {len(val)} validation crops")
    task = ClassificationTask(class_weights=vocab.SEVERITY_WEIGHTS if class_weights == "metric" else None)
    res = fit(model, CropDataset(train, family, Jitter(), seed=loop.seed), CropDataset(val, family), task, loop,
              out_dir, ctx, describe, resume=resume, log=log)
    return {"family": family, "best_epoch": res.best_epoch, "val_wll": res.best_score, "n_train": len(train),
            "n_val": len(val)}
