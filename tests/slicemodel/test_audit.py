"""Label checks of a point-labelled slice set: sides a level apart (labels only), a per-axis rescale (against
predictions), and a training run that leaves the first kind out of training but not out of the held-out fold."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from spinegrade import vocab
from spinegrade.slicemodel.audit import drop_inconsistent, inconsistent_series, rescaled_series, side_gaps
from spinegrade.slicemodel.foramina import POINTS_CSV, read_point_slices, write_synthetic_point_slices
from spinegrade.slicemodel.pipeline import SliceConfig, make_split, run_roles

LEVEL_DOWN = dict(zip(vocab.LEVELS[:-1], vocab.LEVELS[1:]))


def _both_sides(ps, study) -> int:
    p = ps.points[ps.points["study_id"] == study]
    sides = {s: set(p.loc[p["condition"].str.startswith(s), "level"]) for s in vocab.SIDES}
    return len(sides["left"] & {LEVEL_DOWN[v] for v in sides["right"] if v in LEVEL_DOWN})


def _shift_right_side(folder, studies) -> None:
    """Relabel these studies' right foramina one level down (their L1/L2 called L2/L3, ...), as an annotator a
    level off would; the L5/S1 row has no level below and goes."""
    pts = pd.read_csv(folder / POINTS_CSV, dtype=str)
    mine = pts["study_id"].isin(studies) & pts["condition"].str.startswith("right")
    pts.loc[mine, "level"] = pts.loc[mine, "level"].map(LEVEL_DOWN)
    pts.dropna(subset=["level"]).to_csv(folder / POINTS_CSV, index=False)


@pytest.fixture
def shifted(tmp_path):
    folder = write_synthetic_point_slices(tmp_path / "set", n_studies=24, slices_per_study=2, seed=3)
    ps = read_point_slices(folder)
    assert inconsistent_series(ps).empty  # the generated set's two sides agree
    assert (side_gaps(ps)["n_apart"] == 0).all()
    # studies with at least three levels left on both sides once the right is moved down
    able = [s for s in sorted(ps.points["study_id"].unique()) if _both_sides(ps, s) >= 3]
    assert len(able) >= 4
    _shift_right_side(folder, able[:4])
    return folder, able[:4]


def test_sides_a_level_apart_are_found_and_nothing_else(shifted):
    folder, bad = shifted
    ps = read_point_slices(folder)
    found = inconsistent_series(ps)
    assert sorted(found["study_id"]) == sorted(bad)
    assert (found["n_apart"] >= 3).all() and (found["n_levels"] >= 3).all()
    # the spacing is the generated one: 15 % of the 64 px stored slice between neighbouring levels
    assert np.allclose(side_gaps(ps)["spacing"].dropna(), 0.15 * 64, atol=1.5)
    kept, left_out = drop_inconsistent(ps)
    assert sorted(left_out) == sorted(bad)
    assert set(kept.points["study_id"]) == set(ps.points["study_id"]) - set(bad)


def test_training_leaves_them_out_but_the_heldout_fold_keeps_every_label(shifted):
    folder, bad = shifted
    ps = read_point_slices(folder)
    cfg = SliceConfig(slices=str(folder), folds=3, val_fold=0, inner_val=0.2, drop_inconsistent=True)
    split = make_split(ps, cfg)
    by_role, dropped = run_roles(ps, split, cfg, log=lambda *_: None)
    role = dict(zip(split["study_id"], split["role"]))
    in_test = [s for s in bad if role[s] == "test"]
    assert sorted(dropped["train"] + dropped["inner_val"]) == sorted(set(bad) - set(in_test))
    trained_on = set(by_role["train"].points["study_id"]) | set(by_role["inner_val"].points["study_id"])
    assert not set(bad) & trained_on
    assert set(in_test) <= set(by_role["test"].points["study_id"])
    assert len(by_role["test"]) == int(split.loc[split["role"] == "test", "study_id"].map(
        ps.points["study_id"].value_counts()).sum())
    # without the option nothing is left out
    plain, none = run_roles(ps, split, SliceConfig(slices=str(folder), folds=3, val_fold=0, inner_val=0.2))
    assert none == {} and sum(map(len, plain.values())) == len(ps)


def test_a_per_axis_rescale_is_flagged_a_shift_by_a_level_is_not():
    rng = np.random.default_rng(0)
    pred = np.column_stack([rng.uniform(110, 160, 40), np.tile(np.linspace(50, 200, 5), 8)])
    series = np.repeat(["ok", "sized", "shifted", "few"], 10)
    truth = pred + rng.normal(0, 0.8, pred.shape)
    sized = series == "sized"
    truth[sized] = pred[sized] / (1.2, 1.05) + rng.normal(0, 0.8, (10, 2))  # stored with a wrong matrix size
    truth[series == "shifted"] += (0, 30)  # a whole column one level down: not a rescale about the corner
    few = np.flatnonzero(series == "few")
    series[few[3:]] = "ok2"
    truth[few[:3]] = pred[few[:3]] / 1.3  # rescaled, but three points are too few to tell
    r = rescaled_series(truth, pred, series).set_index("series")
    assert r.loc["sized", "flag"] and r.loc["sized", "n_within"] == 0 and r.loc["sized", "n_within_rescaled"] == 10
    assert abs(r.loc["sized", "sx"] - 1.2) < 0.02 and abs(r.loc["sized", "sy"] - 1.05) < 0.02
    assert not r.loc["shifted", "flag"] and r.loc["shifted", "n_within_rescaled"] < 9
    assert not r.loc["ok", "flag"] and r.loc["ok", "n_within"] == 10
    assert not r.loc["few", "flag"]


def test_localisation_audit_scores_every_label_and_the_labels_that_pass(shifted):
    from spinegrade.slicemodel.audit import localisation_audit

    folder, bad = shifted
    ps = read_point_slices(folder)
    pred = ps.points[["path", "condition", "level", "x", "y"]].rename(columns={"x": "x_pred", "y": "y_pred"})
    # the model right where the moved side's labels are a level off: its L2/L3 label sits on L1/L2, so the true
    # foramen lies one level spacing below the label
    moved = ps.points["study_id"].isin(bad) & ps.points["condition"].str.startswith("right")
    pred.loc[moved, "y_pred"] += 0.15 * 64
    audit = localisation_audit(ps, pred)
    f = audit["figures"]
    assert f["every label"]["n"] == len(ps) and f["every label"]["within_5px"] == pytest.approx(1 - moved.mean())
    assert f["every label"]["over_20px"] == pytest.approx(moved.mean())  # 9.6 of 64 stored px: 37.5 of 250
    assert f["without sides a level apart"]["within_5px"] == 1.0
    assert f["without sides a level apart"]["n"] == int((~ps.points["study_id"].isin(bad)).sum())
    assert audit["over20_in_flagged"] == 1.0 and audit["rescaled"].empty
    with pytest.raises(ValueError, match="no prediction for 1 labelled points"):
        localisation_audit(ps, pred.iloc[1:])
