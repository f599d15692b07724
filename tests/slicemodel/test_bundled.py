"""The bundled real-trained foramen model: shipped whole, self-describing, and grading the real DICOM studies."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from spinegrade import vocab
from spinegrade.predict import predict
from spinegrade.slicemodel.model import BUNDLED_DIR, SliceModel, bundled_models

NAME = "foramina-sagt1-v1"
HELD_OUT_DICOM = {"100206310", "1002894806"}


def test_the_bundled_model_ships_with_its_card_and_prior():
    assert NAME in bundled_models()
    model = SliceModel.load(NAME)
    card = model.card()
    for words in ("non-commercial", "RSNA", "research", "not a diagnosis", "cross-validated"):
        assert words.lower() in card.lower(), words
    # The two studies that exist as DICOM were kept out of its training, so they can check it honestly.
    assert model.train_studies and not (model.train_studies & HELD_OUT_DICOM)
    prior = model.prior()
    assert set(prior) == set(vocab.TARGETS) and all(abs(sum(p) - 1) < 1e-6 for p in prior.values())
    size = sum(p.stat().st_size for p in (BUNDLED_DIR / NAME).rglob("*") if p.is_file())
    assert size < 8 * 2**20


@pytest.mark.realdata
def test_predict_with_the_bundled_model_on_the_real_studies(real_rsna, tmp_path):
    out = tmp_path / "pred"
    r = predict(real_rsna, NAME, out, device="cpu", log=lambda *_: None, report=True)
    assert r["studies"] == 2
    sub = pd.read_csv(out / "submission.csv")
    assert len(sub) == 50 and np.allclose(sub[list(vocab.SEVERITY_KEYS)].sum(axis=1), 1)
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["model"]["foramina"]["name"] == NAME
    for s in doc["studies"]:
        fora = [f for f in s["findings"] if vocab.CONDITION_BY_KEY[f["condition"]].family == vocab.FORAMINAL]
        assert len(fora) == 10 and all(f["source"] == "model" and f["model"] == NAME for f in fora)
        pts = [p for p in s["points"] if p["role"] == vocab.SAGITTAL_T1]
        assert len(pts) == 10
    html = (out / "report.html").read_text()
    assert f"by {NAME}" in html and "Sagittal T1" in html

