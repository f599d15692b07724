"""Inference takes every preprocessing choice from the run's checkpoints, not from the code's defaults."""

from __future__ import annotations

import dataclasses

import numpy as np

from spinegrade import vocab
from spinegrade.grade import crops as grade_crops
from spinegrade.grade import data as grade_data
from spinegrade.grade import spec as grade_spec
from spinegrade.localize import data as localize_data
from spinegrade.localize import spec as localize_spec
from spinegrade.predict import Predictor
from spinegrade.train.checkpoint import load_checkpoint


def _predict(run, study_dir):
    res = Predictor(run, "cpu").predict_path(study_dir)
    return ([(p.condition, p.level, p.series_id, p.slice_index, round(p.x, 4), round(p.y, 4)) for p in res.points],
            np.array([f.probs for f in res.findings]))


def test_the_plan_travels_into_every_checkpoint(tiny_run):
    for view in vocab.SERIES_ROLES:
        ck = load_checkpoint(tiny_run / "localizer" / view)
        assert ck["kind"] == "heatmap" and ck["config"]["kind"] == "study-pipeline"
        assert ck["preprocessing"]["input_size"] == ck["config"]["localizers"][view]["input_size"] == 48
    for fam in vocab.FAMILIES:
        ck = load_checkpoint(tiny_run / "grader" / fam)
        assert ck["kind"] == "grader" and ck["spec"]["family"] == fam
        assert ck["preprocessing"]["crop"] == ck["config"]["graders"][fam]["crop"]
        assert ck["preprocessing"]["crop"]["out_px"] == 32 != grade_spec.DEFAULT_SPECS[fam].out_px
        assert set(ck["prior"]) == {"class_counts", "class_prior", "weighted_prior"}


def test_a_run_predicts_the_same_after_the_code_defaults_change(tiny_run, synth_cohort, monkeypatch):
    study = sorted((synth_cohort / "train_images").iterdir())[0]
    points, probs = _predict(tiny_run, study)
    assert len(probs) == 25 and points
    # every default a grader or localiser could have been trained with, changed
    wider = {f: dataclasses.replace(s, size_mm=s.size_mm * 2, out_px=64, n_slices=5)
             for f, s in grade_spec.DEFAULT_SPECS.items()}
    for module in (grade_spec, grade_crops, grade_data):
        monkeypatch.setattr(module, "DEFAULT_SPECS", wider)
    for module in (localize_spec, localize_data):
        monkeypatch.setattr(module, "INPUT_SIZE", 128)
        monkeypatch.setattr(module, "N_CHANNELS", 5)
        monkeypatch.setattr(module, "SIGMA", 1.0)
    monkeypatch.setattr(localize_spec, "VIEW_INPUT_SIZES", {})
    assert grade_data.in_channels(vocab.SPINAL) == 10  # the code's default would now feed 10 channels
    points2, probs2 = _predict(tiny_run, study)
    assert points2 == points
    np.testing.assert_allclose(probs2, probs, rtol=0, atol=1e-6)
