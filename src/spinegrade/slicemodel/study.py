"""The study-level stage: a study's graded positions (the ten foramina: two sides x five levels) read together.

Stenosis is correlated across the levels and sides of one patient; the first stage grades each crop alone. This
stage takes the first stage's probabilities of every position of the study (a position not graded is marked
missing) and gives each position's grade again: one multinomial logistic regression, every level and side
pooled (`StudyStage.features` says what it reads: the position's own probabilities per level, its neighbours
across and along the spine, the study's mean; a missing flag for each). Fitted with the metric's class weights
(1, 2, 4), so it is also the calibration of the first stage, per level.

It must only ever be fitted on out-of-fold first-stage predictions: the predictions each fold's model made for
the studies it never saw (`fit_stage` takes them with their fold, `stage_cv` measures it fold by fold with the
stage refitted without the fold it scores). At inference it is applied to each fold model's predictions
separately (each is a model's answer on an unseen study, as the stage learned them) and the results averaged.

Inference (`StudyStage.apply`) is numpy only; fitting needs scikit-learn.
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
EPS = 1e-6
C_GRID = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
MODES = ("own", "study")  # own: each position's own probabilities only (per-level calibration); study: all of them


def _log_ratios(p: np.ndarray) -> np.ndarray:
    """(..., 3) probabilities -> (..., 2) log(moderate / normal_mild), log(severe / normal_mild)."""
    lp = np.log(np.clip(p, EPS, 1.0))
    return lp[..., 1:] - lp[..., :1]


@dataclass
class StudyStage:
    """One weighted multinomial logistic regression over every position (levels and sides pooled: a level's own
    weights enter through its one-hot and the own probabilities' interaction with it); `fill`: each position's
    mean log-ratios, used where a position is missing; `conditions` the sides' conditions."""

    conditions: tuple[str, ...]
    levels: tuple[str, ...]
    mode: str
    weights: np.ndarray  # (classes, features)
    bias: np.ndarray  # (classes,)
    fill: np.ndarray  # (len(conditions), len(levels), 2)
    c: float
    n_studies: int = 0

    def features(self, probs: np.ndarray, present: np.ndarray, ci: int, li: int) -> np.ndarray:
        """Inputs for the position (ci, li) of N studies: probs (N, conditions, levels, 3), present (N, C, L).

        own: its two log-ratios, their product with the level's one-hot, the level's one-hot. study adds, as
        log((moderate + severe) / normal_mild) with a missing flag each: the other side at this level, this side
        and the other side one level up and one down, and the mean over every other present position."""
        n, n_lv = len(probs), len(self.levels)
        lr = np.where(present[..., None], _log_ratios(probs), self.fill[None])
        own = lr[:, ci, li]
        onehot = np.zeros((n, n_lv))
        onehot[:, li] = 1.0
        parts = [own, (own[:, :, None] * onehot[:, None, :]).reshape(n, -1), onehot]
        if self.mode == "study":
            score = np.logaddexp(lr[..., 0], lr[..., 1])
            for dc, dl in ((1, 0), (0, -1), (0, 1), (1, -1), (1, 1)):
                cj, lj = (ci + dc) % len(self.conditions), li + dl
                if 0 <= lj < n_lv and (dc == 0 or len(self.conditions) > 1):
                    parts += [np.where(present[:, cj, lj], score[:, cj, lj], 0.0)[:, None],
                              (~present[:, cj, lj]).astype(float)[:, None]]
                else:
                    parts += [np.zeros((n, 1)), np.ones((n, 1))]
            others = present.copy()
            others[:, ci, li] = False
            cnt = others.sum(axis=(1, 2))
            mean = np.where(cnt > 0, (score * others).sum(axis=(1, 2)) / np.maximum(cnt, 1), 0.0)
            parts += [mean[:, None], (cnt == 0).astype(float)[:, None]]
        return np.concatenate(parts, axis=1)

    def apply(self, probs: np.ndarray, present: np.ndarray) -> np.ndarray:
        """(N, C, L, 3) first-stage probabilities (rows where `present` is False are ignored) -> the stage's."""
        out = np.zeros_like(probs, dtype=float)
        for li in range(len(self.levels)):
            for ci in range(len(self.conditions)):
                z = self.features(probs, present, ci, li) @ self.weights.T + self.bias
                z = np.exp(z - z.max(axis=1, keepdims=True))
                out[:, ci, li] = z / z.sum(axis=1, keepdims=True)
        return out

    def apply_rows(self, rows: list[tuple[str, str]], probs: np.ndarray) -> np.ndarray:
        """One study's graded rows ((condition, level) each, probabilities (N, 3)) -> the stage's (N, 3). Rows of
        a condition or level the stage does not know keep their probabilities; a position given twice (two
        slices of one foramen) enters as the mean of its rows."""
        c_ix = {c: i for i, c in enumerate(self.conditions)}
        l_ix = {lv: i for i, lv in enumerate(self.levels)}
        grid = np.zeros((1, len(self.conditions), len(self.levels), 3))
        count = np.zeros((1, len(self.conditions), len(self.levels)))
        for (c, lv), p in zip(rows, probs):
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
        return {"kind": "study-stage", "mode": self.mode, "conditions": list(self.conditions),
                "levels": list(self.levels), "n_studies": self.n_studies, "c": self.c,
                "fill": self.fill.round(6).tolist(), "weights": self.weights.round(6).tolist(),
                "bias": self.bias.round(6).tolist(),
                "fitted_on": "out-of-fold first-stage predictions (each fold's model on the studies it never saw)"}

    @classmethod
    def from_dict(cls, d: dict) -> StudyStage:
        if d.get("kind") != "study-stage":
            raise DataError(f"not a study stage (kind {d.get('kind')!r})")
        return cls(tuple(d["conditions"]), tuple(d["levels"]), d["mode"], np.asarray(d["weights"], float),
                   np.asarray(d["bias"], float), np.asarray(d["fill"], float), float(d["c"]), int(d.get("n_studies", 0)))

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


# ---- fitting and measuring (scikit-learn) -------------------------------------------------------------------

def grid_of(rows: pd.DataFrame, conditions, levels) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Rows (study_id, condition, level, normal_mild, moderate, severe[, label]) -> per study probs (N, C, L, 3),
    present (N, C, L), labels (N, C, L; -1 where none), and the study ids."""
    studies = sorted(rows["study_id"].astype(str).unique())
    s_ix = {s: i for i, s in enumerate(studies)}
    c_ix = {c: i for i, c in enumerate(conditions)}
    l_ix = {lv: i for i, lv in enumerate(levels)}
    n = len(studies)
    probs = np.zeros((n, len(conditions), len(levels), 3))
    count = np.zeros((n, len(conditions), len(levels)))
    labels = -np.ones((n, len(conditions), len(levels)), dtype=int)
    p = rows[list(vocab.SEVERITY_KEYS)].to_numpy(float)
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


def _wll(y: np.ndarray, p: np.ndarray) -> float:
    w = np.asarray(vocab.SEVERITY_WEIGHTS)[y]
    return float(-(w * np.log(np.clip(p[np.arange(len(y)), y], 1e-15, 1.0))).sum() / w.sum())


def _fit_weighted_lr(x: np.ndarray, y: np.ndarray, groups: np.ndarray, c: float | None):
    """A weighted multinomial logistic regression; C chosen by grouped 5-fold CV where not given."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    w = np.asarray(vocab.SEVERITY_WEIGHTS)[y]

    def fit(xx, yy, ww, cc):
        return LogisticRegression(C=cc, max_iter=2000).fit(xx, yy, sample_weight=ww)

    if c is None:
        best = None
        for cc in C_GRID:
            losses = []
            for tr, te in GroupKFold(n_splits=5).split(x, y, groups):
                m = fit(x[tr], y[tr], w[tr], cc)
                losses.append(_wll(y[te], _full_proba(m, x[te])) * w[te].sum())
            loss = sum(losses) / w.sum()
            if best is None or loss < best[0]:
                best = (loss, cc)
        c = best[1]
    return fit(x, y, w, c), c


def _full_proba(m, x: np.ndarray) -> np.ndarray:
    """predict_proba over all three classes (a class absent from the fit gets 0)."""
    p = np.zeros((len(x), 3))
    p[:, m.classes_] = m.predict_proba(x)
    return p


def fit_stage(probs: np.ndarray, present: np.ndarray, labels: np.ndarray, conditions, levels, mode: str = "study",
              c: float | None = None) -> StudyStage:
    """Fit the stage on out-of-fold first-stage predictions (grid_of's arrays); C per level by grouped CV."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: {', '.join(MODES)}")
    lr = _log_ratios(probs)
    fill = np.zeros((len(conditions), len(levels), 2))
    for ci in range(len(conditions)):
        for li in range(len(levels)):
            m = present[:, ci, li]
            fill[ci, li] = lr[m, ci, li].mean(axis=0) if m.any() else 0.0
    stage = StudyStage(tuple(conditions), tuple(levels), mode, np.zeros(0), np.zeros(3), fill, 0.0, int(len(probs)))
    study_ix = np.arange(len(probs))
    xs, ys, gs = [], [], []
    for li in range(len(levels)):
        for ci in range(len(conditions)):
            keep = present[:, ci, li] & (labels[:, ci, li] >= 0)
            xs.append(stage.features(probs[keep], present[keep], ci, li))
            ys.append(labels[keep, ci, li])
            gs.append(study_ix[keep])
    x, y, g = np.concatenate(xs), np.concatenate(ys), np.concatenate(gs)
    if len(np.unique(y)) < 2:
        raise DataError(f"fewer than two grades among {len(y)} labelled rows: no stage can be fitted")
    m, cc = _fit_weighted_lr(x, y, g, c)
    wts = np.zeros((3, x.shape[1]))
    bias = np.full(3, -30.0)  # a class never seen gets (almost) no probability
    wts[m.classes_] = m.coef_ if len(m.classes_) > 2 else np.vstack([-m.coef_, m.coef_]) / 2
    bias[m.classes_] = m.intercept_ if len(m.classes_) > 2 else np.array([-m.intercept_[0], m.intercept_[0]]) / 2
    stage.weights, stage.bias, stage.c = wts, bias, float(cc)
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


def stage_cv(rows: pd.DataFrame, conditions, levels, modes=MODES, c: float | None = None) -> dict:
    """The stage measured fold by fold on out-of-fold rows (`fold`, `study_id`, condition, level, the three
    probabilities, `label`): for each fold, the stage is fitted on the other folds' rows only and scores this one
    (its C chosen inside those rows, unless `c` is given).
    Returns per fold and per level the weighted log loss of the first stage and of each mode, and the pooled
    calibration (ECE, reliability table) of each."""
    out: dict = {"folds": [], "per_level": {}, "calibration": {}}
    pooled: dict[str, list] = {"first_stage": [], **{m: [] for m in modes}}
    ys = []
    for k in sorted(rows["fold"].unique()):
        tr, te = rows[rows["fold"] != k], rows[rows["fold"] == k]
        gtr = grid_of(tr, conditions, levels)
        pte, prte, lte, _ = grid_of(te, conditions, levels)
        keep = prte & (lte >= 0)
        y = lte[keep]
        row = {"fold": int(k), "n_rows": int(keep.sum()), "first_stage": _wll(y, pte[keep])}
        pooled["first_stage"].append((pte[keep], np.broadcast_to(np.arange(len(levels)), lte.shape)[keep]))
        for mode in modes:
            st = fit_stage(*gtr[:3], conditions, levels, mode=mode, c=c)
            ps = st.apply(pte, prte)[keep]
            row[mode] = _wll(y, ps)
            pooled[mode].append((ps, None))
        ys.append((y, np.broadcast_to(np.arange(len(levels)), lte.shape)[keep]))
        out["folds"].append(row)
    y_all = np.concatenate([y for y, _ in ys])
    lv_all = np.concatenate([lv for _, lv in ys])
    for name, parts in pooled.items():
        p = np.concatenate([pp for pp, _ in parts])
        out["per_level"][name] = {lv: _wll(y_all[lv_all == li], p[lv_all == li]) for li, lv in enumerate(levels)}
        out["per_level"][name]["all"] = _wll(y_all, p)
        ece, table = expected_calibration_error(y_all, p)
        out["calibration"][name] = {"ece": ece, "reliability": table}
    return out
