"""Stage 2 at inference: the Grader crops as each checkpoint says, and answers the prior where it cannot."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from spinegrade import vocab
from spinegrade.grade.grader import GRADER_DIR, Grader
from spinegrade.grade.spec import DEFAULT_SPECS, crop_channels
from spinegrade.inputs import COND_DIM
from spinegrade.io.dicom import load_study
from spinegrade.models import create_model
from spinegrade.results import study_result_from_labels
from spinegrade.train.checkpoint import prior_record, save_checkpoint


def _fake_run(root, families, crop_of):
    """A run folder whose graders are random seed-CNNs built for the crop `crop_of(family)`."""
    torch.manual_seed(0)
    for fam in families:
        crop = crop_of(fam)
        spec = {"name": "seed-cnn", "in_channels": crop_channels(fam, crop), "num_outputs": 3,
                "kwargs": {"widths": [4, 4, 8, 8, 8], "cond_dim": COND_DIM}}
        net = create_model(spec["name"], spec["in_channels"], 3, **dict(spec["kwargs"]))
        save_checkpoint(root / GRADER_DIR / fam / "best.pt", {
            "kind": "grader", "family": fam, "model": spec, "state_dict": net.state_dict(),
            "preprocessing": {"crop": dataclasses.asdict(crop)}, "prior": prior_record([0, 0, 0, 1, 2])})
    return root


@pytest.fixture(scope="module")
def study_and_points(synth_cohort):
    coords = pd.read_csv(synth_cohort / "train_label_coordinates.csv")
    sid = int(coords.study_id.iloc[0])
    study = load_study(synth_cohort / "train_images" / str(sid))
    return study, study_result_from_labels(study, coords[coords.study_id == sid], {}).points


def test_grader_crops_as_its_checkpoint_says(tmp_path, study_and_points):
    study, points = study_and_points
    one_slice = {f: dataclasses.replace(s, n_slices=1, out_px=24) for f, s in DEFAULT_SPECS.items()}
    grader = Grader(_fake_run(tmp_path, vocab.FAMILIES, one_slice.get), "cpu")
    for fam in vocab.FAMILIES:
        assert grader.crop(fam) == one_slice[fam] != DEFAULT_SPECS[fam]
    findings = grader.grade(study, points)  # 1-slice crops fit the 1-channel models; the default 3 would not
    assert len(findings) == 25
    graded = {(f.condition, f.level) for f in findings if f.source == "model"}
    assert graded == {(p.condition, p.level) for p in points
                      if p.role == vocab.FAMILY_VIEW[vocab.CONDITION_BY_KEY[p.condition].family]}
    for f in findings:
        assert np.isclose(sum(f.probs), 1.0)


def test_a_family_without_a_grader_answers_its_prior(tmp_path, study_and_points):
    study, points = study_and_points
    grader = Grader(_fake_run(tmp_path, [vocab.SPINAL], DEFAULT_SPECS.get), "cpu")
    findings = grader.grade(study, points)
    others = [f for f in findings if vocab.CONDITION_BY_KEY[f.condition].family != vocab.SPINAL]
    assert others and all(f.source == "prior" and f.probs == [1 / 3] * 3 for f in others)
    assert grader.prior(vocab.SPINAL) == pytest.approx(prior_record([0, 0, 0, 1, 2])["class_prior"])
