"""The foramen task: real Sagittal T1 slices with neural-foramen points and grades (`slices.csv` + `points.csv`
+ images, the layout of the shared `rsna2024_sagT1_foramina_vbs2004`).

One slice per row of `slices.csv` (its original DICOM matrix `rows x cols`), one foramen per row of
`points.csv` (condition, level, and as truth only: severity, x, y). The localiser has one heatmap per level at
the foramen; the grader reads three severities, scored with the challenge's weighted log loss.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import vocab
from ..errors import DataError
from .data import POINT_COLUMNS, SLICE_COLUMNS, PointSlices, error_summary, stored_shape
from .task import SliceTask

if TYPE_CHECKING:
    import pandas as pd

SLICES_CSV = "slices.csv"
POINTS_CSV = "points.csv"
FORAMINAL = vocab.FAMILY_CONDITIONS[vocab.FORAMINAL]


def _read_csv(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: file not found (a point-labelled slice folder has {SLICES_CSV} and {POINTS_CSV})")
    from ..data.slices import read_string_table

    return read_string_table(path, required)


def _parse(df: pd.DataFrame, col: str, parse, path: Path) -> list:
    out = []
    for i, v in enumerate(df[col]):
        try:
            out.append(parse(v))
        except (ValueError, TypeError) as e:
            raise DataError(f"{path}: line {i + 2}: {col} {v!r}: {e}") from None
    return out


def _positive_int(s: str) -> int:
    v = int(s)
    if v <= 0:
        raise ValueError("must be a positive integer")
    return v


def _coordinate(s: str) -> float:
    v = float(s)
    if not np.isfinite(v) or v < 0:
        raise ValueError("must be a finite number >= 0")
    return v


def _foraminal(s: str) -> str:
    c = vocab.parse_condition(s)
    if c not in FORAMINAL:
        raise ValueError(f"not a neural foraminal condition ({', '.join(FORAMINAL)})")
    return c


def read_point_slices(folder: str | Path, check_files: bool = True) -> PointSlices:
    """Read and validate a point-labelled slice folder; DataError naming the file and line on any problem.

    Truth columns (severity, x, y) are optional: without them the set can be predicted, not scored.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected {SLICES_CSV}, {POINTS_CSV} and the images)")
    sp, pp = root / SLICES_CSV, root / POINTS_CSV
    slices = _read_csv(sp, SLICE_COLUMNS)
    points = _read_csv(pp, POINT_COLUMNS)
    slices["rows"] = _parse(slices, "rows", _positive_int, sp)
    slices["cols"] = _parse(slices, "cols", _positive_int, sp)
    dup = slices["path"].duplicated()
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(f"{sp}: line {i + 2}: path {slices['path'].iloc[i]!r} listed twice")
    points["condition"] = _parse(points, "condition", _foraminal, pp)
    points["level"] = _parse(points, "level", vocab.parse_level, pp)
    known = set(slices["path"])
    for i, p in enumerate(points["path"]):
        if p not in known:
            raise DataError(f"{pp}: line {i + 2}: path {p!r} is not in {SLICES_CSV}")
    study_of = dict(zip(slices["path"], slices["study_id"]))
    for i, (p, s) in enumerate(zip(points["path"], points["study_id"])):
        if study_of[p] != s:
            raise DataError(f"{pp}: line {i + 2}: study_id {s} differs from {SLICES_CSV}'s {study_of[p]} for {p}")
    has_truth = "severity" in points.columns and bool((points["severity"].str.strip() != "").all())
    if has_truth:
        points["label"] = _parse(points, "severity", vocab.parse_severity, pp)
    has_points = all(c in points.columns for c in ("x", "y")) and bool(
        (points["x"].str.strip() != "").all() and (points["y"].str.strip() != "").all())
    if has_points:
        points["x"] = _parse(points, "x", _coordinate, pp)
        points["y"] = _parse(points, "y", _coordinate, pp)
    if check_files:
        absent = [p for p in slices["path"] if not (root / p).is_file()]
        if absent:
            raise DataError(f"{sp}: {len(absent)} image file(s) missing, e.g. {root / absent[0]}")
    return PointSlices(root, slices, points, has_truth, has_points)




def write_synthetic_point_slices(folder: str | Path, n_studies: int = 12, slices_per_study: int = 2,
                                 size: int = 64, seed: int = 0, rows_cols=((320, 320), (384, 384), (512, 640))
                                 ) -> Path:
    """A small point-labelled slice folder in the real layout, whose grade is visible at the point.

    Each slice holds five "foramina" (bright rings, one per level, top to bottom, slightly curved) whose
    hole shrinks with severity; the stored image is stretched from its `rows x cols` like the real set's.
    For tests and smoke runs without real data. Returns the folder.
    """
    from PIL import Image

    from ..files import write_csv_atomic

    folder = Path(folder)
    rng = np.random.default_rng(seed)
    s_rows, p_rows = [], []
    for st in range(n_studies):
        study = str(5000 + st)
        rows, cols = rows_cols[st % len(rows_cols)]
        for k in range(slices_per_study):
            side = vocab.SIDES[k % 2]
            cond = vocab.condition_at(vocab.FORAMINAL, side)
            # Draw in original proportions, then stretch to the stored square like the real set.
            h, w = rows // 4, cols // 4
            yy, xx = np.mgrid[:h, :w]
            img = rng.normal(50, 8, size=(h, w))
            sev = rng.choice(3, size=5, p=(0.6, 0.25, 0.15))
            pts = []
            for li, lv in enumerate(vocab.LEVELS):
                cy = h * (0.2 + 0.15 * li) + rng.normal(0, h * 0.01)
                cx = w * (0.5 + 0.05 * np.sin(li)) + rng.normal(0, w * 0.01)
                r = np.hypot(yy - cy, xx - cx)
                ring = (r < h * 0.05) & (r > h * 0.05 * (0.7 - 0.3 * sev[li]))
                img[ring] += 150
                pts.append((lv, cx / w * size, cy / h * size, sev[li]))
            stored = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)
            rel = f"images/{study}/{900 + st}_{k + 1}.jpg"
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            stored.save(folder / rel, quality=95)
            labelled = [p for j, p in enumerate(pts) if rng.random() < 0.7 or j == k]
            s_rows.append({"path": rel, "study_id": study, "series_id": str(900 + st), "instance_number": k + 1,
                           "rows": rows, "cols": cols, "n_points": len(labelled)})
            for lv, x, y, sv in labelled:
                p_rows.append({"path": rel, "study_id": study, "series_id": str(900 + st),
                               "instance_number": k + 1, "condition": cond, "level": lv,
                               "severity": vocab.SEVERITIES[sv], "x": round(x, 3), "y": round(y, 3)})
    import pandas as pd

    write_csv_atomic(pd.DataFrame(s_rows), folder / SLICES_CSV)
    write_csv_atomic(pd.DataFrame(p_rows), folder / POINTS_CSV)
    return folder


def point_errors(ps: PointSlices, pred_xy: np.ndarray) -> np.ndarray:
    """Each labelled point's distance to its prediction (rows of `ps.points`, stored-image x, y), in pixels of
    the original matrix scaled to 250 on its longer side (the figure `localisation_px250` summarises)."""
    errs = []
    for r, (xp, yp) in zip(ps.points.itertuples(index=False), np.asarray(pred_xy, float)):
        st = stored_shape(ps, r.path)
        f = ps.frame(r.path, 0, st)
        errs.append(float(f.error_px250((xp - r.x) * f.cols / st[1], (yp - r.y) * f.rows / st[0])))
    return np.asarray(errs)


def score_rows(ps: PointSlices, pred: pd.DataFrame, train_ps: PointSlices | None = None) -> dict:
    """Weighted log loss (+ yardsticks) and localisation errors of predictions against the truth in `ps`."""
    from sklearn.metrics import balanced_accuracy_score

    from ..metric import prior_probs, weighted_log_loss

    out: dict = {"n_rows": len(ps), "n_studies": int(ps.points["study_id"].nunique())}
    if ps.has_truth:
        y = ps.labels
        p = pred[list(vocab.SEVERITY_KEYS)].to_numpy()
        out["weighted_log_loss"] = weighted_log_loss(y, p)
        out["balanced_accuracy"] = float(balanced_accuracy_score(y, p.argmax(1)))
        out["per_level_wll"] = {lv: weighted_log_loss(y[ps.points["level"] == lv], p[ps.points["level"] == lv])
                                for lv in vocab.LEVELS}
        ref = train_ps if train_ps is not None and train_ps.has_truth else None
        if ref is not None:
            cp = prior_probs(ref.labels, weighted=True)
            out["class_prior_wll"] = weighted_log_loss(y, np.tile(cp, (len(y), 1)))
            lvp = np.zeros_like(p)
            for lv in vocab.LEVELS:
                lvp[(ps.points["level"] == lv).to_numpy()] = prior_probs(ref.labels[ref.points["level"] == lv],
                                                                          weighted=True)
            out["level_prior_wll"] = weighted_log_loss(y, lvp)
        else:  # evaluate: no training set at hand, the constant of this set itself
            out["class_prior_wll_of_this_set"] = weighted_log_loss(y, np.tile(prior_probs(y, weighted=True),
                                                                              (len(y), 1)))
    if ps.has_points:
        e = point_errors(ps, pred[["x_pred", "y_pred"]].to_numpy())
        lv = ps.points["level"].to_numpy()
        out["localisation_px250"] = error_summary(e)
        out["localisation_px250_per_level"] = {v: error_summary(e[lv == v]) for v in vocab.LEVELS}
    return out


class ForaminaTask(SliceTask):
    name = "foramina"
    folder_kind = "foramen slice folder (slices.csv + points.csv)"
    stage_conditions = FORAMINAL
    refine = True
    series_together = True
    # more graders per localiser, averaged with the first: more context at the same scale, a longer schedule (v4),
    # and two scales (v5: the crop and a second channel over 30 % of the slice, the neighbouring levels)
    extra_graders = ({"tag": "ctx", "grader": {"crop_frac": 0.22, "crop_px": 80}, "loop": {}},
                     {"tag": "g12", "grader": {}, "loop": {"epochs_scale": 1.5}},  # 12 epochs beside the first's 8
                     {"tag": "two30", "grader": {"context_frac": 0.3}, "loop": {}})
    # v6: a fifth, EfficientNet-Lite0 from ImageNet weights on the first's crop and schedule (5-fold CV of the first
    # stage 0.4776 -> 0.4746, better on 4 of 5 folds; with the study-level stage 0.469)
    pretrained_graders = ({"tag": "lite", "grader": {"network": "efficientnet-lite0", "network_kwargs": (),
                                                     "pretrained": True}, "loop": {}},)
    localizer_defaults = {"tta_zooms": (1.0, 0.92, 1.08), "second_peak_power": 4.0}
    localizer_loop_defaults = {"epochs": 12}  # v5: 12 instead of 8 (within 5 px 94.1 -> 94.4 %, better on every fold)

    def is_folder(self, folder: Path) -> bool:
        return (Path(folder) / SLICES_CSV).is_file() and (Path(folder) / POINTS_CSV).is_file()

    def read(self, folder):
        return read_point_slices(folder)

    def score(self, ps, pred, train_ps=None):
        return score_rows(ps, pred, train_ps)

    def summary_line(self, h: dict) -> str:
        return (f"wll {h['weighted_log_loss']:.3f} (per-level constant {h.get('level_prior_wll', float('nan')):.3f}, "
                f"class prior {h.get('class_prior_wll', float('nan')):.3f}); localisation median "
                f"{h['localisation_px250']['median']:.1f} px, within 5 px {h['localisation_px250']['within_5px']:.0%}")

    def evaluate_line(self, ps, metrics: dict) -> str:
        return f"weighted log loss {metrics['weighted_log_loss']:.3f}" if ps.has_truth else ""

    def fold_row(self, h: dict) -> dict:
        p = h.get("predicted_points", {})
        return {**{f"{name}_wll": v.get("weighted_log_loss") for name, v in h.items()},
                "level_prior_wll": p.get("level_prior_wll"), "class_prior_wll": p.get("class_prior_wll"),
                "loc_median_px": p.get("localisation_px250", {}).get("median")}


FORAMINA = ForaminaTask()
