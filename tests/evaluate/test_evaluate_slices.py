"""`evaluate` on a slice grader run: honest row selection, files, and figures that agree with each other."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from spinegrade import vocab
from spinegrade.cli import main
from spinegrade.data.slices import read_index, write_synthetic_index
from spinegrade.evaluate.metric import prior_probs, weighted_log_loss
from spinegrade.evaluate.slices import calibration_bins, classification_metrics, evaluate_slices
from spinegrade.train.config import LoopConfig, TrainConfig
from spinegrade.data.splits import read_split
from spinegrade.pipeline.slices import train_slices

QUIET = {"log": lambda s: None}


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A tiny run on an index with an extra column and unlabelled rows (the last study)."""
    root = tmp_path_factory.mktemp("eval")
    csv = write_synthetic_index(root / "data set", n_studies=10, rows_per_study=6, size=40, unlabelled=6)
    table = pd.read_csv(csv, dtype=str, keep_default_na=False)
    table.insert(1, "note", "x")
    table.to_csv(csv, index=False)
    cfg = TrainConfig(index=str(csv), model_kwargs={"widths": [8, 8, 16, 16, 16]}, image_size=32, folds=3,
                      val_fold=2, loop=LoopConfig(epochs=1, batch_size=8))
    train_slices(cfg, root / "run", **QUIET)
    return csv, root / "run", root


def _read(path):
    return pd.read_csv(path, dtype={"path": str, "study_id": str, "severity": str}, keep_default_na=False)


def test_default_scores_only_studies_the_run_did_not_train_on(toy):
    csv, run, root = toy
    m = evaluate_slices(run, csv, root / "default", **QUIET)
    split = read_split(run)
    preds = _read(root / "default" / "predictions.csv")
    assert set(preds.study_id) <= set(split.study_id[split.role == "val"])
    assert m["n_rows_from_training_studies"] == 0 and m["n_rows"] == len(preds)
    for name in ("predictions.csv", "metrics.json", "classification_report.txt", "confusion_matrix.png",
                 "reliability.png"):
        assert (root / "default" / name).stat().st_size > 0


def test_predictions_echo_the_index_and_metrics_agree_with_them(toy):
    csv, run, root = toy
    m = evaluate_slices(run, csv, root / "all", all_rows=True, **QUIET)
    index = _read(csv)
    preds = _read(root / "all" / "predictions.csv")
    assert list(preds.columns) == list(index.columns) + list(vocab.SEVERITY_KEYS)
    assert list(preds.path) == list(index.path)  # as written, spaces and all
    p = preds[list(vocab.SEVERITY_KEYS)].to_numpy()
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    labelled = preds.severity != ""
    assert m["n_rows"] == len(index) and m["n_labelled"] == int(labelled.sum()) == len(index) - 6
    assert m["n_rows_from_training_studies"] > 0  # --all says how much of it the model saw
    y = np.array([vocab.parse_severity(s) for s in preds.severity[labelled]])
    pl = p[labelled.to_numpy()]
    assert m["model"]["accuracy"] == pytest.approx((pl.argmax(1) == y).mean())
    assert m["model"]["weighted_log_loss"]["all"] == pytest.approx(weighted_log_loss(y, pl), rel=1e-5)
    fam = {vocab.CONDITION_BY_KEY[c].family for c in preds.condition}
    assert set(m["model"]["weighted_log_loss"]) == {"all"} | {
        {"foraminal": "neural_foraminal_narrowing", "subarticular": "subarticular_stenosis"}[f] for f in fam}
    on_disk = json.loads((root / "all" / "metrics.json").read_text())
    assert on_disk["model"]["accuracy"] == pytest.approx(m["model"]["accuracy"])


def test_baselines_are_fitted_on_the_training_rows(toy):
    csv, run, root = toy
    m = evaluate_slices(run, csv, root / "prior", **QUIET)
    split = read_split(run)
    idx = read_index(csv)
    y_train = idx.label[np.isin(idx.study_id, split.study_id[split.role == "train"]) & (idx.label >= 0)]
    np.testing.assert_allclose(m["class_prior"]["probs"], prior_probs(y_train))
    np.testing.assert_allclose(m["weighted_prior"]["probs"], prior_probs(y_train, weighted=True))
    preds = _read(root / "prior" / "predictions.csv")
    y = np.array([vocab.parse_severity(s) for s in preds.severity if s])
    const = np.tile(prior_probs(y_train), (len(y), 1))
    assert m["class_prior"]["weighted_log_loss"]["all"] == pytest.approx(weighted_log_loss(y, const))
    assert m["class_prior"]["accuracy"] == pytest.approx((y == 0).mean())  # the prior always says Normal/Mild
    assert "weighted_prior" in (root / "prior" / "classification_report.txt").read_text()


def test_fold_selection_and_cli(toy, capsys):
    csv, run, root = toy
    out = root / "fold0"
    assert main(["evaluate", "--run", str(run / "best.pt"), "--index", str(csv), "--out", str(out),
                 "--fold", "0"]) == 0
    assert "weighted log loss" in capsys.readouterr().out
    split = read_split(run)
    assert set(_read(out / "predictions.csv").study_id) <= set(split.study_id[split.fold == 0])
    assert main(["evaluate", "--run", str(run), "--index", str(csv), "--out", str(out), "--fold", "7"]) == 2
    assert "fold 7" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(root / "nowhere"), "--index", str(csv), "--out", str(out)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_calibration_bins_by_hand():
    y = np.array([0, 0, 1, 2])
    probs = np.array([[0.95, 0.03, 0.02],   # conf .95, right  -> bin 9
                      [0.55, 0.40, 0.05],   # conf .55, right  -> bin 5
                      [0.62, 0.28, 0.10],   # conf .62, wrong  -> bin 6
                      [0.10, 0.15, 0.75]])  # conf .75, right  -> bin 7
    b = calibration_bins(y, probs)
    assert b["count"] == [0, 0, 0, 0, 0, 1, 1, 1, 0, 1]
    assert b["ece"] == pytest.approx((0.05 + 0.45 + 0.62 + 0.25) / 4)


def test_classification_metrics_by_hand():
    y = np.array([0, 0, 1, 2])
    probs = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8]])
    fam = np.array(["foraminal", "foraminal", "spinal", "spinal"])
    m = classification_metrics(y, probs, fam)
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 1) / 3)
    assert m["per_class"]["moderate"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3),
                                          "support": 1}
    assert m["weighted_log_loss"]["spinal_canal_stenosis"] == pytest.approx(-(2 * np.log(0.6) + 4 * np.log(0.8)) / 6)
    assert m["weighted_log_loss"]["neural_foraminal_narrowing"] == pytest.approx(-(np.log(0.8) + np.log(0.2)) / 2)
