"""The study-level stage: a study's graded positions (the ten foramina: two sides x five levels) read together.

Stenosis is correlated across the levels and sides of one patient; the first stage grades each crop alone. This
stage takes the first stage's probabilities of every position of the study (a position not graded is marked
missing) and gives each position's grade again. It is a correction of the first stage, not a new classifier:
each position's own log-probabilities enter with one shared scale (a temperature fitted on out-of-fold rows),
plus a class bias and, in mode `study`, a linear term in what the other side at the same level says (`features`);
every level and side pooled, 7 numbers in all, fitted with the metric's class weights (1, 2, 4) and an L2 penalty
chosen by grouped cross-validation. With no evidence the stage is the identity (scale 1, the rest 0).

Its input is each fold model's answer with that model's own temperature undone (`untemper`): the temperatures
fitted on each fold's small inner-validation set scatter (0.96 to 1.34 on the real foramina) where one fitted on
every fold's out-of-fold rows is steadier, so the stage also replaces them.

It must only ever be fitted on out-of-fold first-stage predictions: the predictions each fold's model made for
the studies it never saw (`fit_stage` takes them with their fold, `stage_cv` measures it fold by fold with the
stage refitted without the fold it scores). At inference it is applied to each fold model's predictions
separately (each is a model's answer on an unseen study, as the stage learned them) and the results averaged.

Inference (`StudyStage.apply`) is numpy only; fitting needs scipy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import vocab
from ..errors import DataError

if TYPE_CHECKING:
    import pandas as pd

STAGE_FILE = "study_stage.json"
KIND = "study-stage-2"
EPS = 1e-6
LAM_GRID = (0.001, 0.003, 0.01, 0.03, 0.1)
MODES = ("own", "study")  # own: each position's own probabilities only (calibration); study: the other side too


def untemper(p: np.ndarray, temperature) -> np.ndarray:
    """(..., 3) probabilities a model gave with temperature T -> with T undone (softmax(T log p), renormalised);
    T a number or one per row ((..., 1))."""
    if np.all(np.asarray(temperature) == 1.0):
        return np.asarray(p, dtype=float)
    return _softmax(temperature * np.log(np.clip(p, EPS, 1.0)))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


@dataclass
class StudyStage:
    """logits = (1 + scale) * log p_own + [0, features @ weights.T + bias] (classes moderate and severe against
    normal/mild); `conditions` the sides' conditions."""

    conditions: tuple[str, ...]
    levels: tuple[str, ...]
    mode: str
    weights: np.ndarray  # (2, features)
    scale: float
    bias: np.ndarray  # (2,)
    lam: float
    n_studies: int = 0

    def features(self, probs: np.ndarray, present: np.ndarray, ci: int, li: int) -> np.ndarray:
        """Inputs for the position (ci, li) of N studies: probs (N, conditions, levels, 3), present (N, C, L).
        own: none. study: how much more the other side at this level leans to Moderate or Severe than this one
        (log((moderate + severe) / normal_mild), the difference; 0 where it is missing) and a missing flag."""
        n = len(probs)
        if self.mode == "own":
            return np.zeros((n, 0))
        if len(self.conditions) < 2:
            return np.column_stack([np.zeros(n), np.ones(n)])
        lp = np.log(np.clip(probs[:, :, li], EPS, 1.0))
        score = np.logaddexp(lp[..., 1], lp[..., 2]) - lp[..., 0]  # (N, C)
        cj = (ci + 1) % len(self.conditions)
        other = present[:, cj, li]
        return np.column_stack([np.where(other, score[:, cj] - score[:, ci], 0.0), (~other).astype(float)])

    def logits(self, own: np.ndarray, x: np.ndarray) -> np.ndarray:
        z = (1.0 + self.scale) * np.log(np.clip(own, EPS, 1.0))
        z[:, 1:] += x @ self.weights.T + self.bias
        return z

    def apply(self, probs: np.ndarray, present: np.ndarray) -> np.ndarray:
        """(N, C, L, 3) first-stage probabilities, temperature undone (rows where `present` is False are
        ignored) -> the stage's."""
        out = np.zeros_like(probs, dtype=float)
        for li in range(len(self.levels)):
            for ci in range(len(self.conditions)):
                out[:, ci, li] = _softmax(self.logits(probs[:, ci, li], self.features(probs, present, ci, li)))
        return out

    def apply_rows(self, rows: list[tuple[str, str]], probs: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        """One study's graded rows ((condition, level) each) and one model's probabilities for them (N, 3), given
        with its temperature -> the stage's (N, 3). Rows of a condition or level the stage does not know keep
        their probabilities; a position given twice (two slices of one foramen) enters as the mean of its rows."""
        c_ix = {c: i for i, c in enumerate(self.conditions)}
        l_ix = {lv: i for i, lv in enumerate(self.levels)}
        raw = untemper(probs, temperature)
        grid = np.zeros((1, len(self.conditions), len(self.levels), 3))
        count = np.zeros((1, len(self.conditions), len(self.levels)))
        for (c, lv), p in zip(rows, raw):
            if c in c_ix and lv in l_ix:
                grid[0, c_ix[c], l_ix[lv]] += p
                count[0, c_ix[c], l_ix[lv]] += 1
        present = count > 0
        grid[present] /= count[present][:, None]
        staged = self.apply(grid, present)[0]
        out = np.array(probs, dtype=float, copy=True)
        for i, (c, lv) in enumerate(rows):
            if c in c_ix and lv in l_ix:
                out[i] = staged[c_ix[c], l_ix[lv]]
        return out

    def to_dict(self) -> dict:
        return {"kind": KIND, "mode": self.mode, "conditions": list(self.conditions),
                "levels": list(self.levels), "n_studies": self.n_studies, "lam": self.lam,
                "scale": round(float(self.scale), 6), "weights": self.weights.round(6).tolist(),
                "bias": self.bias.round(6).tolist(),
                "input": "each fold model's probabilities with its own temperature undone",
                "fitted_on": "out-of-fold first-stage predictions (each fold's model on the studies it never saw)"}

    @classmethod
    def from_dict(cls, d: dict) -> StudyStage:
        if d.get("kind") != KIND:
            raise DataError(f"not a study stage of this version (kind {d.get('kind')!r}, expected {KIND!r})")
        return cls(tuple(d["conditions"]), tuple(d["levels"]), d["mode"], np.asarray(d["weights"], float).reshape(2, -1),
                   float(d["scale"]), np.asarray(d["bias"], float), float(d["lam"]), int(d.get("n_studies", 0)))

    def save(self, path: Path) -> None:
        from ..files import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: Path) -> StudyStage:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError, DataError) as e:
            raise DataError(f"{path}: not a readable study stage: {e}") from None


def find_stage(path: Path) -> StudyStage | None:
    """The study stage stored with a model folder (a run or a folder of fold runs), None where there is none."""
    p = Path(path) / STAGE_FILE
    return StudyStage.load(p) if p.is_file() else None


# ---- fitting and measuring (scipy) ----------------------------------------------------------------------------

def grid_of(rows: pd.DataFrame, conditions, levels) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Rows (study_id, condition, level, normal_mild, moderate, severe[, label][, temperature]) -> per study probs
    (N, C, L, 3), present (N, C, L), labels (N, C, L; -1 where none), and the study ids. Where the rows carry the
    `temperature` their model gave them with, it is undone (`untemper`): the stage's input."""
    studies = sorted(rows["study_id"].astype(str).unique())
    s_ix = {s: i for i, s in enumerate(studies)}
    c_ix = {c: i for i, c in enumerate(conditions)}
    l_ix = {lv: i for i, lv in enumerate(levels)}
    n = len(studies)
    probs = np.zeros((n, len(conditions), len(levels), 3))
    count = np.zeros((n, len(conditions), len(levels)))
    labels = -np.ones((n, len(conditions), len(levels)), dtype=int)
    p = rows[list(vocab.SEVERITY_KEYS)].to_numpy(float)
    if "temperature" in rows.columns:
        p = untemper(p, rows["temperature"].to_numpy(float)[:, None])
    lab = rows["label"].to_numpy() if "label" in rows.columns else None
    for j, (s, c, lv) in enumerate(zip(rows["study_id"].astype(str), rows["condition"], rows["level"])):
        if c not in c_ix or lv not in l_ix:
            continue
        k = (s_ix[s], c_ix[c], l_ix[lv])
        probs[k] += p[j]
        count[k] += 1
        if lab is not None:
            labels[k] = int(lab[j])
    present = count > 0
    probs[present] /= count[present][:, None]
    return probs, present, labels, studies


def _fit_theta(stage: StudyStage, own: np.ndarray, x: np.ndarray, y: np.ndarray, lam: float) -> None:
    """Set the stage's scale, weights and bias: weighted log loss (the metric's class weights) + lam * |theta|^2,
    by L-BFGS from the identity."""
    from scipy.optimize import minimize

    d = x.shape[1]
    w = np.asarray(vocab.SEVERITY_WEIGHTS, float)[y]
    w = w / w.sum()
    lo = np.log(np.clip(own, EPS, 1.0))
    onehot = np.eye(3)[y]

    def unpack(th):
        return th[0], th[1:1 + 2 * d].reshape(2, d), th[1 + 2 * d:]

    def loss(th):
        sc, wt, bi = unpack(th)
        z = (1.0 + sc) * lo
        z[:, 1:] += x @ wt.T + bi
        z = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        q = np.exp(z - lse[:, None])
        g = w[:, None] * (q - onehot)  # d loss / d z
        grad = np.concatenate([[(g * lo).sum()], (g[:, 1:].T @ x).ravel(), g[:, 1:].sum(axis=0)])
        return float(-(w * (z[np.arange(len(y)), y] - lse)).sum() + lam * (th ** 2).sum()), grad + 2 * lam * th

    res = minimize(loss, np.zeros(1 + 2 * d + 2), jac=True, method="L-BFGS-B")
    stage.scale, stage.weights, stage.bias = (float(res.x[0]), *unpack(res.x)[1:])
    stage.lam = float(lam)


def _design(stage: StudyStage, probs, present, labels):
    """Every labelled present position's own probabilities, features, label and study index."""
    own, xs, ys, gs = [], [], [], []
    study_ix = np.arange(len(probs))
    for li in range(len(stage.levels)):
        for ci in range(len(stage.conditions)):
            keep = present[:, ci, li] & (labels[:, ci, li] >= 0)
            own.append(probs[keep, ci, li])
            xs.append(stage.features(probs[keep], present[keep], ci, li))
            ys.append(labels[keep, ci, li])
            gs.append(study_ix[keep])
    return np.concatenate(own), np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)


def fit_stage(probs: np.ndarray, present: np.ndarray, labels: np.ndarray, conditions, levels, mode: str = "study",
              lam: float | None = None) -> StudyStage:
    """Fit the stage on out-of-fold first-stage predictions (grid_of's arrays, temperatures undone); the penalty
    chosen among LAM_GRID by grouped (by study) 5-fold cross-validation where not given."""
    from ..metric import weighted_log_loss

    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: {', '.join(MODES)}")
    stage = StudyStage(tuple(conditions), tuple(levels), mode, np.zeros((2, 0)), 0.0, np.zeros(2), 0.0,
                       int(len(probs)))
    own, x, y, g = _design(stage, probs, present, labels)
    if len(np.unique(y)) < 2:
        raise DataError(f"fewer than two grades among {len(y)} labelled rows: no stage can be fitted")
    if lam is None:
        folds = g % 5
        best = None
        for cand in LAM_GRID:
            total = 0.0
            for k in range(5):
                tr, te = folds != k, folds == k
                if not te.any() or not tr.any():
                    continue
                _fit_theta(stage, own[tr], x[tr], y[tr], cand)
                wt = np.asarray(vocab.SEVERITY_WEIGHTS)[y[te]].sum()
                total += weighted_log_loss(y[te], _softmax(stage.logits(own[te], x[te]))) * wt
            if best is None or total < best[0]:
                best = (total, cand)
        lam = best[1]
    _fit_theta(stage, own, x, y, lam)
    return stage


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 10) -> tuple[float, list[dict]]:
    """Top-label ECE (equal-width confidence bins, unweighted rows) and its reliability table."""
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    edges = np.linspace(1 / 3, 1.0, bins + 1)
    table, ece = [], 0.0
    for i in range(bins):
        m = (conf >= edges[i]) & ((conf < edges[i + 1]) if i < bins - 1 else (conf <= edges[i + 1]))
        if not m.any():
            continue
        acc, cf = float((pred[m] == y[m]).mean()), float(conf[m].mean())
        ece += m.mean() * abs(acc - cf)
        table.append({"bin": f"{edges[i]:.2f}-{edges[i + 1]:.2f}", "n": int(m.sum()), "confidence": round(cf, 3),
                      "accuracy": round(acc, 3)})
    return float(ece), table


def stage_cv(rows: pd.DataFrame, conditions, levels, modes=MODES, lam: float | None = None) -> dict:
    """The stage measured fold by fold on out-of-fold rows (`fold`, `study_id`, condition, level, the three
    probabilities as the first stage gave them, `label`, and `temperature`, the one each fold model gave them
    with): for each fold, the stage is fitted on the other folds' rows only and scores this one (its penalty
    chosen inside those rows, unless `lam` is given).
    Returns per fold and per level the weighted log loss of the first stage and of each mode, and the pooled
    calibration (ECE, reliability table) of each."""
    from ..metric import weighted_log_loss

    out: dict = {"folds": [], "per_level": {}, "calibration": {}}
    pooled: dict[str, list] = {"first_stage": [], **{m: [] for m in modes}}
    ys = []
    for k in sorted(rows["fold"].unique()):
        tr, te = rows[rows["fold"] != k], rows[rows["fold"] == k]
        gtr = grid_of(tr, conditions, levels)
        pte, prte, lte, _ = grid_of(te, conditions, levels)  # the stage's input (temperatures undone)
        first = grid_of(te.drop(columns="temperature", errors="ignore"), conditions, levels)[0]  # as given
        keep = prte & (lte >= 0)
        y = lte[keep]
        row = {"fold": int(k), "n_rows": int(keep.sum()), "first_stage": weighted_log_loss(y, first[keep])}
        pooled["first_stage"].append((first[keep], None))
        for mode in modes:
            st = fit_stage(*gtr[:3], conditions, levels, mode=mode, lam=lam)
            ps = st.apply(pte, prte)[keep]
            row[mode] = weighted_log_loss(y, ps)
            pooled[mode].append((ps, None))
        ys.append((y, np.broadcast_to(np.arange(len(levels)), lte.shape)[keep]))
        out["folds"].append(row)
    y_all = np.concatenate([y for y, _ in ys])
    lv_all = np.concatenate([lv for _, lv in ys])
    for name, parts in pooled.items():
        p = np.concatenate([pp for pp, _ in parts])
        out["per_level"][name] = {lv: weighted_log_loss(y_all[lv_all == li], p[lv_all == li])
                                  for li, lv in enumerate(levels)}
        out["per_level"][name]["all"] = weighted_log_loss(y_all, p)
        ece, table = expected_calibration_error(y_all, p)
        out["calibration"][name] = {"ece": ece, "reliability": table}
    return out
