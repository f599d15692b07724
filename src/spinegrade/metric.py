"""The RSNA 2024 challenge metric: mean of three weighted log losses and the any-severe-spinal term.

Rows are weighted by their TRUE class (Normal/Mild 1, Moderate 2, Severe 4). Predicted probabilities are
clipped and each row normalised to sum 1 before scoring. Rows without a label are ignored (but a
submission must still predict them). Plain numpy + pandas: no torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from . import vocab

EPS = 1e-15
TERMS: tuple[str, ...] = (*(vocab.FAMILY_TERMS[f] for f in (vocab.SPINAL, vocab.FORAMINAL, vocab.SUBARTICULAR)),
                          "any_severe_spinal")
_FAMILY_TERM = {vocab.SPINAL: TERMS[0], vocab.FORAMINAL: TERMS[1], vocab.SUBARTICULAR: TERMS[2]}


def normalize_probs(probs, eps: float = EPS) -> np.ndarray:
    """Clip to [eps, 1-eps] and scale each row to sum 1 (the challenge's treatment of a submission)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    return p / p.sum(axis=-1, keepdims=True)


def row_weights(y_true) -> np.ndarray:
    """Metric weight of each row from its true class index."""
    return np.asarray(vocab.SEVERITY_WEIGHTS, dtype=np.float64)[np.asarray(y_true, dtype=np.int64)]


def weighted_log_loss(y_true, probs, weights: Sequence[float] | None = None, eps: float = EPS) -> float:
    """Class-weighted multi-class log loss; rows whose label is negative or NaN are skipped.

    weights: per-class weights (default the metric's 1/2/4); pass (1, 1, 1) for the plain log loss.
    Returns NaN when no row is labelled.
    """
    y = np.asarray(pd.array(y_true, dtype="Float64").to_numpy(dtype=np.float64, na_value=np.nan))
    keep = np.isfinite(y) & (y >= 0)
    if not keep.any():
        return float("nan")
    y = y[keep].astype(np.int64)
    p = normalize_probs(np.asarray(probs, dtype=np.float64)[keep], eps)
    w = np.asarray(weights if weights is not None else vocab.SEVERITY_WEIGHTS, dtype=np.float64)[y]
    return float(-(w * np.log(p[np.arange(y.size), y])).sum() / w.sum())


def _binary_weighted_log_loss(y: np.ndarray, p: np.ndarray, w: np.ndarray, eps: float = EPS) -> float:
    p = np.clip(p, eps, 1 - eps)
    return float(-(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum())


def _labels_long(labels: pd.DataFrame) -> pd.DataFrame:
    """Accept labels as (row_id, severity) rows or as a train.csv-like wide frame indexed by study_id."""
    if "row_id" in labels.columns:
        out = labels[["row_id", "severity"]].copy()
    else:
        wide = labels if labels.index.name == "study_id" else labels.set_index("study_id")
        cols = [c for c in vocab.TARGETS if c in wide.columns]
        out = wide[cols].stack(future_stack=True).reset_index()
        out.columns = ["study_id", "target", "severity"]
        out["row_id"] = out["study_id"].astype(str) + "_" + out["target"]
        out = out[["row_id", "severity"]]
    sev = out["severity"]
    if sev.dtype == object or pd.api.types.is_string_dtype(sev):
        sev = sev.map(lambda s: vocab.parse_severity(s) if isinstance(s, str) and s.strip() else np.nan)
    out["severity"] = pd.to_numeric(sev, errors="coerce")
    return out


def challenge_score(labels: pd.DataFrame, submission: pd.DataFrame) -> dict[str, float]:
    """Score a submission (row_id, normal_mild, moderate, severe) against labels.

    labels: either rows (row_id, severity) with severity a class index / challenge spelling / blank, or a
    wide train.csv-like frame (study_id + target columns). Returns the four terms and their mean `score`
    (a term with no labelled row is NaN and left out of the mean). Raises ValueError if a labelled row has
    no prediction.
    """
    lab = _labels_long(labels).dropna(subset=["severity"])
    sub = submission.set_index("row_id")
    missing = lab.loc[~lab["row_id"].isin(sub.index), "row_id"]
    if len(missing):
        raise ValueError(f"submission lacks {len(missing)} labelled rows, e.g. {missing.iloc[0]}")
    probs = normalize_probs(sub.loc[lab["row_id"], list(vocab.SEVERITY_KEYS)].to_numpy())
    y = lab["severity"].to_numpy().astype(np.int64)
    parsed = [vocab.parse_row_id(r) for r in lab["row_id"]]
    study = np.array([s for s, _, _ in parsed])
    family = np.array([vocab.CONDITION_BY_KEY[c].family for _, c, _ in parsed])

    out: dict[str, float] = {}
    for fam, term in _FAMILY_TERM.items():
        m = family == fam
        out[term] = weighted_log_loss(y[m], probs[m]) if m.any() else float("nan")

    m = family == vocab.SPINAL
    if m.any():
        df = pd.DataFrame({"study": study[m], "severe": (y[m] == 2).astype(float), "p": probs[m, 2],
                           "w": row_weights(y[m])})
        g = df.groupby("study").agg(severe=("severe", "max"), p=("p", "max"), w=("w", "max"))
        out[TERMS[3]] = _binary_weighted_log_loss(g["severe"].to_numpy(), g["p"].to_numpy(), g["w"].to_numpy())
    else:
        out[TERMS[3]] = float("nan")
    vals = [out[t] for t in TERMS if np.isfinite(out[t])]
    out["score"] = float(np.mean(vals)) if vals else float("nan")
    return out


def prior_probs(y_train, weighted: bool = False) -> np.ndarray:
    """Class prior from training labels (NaN/negative skipped), add-one smoothed.

    weighted=True gives the weight-optimal constant for the weighted log loss (frequency x weight,
    normalised), which is what minimises the challenge metric for a constant prediction.
    """
    y = np.asarray(pd.array(y_train, dtype="Float64").to_numpy(dtype=np.float64, na_value=np.nan))
    y = y[np.isfinite(y) & (y >= 0)].astype(np.int64)
    counts = np.bincount(y, minlength=vocab.N_CLASSES).astype(np.float64) + 1.0
    if weighted:
        counts = counts * np.asarray(vocab.SEVERITY_WEIGHTS)
    return counts / counts.sum()
