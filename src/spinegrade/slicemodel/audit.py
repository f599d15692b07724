"""Checks of a point-labelled slice set's own labels (torch-free).

Two kinds of label error are measurable on the foramen set, and both look like a localiser's miss when they are
scored as truth:

- **Sides a level apart** (needs no model): in one series, the left and right foramina of a level sit at nearly
  the same height (one patient, one position). Where the labelled left and right columns differ by half the
  distance between neighbouring levels or more, at several levels, one side was labelled a level off.
- **A wrong matrix size** (needs predictions the model made for studies it never saw): points are stored in the
  resized image's coordinates, computed with each series' original rows x cols; where that size was wrong, every
  label of the series is off by the same per-axis factor. Such a series' labels sit away from the predictions,
  yet a per-axis rescale about the image corner puts nearly all of them on the predictions.

`inconsistent_series` may be used to leave such series out of training (`SliceConfig.drop_inconsistent`); the
held-out fold is always scored on every label.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .. import vocab
from .sides import level_spacing

if TYPE_CHECKING:
    import pandas as pd

    from .data import PointSlices

SIDE_GAP = 0.5  # left-right height difference, as a share of the series' level spacing, that counts as a level off
MIN_LEVELS = 3  # levels that must disagree before a series is called inconsistent


def side_gaps(ps: PointSlices) -> pd.DataFrame:
    """Per series: the levels labelled on both sides (`n_levels`), the levels whose left and right heights differ
    by at least SIDE_GAP of the series' spacing between neighbouring levels (`n_apart`), that spacing (stored
    pixels) and the study."""
    import pandas as pd

    cols = ["series", "study_id", "n_levels", "n_apart", "spacing"]
    pts = ps.points
    if not ps.has_points or not len(pts):
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame({"series": ps.row_series(), "study_id": pts["study_id"].astype(str),
                       "side": [getattr(vocab.CONDITION_BY_KEY.get(c), "side", None) for c in pts["condition"]],
                       "level": pts["level"], "y": pts["y"].to_numpy(float)}).dropna(subset=["side", "y"])
    # one height per series, side and level (a level labelled on two slices: their mean), levels in order
    h = df.groupby(["series", "study_id", "side", "level"], sort=False)["y"].mean().unstack("level")
    h = h.reindex(columns=list(vocab.LEVELS))
    out = []
    for (series, study), t in h.groupby(level=[0, 1], sort=False):
        left, right = t.droplevel([0, 1]).reindex(list(vocab.SIDES)).to_numpy(float)
        spacing = level_spacing([left, right])
        both = np.isfinite(left) & np.isfinite(right)
        apart = int(np.sum(np.abs(left - right)[both] >= SIDE_GAP * spacing)) if np.isfinite(spacing) else 0
        out.append({"series": series, "study_id": study, "n_levels": int(both.sum()), "n_apart": apart,
                    "spacing": spacing})
    return pd.DataFrame(out, columns=cols)


def inconsistent_series(ps: PointSlices, min_levels: int = MIN_LEVELS) -> pd.DataFrame:
    """The series whose left and right labels sit a level apart at `min_levels` levels or more."""
    g = side_gaps(ps)
    return g[g["n_apart"] >= min_levels].reset_index(drop=True)


def drop_inconsistent(ps: PointSlices, min_levels: int = MIN_LEVELS) -> tuple[PointSlices, list[str]]:
    """`ps` without the studies holding an inconsistent series (which side is wrong cannot be told from the
    labels), and those studies."""
    bad = sorted(set(inconsistent_series(ps, min_levels)["study_id"]))
    return (ps.drop_studies(bad) if bad else ps), bad


def rescaled_series(truth_xy: np.ndarray, pred_xy: np.ndarray, series, tol: float = 5.0,
                    min_points: int = 4, min_change: float = 0.05) -> pd.DataFrame:
    """Per series: the per-axis factors (sx, sy) that best map its labels onto the predictions (least squares,
    about the image corner), how many labels lie within `tol` of the prediction as they are (`n_within`) and after
    the rescale (`n_within_rescaled`), and `flag`: at least `min_points` labels, at most half within as they are,
    at least 90 % within after a rescale that changes an axis by more than `min_change`.

    Coordinates in one unit (stored pixels); the predictions must come from models that never saw the series."""
    import pandas as pd

    t = np.asarray(truth_xy, float)
    p = np.asarray(pred_xy, float)
    keys = pd.Series(np.asarray(series).astype(str))
    out = []
    for key, ix in keys.groupby(keys, sort=False).groups.items():
        ix = np.asarray(ix)
        tt, pp = t[ix], p[ix]
        s = [float((pp[:, a] * tt[:, a]).sum() / max((tt[:, a] ** 2).sum(), 1e-9)) for a in (0, 1)]
        within = int((np.hypot(*(pp - tt).T) <= tol).sum())
        within_s = int((np.hypot(*(pp - tt * s).T) <= tol).sum())
        n = len(ix)
        flag = (n >= min_points and within <= 0.5 * n and within_s >= 0.9 * n
                and max(abs(s[0] - 1), abs(s[1] - 1)) > min_change)
        out.append({"series": key, "n": n, "sx": s[0], "sy": s[1], "n_within": within,
                    "n_within_rescaled": within_s, "flag": bool(flag)})
    return pd.DataFrame(out, columns=["series", "n", "sx", "sy", "n_within", "n_within_rescaled", "flag"])


def _figures(e: np.ndarray) -> dict:
    return {"n": int(len(e)), "within_5px": float(np.mean(e <= 5)) if len(e) else float("nan"),
            "over_20px": float(np.mean(e > 20)) if len(e) else float("nan"),
            "median": float(np.median(e)) if len(e) else float("nan")}


def localisation_audit(ps: PointSlices, pred: pd.DataFrame) -> dict:
    """Localisation of out-of-fold predictions (`pred`: path, condition, level, x_pred, y_pred for every labelled
    point of `ps`) on every label and without the series each check flags: `figures` (n, within_5px, over_20px,
    median per subset), `over20_in_flagged` (the share of the misses over 20 px that lie in flagged series),
    `sides` (inconsistent_series) and `rescaled` (rescaled_series' flagged rows)."""
    from .foramina import point_errors

    keys = ["path", "condition", "level"]
    pts = ps.points[keys].merge(pred[keys + ["x_pred", "y_pred"]], on=keys, how="left")
    if pts["x_pred"].isna().any():
        raise ValueError(f"no prediction for {int(pts['x_pred'].isna().sum())} labelled points")
    xy = pts[["x_pred", "y_pred"]].to_numpy(float)
    e = point_errors(ps, xy)
    series = ps.row_series().to_numpy()
    sides = inconsistent_series(ps)
    scale = rescaled_series(ps.points[["x", "y"]].to_numpy(float), xy, series)
    rescaled = scale[scale["flag"]].reset_index(drop=True)
    in_sides, in_scaled = np.isin(series, sides["series"]), np.isin(series, rescaled["series"])
    flagged = in_sides | in_scaled
    return {"figures": {"every label": _figures(e), "without sides a level apart": _figures(e[~in_sides]),
                        "without one per-axis factor": _figures(e[~in_scaled]), "without both": _figures(e[~flagged])},
            "over20_in_flagged": float(np.mean(flagged[e > 20])) if np.any(e > 20) else 0.0,
            "sides": sides, "rescaled": rescaled}
