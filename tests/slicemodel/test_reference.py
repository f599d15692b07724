"""The slice-model machinery grades as the foramen vertical did before it became one task of it: the bundled
model's probabilities and points on real slices and on the real DICOM studies equal those recorded with the
code before the refactor (`foramina_v1_reference.json`, written by the old `spinegrade.foramina`), to float32
rounding: the inputs are now resampled in numpy, whose rounding differs from torch's by about 1e-7 a pixel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spinegrade import vocab
from spinegrade.predict import predict
from spinegrade.slicemodel.foramina import read_point_slices
from spinegrade.slicemodel.model import SliceModel
from spinegrade.slicemodel.pipeline import predict_rows

TOL = 1e-5
REF = json.loads((Path(__file__).parent / "foramina_v1_reference.json").read_text())
pytestmark = pytest.mark.realdata


def test_real_slices_graded_as_before(foramina_set):
    ps = read_point_slices(foramina_set)
    keep = set(REF["slices"]["paths"])
    sub = ps.subset_studies(sorted(set(ps.slices.loc[ps.slices["path"].isin(keep), "study_id"])))
    pts = sub.points[sub.points["path"].isin(keep)].reset_index(drop=True)
    sub = type(ps)(sub.root, sub.slices[sub.slices["path"].isin(keep)].reset_index(drop=True), pts, True, True)
    got = predict_rows(SliceModel.load("foramina-sagt1-v1"), sub)
    want = pd.DataFrame(REF["slices"]["rows"])
    assert list(got.columns) == list(want.columns)
    assert (got[["path", "condition", "level"]].to_numpy() == want[["path", "condition", "level"]].to_numpy()).all()
    cols = [*vocab.SEVERITY_KEYS, "x_pred", "y_pred"]
    assert np.abs(got[cols].to_numpy(float) - want[cols].to_numpy(float)).max() < TOL


def test_real_dicom_studies_graded_as_before(real_rsna, tmp_path, monkeypatch):
    """Read with the rule of then (each foramen graded on one slice; `predict` now mixes three)."""
    monkeypatch.setattr("spinegrade.slicemodel.dicom.SLICES_MIXED", 1)
    predict(real_rsna, "foramina-sagt1-v1", tmp_path / "p", log=lambda *_: None)
    sub = pd.read_csv(tmp_path / "p" / "submission.csv").set_index("row_id")
    want = REF["dicom"]
    assert len(want) == 20
    got = sub.loc[list(want), list(vocab.SEVERITY_KEYS)].to_numpy()
    assert np.abs(got - np.array(list(want.values()))).max() < TOL
