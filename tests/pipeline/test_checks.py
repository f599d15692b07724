"""A run that knows whether it worked: the checks against yardsticks, a broken training caught under
--strict, and training that gives identical checkpoints for the same seed and threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spinegrade.pipeline.checks import MAX_WRONG_LANDMARK, check_grader, check_localizer, format_checks, run_checks


def _loc(median, wrong, template=15.0):
    return {"val_err_mm": median * 1.5, "val_err_median_mm": median, "val_err_p90_mm": median * 3,
            "val_wrong_landmark": wrong, "template_err_median_mm": template}


def test_a_localiser_must_beat_the_template_and_keep_its_levels():
    assert check_localizer("sagittal_t1", _loc(2.0, 0.0)).passed
    assert check_localizer("sagittal_t1", _loc(2.0, MAX_WRONG_LANDMARK)).passed
    worse = check_localizer("sagittal_t1", _loc(16.0, 0.0))
    assert not worse.passed and "template" in worse.message
    levels = check_localizer("sagittal_t1", _loc(2.0, 0.10))
    assert not levels.passed and "10.0%" in levels.message
    assert not check_localizer("sagittal_t1", {"val_err_median_mm": float("nan")}).passed


def test_a_grader_must_beat_its_prior():
    assert check_grader("foraminal", {"val_wll": 0.5, "prior_val_wll": 0.8}).passed
    c = check_grader("foraminal", {"val_wll": 0.8, "prior_val_wll": 0.8})
    assert not c.passed and "prior" in c.message
    assert not check_grader("foraminal", {"val_wll": float("nan"), "prior_val_wll": 0.8}).passed


def test_failures_are_listed_first_and_loudly():
    checks = run_checks({"localizer": {"axial_t2": _loc(1.0, 0.0), "sagittal_t2": _loc(30.0, 0.5)},
                         "grader": {"spinal": {"val_wll": 0.9, "prior_val_wll": 0.7}}})
    assert [c.passed for c in checks] == [True, False, False]
    lines = format_checks(checks).splitlines()
    assert lines[0].startswith("!! CHECK FAILED") and lines[1].startswith("!! CHECK FAILED")
    assert "passed" in lines[2]


def _train(cohort: Path, out: Path, *extra: str, threads: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONHASHSEED": "0"}
    argv = [sys.executable, "-m", "spinegrade", "train", "--data", str(cohort), "--out", str(out),
            "--cache", str(out.parent / "cache"), "--stage", "localizer", "--localizer-size", "32", "--epochs", "1",
            "--batch-size", "16", "--folds", "4", "--device", "cpu", *extra]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_a_broken_training_is_flagged_and_fails_under_strict(synth_cohort, tmp_path):
    r = _train(synth_cohort, tmp_path / "run", "--lr", "0", "--strict")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "CHECK FAILED" in r.stdout and "check(s) failed (--strict)" in r.stderr
    checks = json.loads((tmp_path / "run" / "summary.json").read_text())["checks"]
    assert {c["name"] for c in checks} == {"sagittal_t2", "sagittal_t1", "axial_t2"}
    assert not any(c["passed"] for c in checks)
    # without --strict the same failures are printed and recorded, and the command still succeeds (the run
    # is finished: resuming it trains nothing and checks it again)
    r2 = _train(synth_cohort, tmp_path / "run", "--lr", "0", "--resume")
    assert r2.returncode == 0 and "CHECK FAILED" in r2.stdout and "nothing to do" in r2.stdout


@pytest.mark.slow
def test_same_seed_and_threads_give_identical_checkpoints(synth_cohort, tmp_path):
    import torch

    for name in ("a", "b"):
        r = _train(synth_cohort, tmp_path / name / "run", "--seed", "3")
        assert r.returncode == 0, r.stdout + r.stderr
    for view in ("sagittal_t2", "sagittal_t1", "axial_t2"):
        sa, sb = (torch.load(tmp_path / n / "run" / "localizer" / view / "best.pt", weights_only=True)["state_dict"]
                  for n in ("a", "b"))
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), view
