"""The study-level stage: a study's foramina read together, fitted on out-of-fold predictions only.

Unit tests on generated out-of-fold rows whose grades are correlated within a study (as real stenosis is), then
a small `--all-folds` run end to end: the stage is fitted from the folds' held-out predictions, measured fold
by fold, saved beside them, and used by `evaluate` and on partly labelled studies."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from spinegrade import vocab
from spinegrade.errors import DataError
from spinegrade.slicemodel.foramina import read_point_slices
from spinegrade.slicemodel.model import SliceModel
from spinegrade.slicemodel.pipeline import (
    SliceConfig,
    evaluate_slices,
    fit_study_stage,
    out_of_fold_rows,
    predict_rows,
    train_all_folds,
)
from spinegrade.slicemodel.study import (
    STAGE_FILE,
    StudyStage,
    expected_calibration_error,
    fit_stage,
    grid_of,
    stage_cv,
)
from spinegrade.train.config import LoopConfig

from .conftest import SMALL

CONDS = vocab.FAMILY_CONDITIONS[vocab.FORAMINAL]


def oof_rows(n_studies=300, seed=0, drop=0.05):
    """Out-of-fold-like rows: a study-wide severity drives every foramen's grade; the 'first stage' sees each
    foramen through noise and is overconfident; some foramina are missing."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(n_studies):
        sev = rng.normal(0, 1)
        for c in CONDS:
            for li, lv in enumerate(vocab.LEVELS):
                if rng.random() < drop:
                    continue
                z = sev + 0.4 * li - 1.5 + rng.normal(0, 0.5)
                label = 0 if z < 0 else (1 if z < 1 else 2)
                logit = np.array([0, 1.5 * z - 0.5, 2.0 * z - 2.0]) + rng.normal(0, 1.5, 3)
                p = np.exp(logit) / np.exp(logit).sum()
                rows.append({"study_id": f"s{s}", "fold": s % 5, "condition": c, "level": lv, "normal_mild": p[0],
                             "moderate": p[1], "severe": p[2], "label": label})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def rows():
    return oof_rows()


def test_stage_beats_the_first_stage_on_every_fold_and_reading_the_study_beats_calibration_alone(rows):
    cv = stage_cv(rows, CONDS, vocab.LEVELS, lam=0.01)
    assert len(cv["folds"]) == 5
    for f in cv["folds"]:
        assert f["study"] < f["own"] < f["first_stage"], f
    # one correction pooled over the levels: better overall and at most levels (not necessarily each)
    assert cv["per_level"]["study"]["all"] < cv["per_level"]["own"]["all"] < cv["per_level"]["first_stage"]["all"]
    assert sum(cv["per_level"]["study"][lv] < cv["per_level"]["first_stage"][lv] for lv in vocab.LEVELS) >= 3
    assert cv["calibration"]["study"]["ece"] < cv["calibration"]["first_stage"]["ece"]
    table = cv["calibration"]["study"]["reliability"]
    assert sum(r["n"] for r in table) == sum(f["n_rows"] for f in cv["folds"])


def test_stage_round_trips_and_handles_missing_and_repeated_positions(rows, tmp_path):
    probs, present, labels, studies = grid_of(rows, CONDS, vocab.LEVELS)
    assert probs.shape == (300, 2, 5, 3) and (~present).sum() == 3000 - len(rows)
    stage = fit_stage(probs, present, labels, CONDS, vocab.LEVELS)
    stage.save(tmp_path / STAGE_FILE)
    again = StudyStage.load(tmp_path / STAGE_FILE)
    out = stage.apply(probs, present)
    assert np.allclose(out, again.apply(probs, present), atol=1e-5)
    assert np.allclose(out.sum(axis=-1), 1.0)
    # One study's rows in any order, a foramen given twice (two slices) and a condition the stage does not know.
    sub = rows[rows["study_id"] == studies[0]]
    keys = list(zip(sub["condition"], sub["level"]))
    p = sub[list(vocab.SEVERITY_KEYS)].to_numpy()
    got = stage.apply_rows(keys[::-1], p[::-1])[::-1]
    assert np.allclose(got, out[0][present[0]], atol=1e-9)
    extra = stage.apply_rows(keys + [keys[0], ("spinal_canal_stenosis", "l1_l2")], np.vstack([p, p[:1], [[.2, .3, .5]]]))
    assert np.allclose(extra[-1], [.2, .3, .5]) and np.allclose(extra[0], extra[len(keys)])
    # The other foramina matter: a study whose other foramina are severe moves this one's grade up.
    lone = np.full((1, 2, 5, 3), [0.6, 0.3, 0.1])
    worse = lone.copy()
    worse[0, 1] = [0.05, 0.15, 0.8]
    mask = np.ones((1, 2, 5), bool)
    assert stage.apply(worse, mask)[0, 0, 2, 2] > stage.apply(lone, mask)[0, 0, 2, 2] + 0.02
    with pytest.raises(DataError, match="not a readable study stage"):
        (tmp_path / "bad.json").write_text('{"kind": "other"}')
        StudyStage.load(tmp_path / "bad.json")


def test_the_stage_undoes_each_models_temperature_and_starts_from_the_identity(rows):
    from spinegrade.slicemodel.study import untemper

    p = rows[list(vocab.SEVERITY_KEYS)].to_numpy()[:50]
    cooled = np.exp(np.log(p) / 1.3)
    cooled /= cooled.sum(axis=1, keepdims=True)  # what a model with temperature 1.3 gives
    assert np.allclose(untemper(cooled, 1.3), p, atol=1e-9) and np.allclose(untemper(p, 1.0), p)
    keys = list(zip(rows["condition"], rows["level"]))[:50]
    identity = StudyStage(tuple(CONDS), tuple(vocab.LEVELS), "study", np.zeros((2, 2)), 0.0, np.zeros(2), 0.0)
    assert np.allclose(identity.apply_rows(keys[:1], cooled[:1], 1.3), p[:1], atol=1e-6)
    # rows fitted with their temperature: the first stage is scored as given, the stage on the undone probabilities
    hot = rows.assign(temperature=np.where(rows["fold"] % 2 == 0, 1.4, 0.8))
    for c in vocab.SEVERITY_KEYS:
        hot[c] = np.exp(np.log(rows[c]) / hot["temperature"])
    hot[list(vocab.SEVERITY_KEYS)] = hot[list(vocab.SEVERITY_KEYS)].div(hot[list(vocab.SEVERITY_KEYS)].sum(axis=1), axis=0)
    a, b = stage_cv(rows, CONDS, vocab.LEVELS, lam=0.01), stage_cv(hot, CONDS, vocab.LEVELS, lam=0.01)
    assert [f["first_stage"] for f in a["folds"]] != [f["first_stage"] for f in b["folds"]]
    assert np.allclose([f["study"] for f in a["folds"]], [f["study"] for f in b["folds"]], atol=1e-4)


def test_ece_of_a_calibrated_forecast_is_small_and_of_an_overconfident_one_large():
    rng = np.random.default_rng(1)
    p = rng.dirichlet((1, 1, 1), size=20000)
    y = np.array([rng.choice(3, p=q) for q in p])
    ece, table = expected_calibration_error(y, p)
    assert ece < 0.02 and sum(r["n"] for r in table) == len(y)
    sharp = np.eye(3)[p.argmax(1)] * 0.97 + 0.01
    assert expected_calibration_error(y, sharp)[0] > 0.2


TINY = dict(SMALL, localizer_loop=LoopConfig(epochs=4, batch_size=8, lr=3e-3, patience=0),
            grader_loop=LoopConfig(epochs=3, batch_size=16, lr=3e-3, patience=0))


@pytest.fixture(scope="module")
def folds_run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("stage") / "folds"
    cfg = SliceConfig(slices=str(folder), folds=3, device="cpu", inner_val=0.2, **TINY)
    summary = train_all_folds(cfg, out, log=lambda *_: None)
    if not summary["study_stage"]["kept"]:
        fit_study_stage(out, cfg, log=lambda *_: None, keep="always")
    return out, summary


def test_all_folds_fits_the_stage_on_out_of_fold_predictions_and_measures_it(folds_run, folder):
    out, summary = folds_run
    st = summary["study_stage"]
    assert [f["fold"] for f in st["folds"]] == [0, 1, 2]
    assert all(np.isfinite(f["study"]) and np.isfinite(f["first_stage"]) for f in st["folds"])
    assert json.loads((out / "cv.json").read_text())["study_stage"]["folds"] == st["folds"]
    oof = out_of_fold_rows(out, folder)
    # each study's rows come from the one fold model that never trained on it
    for k in range(3):
        split = pd.read_csv(out / f"fold{k}" / "split.csv", dtype={"study_id": str})
        test = set(split.loc[split["role"] == "test", "study_id"])
        assert set(oof.loc[oof["fold"] == k, "study_id"]) == test
    assert oof["label"].notna().all() and len(oof) == len(pd.read_csv(folder / "points.csv"))
    # kept only where it beat the first stage on CV; the fixture then fits one anyway, to test applying it
    means = pd.DataFrame(st["folds"]).mean(numeric_only=True)
    assert st["kept"] == bool(means["study"] < means["first_stage"])
    stage = SliceModel.load(out).stage
    assert stage is not None and stage.n_studies == oof["study_id"].nunique()


def test_evaluate_applies_the_stage_per_member_and_grades_partly_labelled_studies(folds_run, folder, tmp_path):
    out, _ = folds_run
    model = SliceModel.load(out)
    with_stage = evaluate_slices(out, folder, tmp_path / "s", all_rows=True, log=lambda *_: None)
    plain = tmp_path / "plain"
    shutil.copytree(out, plain)
    (plain / STAGE_FILE).unlink()
    evaluate_slices(plain, folder, tmp_path / "p", all_rows=True, log=lambda *_: None)
    a = pd.read_csv(tmp_path / "s" / "predictions.csv")
    b = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert with_stage["members"] == 3 and len(a) == len(b) == len(pd.read_csv(folder / "points.csv"))
    keys = list(vocab.SEVERITY_KEYS)
    assert np.allclose(a[keys].sum(axis=1), 1.0) and not np.allclose(a[keys], b[keys], atol=1e-3)
    assert (a[["x_pred", "y_pred"]] == b[["x_pred", "y_pred"]]).all().all()  # the stage only regrades
    # The stage applied by hand to each member's answers for one study, then averaged, is what evaluate wrote.
    pts = pd.read_csv(folder / "points.csv", dtype={"study_id": str})
    study = pts["study_id"].iloc[0]
    ix = np.flatnonzero(pts["study_id"] == study)
    rows = list(zip(pts["condition"].iloc[ix], pts["level"].iloc[ix]))
    assert all(SliceModel.load(out / f"fold{k}").stage is None for k in range(3))
    # (at the labelled points: an ensemble grades where its members' points agree, each member alone at its own)
    ps = read_point_slices(folder)
    folds = [SliceModel.load(out / f"fold{k}") for k in range(3)]
    firsts = [predict_rows(m, ps, true_points=True)[keys].to_numpy()[ix] for m in folds]
    temps = [m.members[0].temperature for m in folds]
    assert all(t > 0 for t in temps) and len(set(temps)) > 1  # each fold its own, undone before the stage
    want = np.mean([model.stage.apply_rows(rows, p, t) for p, t in zip(firsts, temps)], axis=0)
    assert np.allclose(predict_rows(model, ps, true_points=True)[keys].to_numpy()[ix], want, atol=1e-9)
    # The study's other foramina are read: a foramen whose other side at its level is graded too is graded
    # otherwise than the same answer alone.
    paired = [i for i, (c, lv) in enumerate(rows) if any(c2 != c and lv2 == lv for c2, lv2 in rows)]
    assert paired and np.abs(model.stage.weights).max() > 0
    i = paired[0]
    together = model.stage.apply_rows(rows, firsts[0], temps[0])[i]
    assert not np.allclose(together, model.stage.apply_rows(rows[i:i + 1], firsts[0][i:i + 1], temps[0])[0], atol=1e-6)
    # A study with only some of its foramina labelled (one row left) is graded, by the stage, from that row.
    part = tmp_path / "part"
    shutil.copytree(folder, part)
    keep = pts[(pts["study_id"] != study) | (np.arange(len(pts)) == ix[0])]
    keep.to_csv(part / "points.csv", index=False)
    evaluate_slices(out, part, tmp_path / "q", all_rows=True, log=lambda *_: None)
    c = pd.read_csv(tmp_path / "q" / "predictions.csv")
    assert len(c) == len(keep) and np.allclose(c[keys].sum(axis=1), 1.0)
    part_ps = read_point_slices(part)
    j = int(np.flatnonzero(part_ps.points["study_id"] == study)[0])
    alone = np.mean([model.stage.apply_rows(rows[:1], predict_rows(m, part_ps, true_points=True)[keys].to_numpy()[j:j + 1],
                                            m.members[0].temperature) for m in folds], axis=0)[0]
    assert np.allclose(predict_rows(model, part_ps, true_points=True)[keys].to_numpy()[j], alone, atol=1e-9)


def test_evaluate_with_the_stage_never_reads_the_truth(folds_run, folder, tmp_path):
    out, _ = folds_run
    blind = tmp_path / "blind"
    shutil.copytree(folder, blind)
    pts = pd.read_csv(blind / "points.csv", dtype=str)
    pts.drop(columns=["severity", "x", "y"]).to_csv(blind / "points.csv", index=False)
    evaluate_slices(out, folder, tmp_path / "t", all_rows=True, log=lambda *_: None)
    evaluate_slices(out, blind, tmp_path / "n", all_rows=True, log=lambda *_: None)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t" / "predictions.csv"),
                                  pd.read_csv(tmp_path / "n" / "predictions.csv"))


def test_a_stage_needs_two_grades_per_level():
    r = oof_rows(40)
    r["label"] = 0
    with pytest.raises(DataError, match="fewer than two grades"):
        fit_stage(*grid_of(r, CONDS, vocab.LEVELS)[:3], CONDS, vocab.LEVELS)


def test_canal_task_has_no_stage():
    from spinegrade.slicemodel.task import task_by_name

    assert task_by_name("canal").stage_conditions == ()
