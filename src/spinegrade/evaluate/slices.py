"""`spinegrade evaluate` for slice graders: predict index rows with a run's model and score them honestly.

By default only rows of studies the run did not train on are used (its validation studies, or every row
of an index the run never saw). Next to the model stand two constant baselines fitted on the run's
training rows: the class prior (class frequencies) and the weighted prior (frequency x metric weight,
the best constant under the challenge's weighted log loss).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import vocab
from ..files import atomic_write_text, write_csv_atomic
from ..errors import DataError
from ..metric import TERMS, weighted_log_loss

N_BINS = 10
_FAMILY_TERMS = dict(zip(vocab.FAMILIES, TERMS))


def calibration_bins(y, probs, n_bins: int = N_BINS) -> dict:
    """Top-class confidence against accuracy in equal-width bins; `ece` is the count-weighted mean gap."""
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0, 1, n_bins + 1)
    b = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    count = np.bincount(b, minlength=n_bins)
    with np.errstate(invalid="ignore"):
        mean_conf = np.bincount(b, conf, minlength=n_bins) / count
        acc = np.bincount(b, correct, minlength=n_bins) / count
    gap = np.nan_to_num(np.abs(acc - mean_conf)) * count
    return {"edges": edges.tolist(), "count": count.tolist(), "confidence": np.nan_to_num(mean_conf).tolist(),
            "accuracy": np.nan_to_num(acc).tolist(), "ece": float(gap.sum() / max(count.sum(), 1))}


def classification_metrics(y, probs, families) -> dict:
    """Accuracy, balanced accuracy, per-class P/R/F1, weighted log loss (overall and per family), ECE.

    y: class indices (all labelled); probs: (n, 3); families: each row's condition family.
    """
    from sklearn.metrics import balanced_accuracy_score, precision_recall_fscore_support

    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    families = np.asarray(families)
    pred = probs.argmax(axis=1)
    labels = list(range(vocab.N_CLASSES))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    wll = {_FAMILY_TERMS[fam]: weighted_log_loss(y[families == fam], probs[families == fam])
           for fam in vocab.FAMILIES if (families == fam).any()}
    return {
        "accuracy": float((pred == y).mean()),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "per_class": {k: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, k in enumerate(vocab.SEVERITY_KEYS)},
        "weighted_log_loss": {"all": weighted_log_loss(y, probs), **wll},
        "log_loss": weighted_log_loss(y, probs, weights=(1, 1, 1)),
        "ece": calibration_bins(y, probs)["ece"],
    }


def _select(index, split: pd.DataFrame | None, fold: int | None, all_rows: bool) -> tuple[np.ndarray, str]:
    sid = index.study_id
    if all_rows:
        return np.ones(len(index), dtype=bool), "all rows"
    if split is None:
        raise DataError("the run folder has no splits.csv: pass --all to score every row")
    if fold is not None:
        in_fold = set(split.loc[split["fold"] == fold, "study_id"])
        if not in_fold:
            raise DataError(f"fold {fold} is not a fold of this run (folds {sorted(split['fold'].unique())})")
        return np.isin(sid, list(in_fold)), f"studies of fold {fold}"
    trained = set(split.loc[split["role"] == "train", "study_id"])
    return ~np.isin(sid, list(trained)), "studies the run did not train on"


def _json_safe(x):
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not np.isfinite(x):
        return None
    return x


def _report_text(metrics: dict, y, pred) -> str:
    from sklearn.metrics import classification_report

    lines = [f"run: {metrics['run']}", f"index: {metrics['index']}",
             f"rows: {metrics['n_rows']} ({metrics['selection']}), labelled {metrics['n_labelled']}", "",
             classification_report(y, pred, labels=list(range(vocab.N_CLASSES)), target_names=list(vocab.SEVERITIES),
                                   digits=3, zero_division=0), ""]
    names = ("model", "class_prior", "weighted_prior")
    keys = list(metrics["model"]["weighted_log_loss"])
    lines.append(f"{'':<46}" + "".join(f"{n:>16}" for n in names))
    for k in keys:
        lines.append(f"{'weighted log loss ' + k:<46}"
                     + "".join(f"{metrics[n]['weighted_log_loss'][k]:>16.4f}" for n in names))
    for k in ("accuracy", "balanced_accuracy", "ece"):
        lines.append(f"{k:<46}" + "".join(f"{metrics[n][k]:>16.4f}" for n in names))
    return "\n".join(lines) + "\n"


def evaluate_slices(run: str | Path, index: str | Path, out: str | Path, fold: int | None = None,
                    all_rows: bool = False, device: str = "auto", batch_size: int = 64, workers: int = 0,
                    log=print) -> dict:
    """Predict the selected rows of `index` with the run's best model; write predictions, metrics, figures.

    Writes to `out`: predictions.csv (the index columns as written + normal_mild, moderate, severe),
    metrics.json, classification_report.txt, confusion_matrix.png, reliability.png. fold: score the
    studies of that fold of the run's split; all_rows: every row. Returns the metrics dict.
    """
    import torch

    from ..inputs import COND_LAYOUT
    from ..data.slices import SliceDataset, png_source, read_index
    from ..train.checkpoint import checkpoint_path, load_model
    from ..device import inference_device
    from ..train.engine import ClassificationTask, predict
    from ..data.splits import SPLITS, read_split
    from ..plots import plot_confusion, plot_reliability

    dev = inference_device(device)
    model, ckpt = load_model(run, dev)
    if ckpt.get("kind") != "slice-grader":
        raise DataError(f"{run}: not a slice grader (kind {ckpt.get('kind')!r})")
    if ckpt["labels"]["cond_layout"] != list(COND_LAYOUT):
        raise DataError(f"{run}: the model's condition input layout differs from this version's")
    run_dir = checkpoint_path(run).parent
    idx = read_index(index)
    split = read_split(run_dir) if (run_dir / SPLITS).is_file() else None
    mask, selection = _select(idx, split, fold, all_rows)
    if not mask.any():
        raise DataError(f"{index}: no rows selected ({selection}); use --fold K or --all")
    sel = idx.subset(mask)
    ds = SliceDataset(sel, png_source(idx.root), ckpt["preprocessing"]["image_size"])
    channels = ds.load_image(0).shape[0]
    if channels != ckpt["model"]["in_channels"]:
        raise DataError(f"{index}: images have {channels} channel(s), the model takes {ckpt['model']['in_channels']}")
    log(f"predicting {len(sel)} rows ({selection}) with {checkpoint_path(run)} (epoch {ckpt['epoch'] + 1})")
    probs = torch.softmax(predict(model, ds, ClassificationTask(), dev, batch_size, workers), dim=1).numpy()

    out = Path(out)
    preds = sel.table.copy()
    for i, k in enumerate(vocab.SEVERITY_KEYS):
        preds[k] = probs[:, i]
    write_csv_atomic(preds, out / "predictions.csv")

    y_all = sel.label
    lab = y_all >= 0
    y, p = y_all[lab], probs[lab]
    families = np.array([vocab.CONDITION_BY_KEY[c].family for c in sel.condition])[lab]
    trained = set(split.loc[split["role"] == "train", "study_id"]) if split is not None else set()
    metrics: dict = {
        "run": str(checkpoint_path(run)), "index": str(index), "selection": selection, "epoch": ckpt["epoch"],
        "n_rows": int(len(sel)), "n_labelled": int(lab.sum()),
        "n_rows_from_training_studies": int(np.isin(sel.study_id, list(trained)).sum()),
    }
    if lab.any():
        metrics["model"] = classification_metrics(y, p, families)
        for name in ("class_prior", "weighted_prior"):
            const = np.tile(np.asarray(ckpt["prior"][name]), (len(y), 1))
            metrics[name] = {"probs": ckpt["prior"][name], **classification_metrics(y, const, families)}
    metrics = _json_safe(metrics)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    if lab.any():
        pred = p.argmax(axis=1)
        atomic_write_text(out / "classification_report.txt", _report_text(metrics, y, pred))
        from sklearn.metrics import confusion_matrix

        plot_confusion(confusion_matrix(y, pred, labels=list(range(vocab.N_CLASSES))), vocab.SEVERITIES,
                       out / "confusion_matrix.png", title=f"{ckpt['model']['name']}: {selection}")
        plot_reliability(calibration_bins(y, p), out / "reliability.png")
    else:
        log("no labelled rows among them: predictions only")
    return metrics
