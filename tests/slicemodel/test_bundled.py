"""The bundled real-trained foramen model: shipped whole, self-describing, and grading the real DICOM studies."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from spinegrade import vocab
from spinegrade.predict import predict
from spinegrade.results import read_predictions
from spinegrade.slicemodel.bundled import BUNDLED_DIR, bundled_models
from spinegrade.slicemodel.model import SliceModel

NAME = "foramina-sagt1-v1"
V6 = "foramina-sagt1-v6"  # the default foramen model: two fold models (localiser, refiner, five graders each)
HELD_OUT_DICOM = {"100206310", "1002894806"}


@pytest.mark.parametrize("name,members,max_mb", [(NAME, 1, 8), (V6, 2, 25)])
def test_the_bundled_model_ships_with_its_card_and_prior(name, members, max_mb):
    assert name in bundled_models()
    model = SliceModel.load(name)
    assert len(model.members) == members
    card = model.card()
    for words in ("non-commercial", "RSNA", "research", "not a diagnosis", "cross-validated"):
        assert words.lower() in card.lower(), words
    # The two studies that exist as DICOM were kept out of its training, so they can check it honestly.
    assert model.train_studies and not (model.train_studies & HELD_OUT_DICOM)
    prior = model.prior()
    assert set(prior) == set(vocab.TARGETS) and all(abs(sum(p) - 1) < 1e-6 for p in prior.values())
    size = sum(p.stat().st_size for p in (BUNDLED_DIR / name).rglob("*") if p.is_file())
    assert size < max_mb * 1e6


def test_v6_is_the_default_and_v1_stays_loadable():
    import onnx

    from spinegrade.export import INT8_WEIGHTS, WEIGHTS_KEY
    from spinegrade.slicemodel.bundled import bundle_info, default_bundled

    assert default_bundled()["foramina"] == V6 and not bundle_info(NAME)["default"]
    assert "foramina-sagt1-v5" not in bundled_models()  # replaced by v6
    v6 = SliceModel.load(V6)
    # its recipe, read back from its networks: a second look, a second peak and five graders on every fold model,
    # one of them an EfficientNet-Lite0 started from ImageNet weights
    assert all(m.refiner is not None and m.lspec.second_peak_power > 0 and len(m.lspec.tta_zooms) == 3
               for m in v6.members)
    assert all(sorted((g[1].crop_px, g[1].in_channels) for g in m.graders())
               == [(64, 1), (64, 1), (64, 1), (64, 2), (80, 1)] for m in v6.members)
    assert all(sorted((g[1].network, g[1].pretrained) for g in m.graders())
               == [("efficientnet-lite0", True)] + [("resnet10", False)] * 4 for m in v6.members)
    # the graders' weights stored in int8, the localisers' and refiners' not
    for m in v6.members:
        for f in sorted(m.path.glob("*/best.onnx")):
            meta = {p.key: p.value for p in onnx.load(str(f)).metadata_props}
            assert (meta.get(WEIGHTS_KEY) == INT8_WEIGHTS) == f.parent.name.startswith("grader"), f
    assert all(m.refiner is None and m.lspec.second_peak_power == 0 and len(m.graders()) == 1
               for m in SliceModel.load(NAME).members)
    # two fold models: each held out another fifth of the studies; together they trained on every study
    splits = [pd.read_csv(m.path / "split.csv", dtype={"study_id": str}) for m in v6.members]
    held = [set(s.query("role == 'test'")["study_id"]) for s in splits]
    assert not held[0] & held[1] and v6.train_studies == set(splits[0]["study_id"])
    # the study-level stage ships only where its cross-validated figure beat the first stage's (cv.json says)
    cv = json.loads((BUNDLED_DIR / V6 / "cv.json").read_text())["study_stage"]
    assert (v6.stage is not None) == cv["kept"] == (np.mean([f["study"] for f in cv["folds"]])
                                                    < np.mean([f["first_stage"] for f in cv["folds"]]))


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



CANAL_NAME = "canal-sagt2-v1"


def test_info_lists_each_bundled_model_on_its_own_line():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "spinegrade", "info"], capture_output=True, text=True, check=True).stdout
    lines = [ln for ln in out.splitlines() if "bundled" in ln and any(n in ln for n in (NAME, V6, CANAL_NAME))]
    assert len(lines) == 3
    fora = next(ln for ln in lines if NAME in ln)
    canal = next(ln for ln in lines if CANAL_NAME in ln)
    assert "left_neural_foraminal_narrowing" in fora and "0.519" in fora and "non-commercial" in fora
    v6 = next(ln for ln in lines if V6 in ln)
    assert "right_neural_foraminal_narrowing" in v6 and "study-level stage" in v6 and "non-commercial" in v6
    assert "canal" in canal and "AUC" in canal and "CC BY 4.0" in canal


@pytest.mark.realdata
def test_a_newcomers_predict_needs_no_model(real_rsna, tmp_path):
    """`spinegrade predict STUDY --out OUT` with no --model: the bundled models grade and place what they can,
    the prior answers the rest and says so; the canal points come from the bundled Sagittal T2 model, land
    where the radiologists put theirs, and pick the axial slices the readers graded each level on."""
    from spinegrade.evaluate.study import canal_point_table
    from spinegrade.predict import Predictor, find_studies

    out = tmp_path / "pred"
    r = predict(real_rsna, None, out, device="cpu", log=lambda *_: None, report=True, dicom_sr=True)
    assert r["studies"] == 2 and CANAL_NAME in r["models"] and V6 in r["models"]
    sub = pd.read_csv(out / "submission.csv")
    assert len(sub) == 50
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["model"]["canal"]["name"] == CANAL_NAME and doc["model"]["foramina"]["name"] == V6
    for s in doc["studies"]:
        by_family = {}
        for f in s["findings"]:
            by_family.setdefault(vocab.CONDITION_BY_KEY[f["condition"]].family, []).append(f)
        assert len(by_family[vocab.FORAMINAL]) == 10
        assert all(f["source"] == "model" and f["model"] == V6 for f in by_family[vocab.FORAMINAL])
        for fam in (vocab.SPINAL, vocab.SUBARTICULAR):
            assert all(f["source"] == "prior" and "prior" in f["note"] for f in by_family[fam])
        canal = [p for p in s["points"] if p["condition"] == vocab.CANAL and p["role"] == vocab.SAGITTAL_T2]
        assert len(canal) == 5 and all(p["source"] == f"localizer:{CANAL_NAME}" for p in canal)
        axial = [p for p in s["points"] if p["condition"] == vocab.CANAL and p["role"] == vocab.AXIAL_T2]
        assert axial and all(p["source"] == "projection" for p in axial)  # the canal points pick the axial slices
        obs = s["observations"]
        assert [o["level"] for o in obs] == list(vocab.LEVELS)
        assert all(0 <= o["probability"] <= 1 and o["model"] == CANAL_NAME and "not an RSNA grade" in o["note"]
                   for o in obs)
    html = (out / "report.html").read_text()
    assert "not graded on the RSNA scale" in html and "no model trained on real images" in html
    import pydicom

    sr = pydicom.dcmread(next(out.glob("*_sr.dcm")))
    text = str(sr)
    assert "Prior: not graded by a model" in text and "Canal stenosis yes/no" in text
    # where the points land against the radiologists' (bench/canal_points_real.py prints the table): at least
    # 9 of the 10 within 5 mm in plane and 1 instance of the labelled ones
    coords = pd.read_csv(real_rsna / "train_label_coordinates.csv")
    pr = Predictor(None)
    rows = []
    for job in find_studies(real_rsna):
        study = pr.read(job.path, job.descriptions, job.study_id)
        rows += canal_point_table(pr.predict_loaded(study), study, coords[coords["study_id"].astype(str) == job.study_id])
    t = pd.DataFrame(rows)
    assert len(t) == 10 and (t["source"] == f"localizer:{CANAL_NAME}").all()
    assert (t["instances_off"].abs() <= 1).all(), t.to_string()
    assert ((t["in_plane_mm"] <= 5) & (t["instances_off"].abs() <= 1)).sum() >= 9, t.to_string()
    # and through patient space to the axial stacks (the geometry chain: sagittal point -> patient coordinates ->
    # the nearest slice of the series covering the level): each level's axial slice within two instances of the
    # one the readers marked the level's subarticular recesses on
    _, results = read_predictions(out)
    checked = 0
    for res in results:
        axial = {p.level: p for p in res.points if p.role == vocab.AXIAL_T2 and p.condition == vocab.CANAL}
        assert set(axial) == set(vocab.LEVELS), res.warnings
        for lv, p in axial.items():
            lab = coords[(coords["study_id"].astype(str) == res.study_id)
                         & coords["condition"].str.contains("Subarticular") & (coords["level"] == vocab.LEVEL_NAMES[lv])]
            # a series of several axial stacks is read stack by stack (series id ".k"): the readers' series
            assert p.series_id.split(".")[0] in set(lab["series_id"].astype(str)), (res.study_id, lv)
            assert min(abs(p.instance_number - int(i)) for i in lab["instance_number"]) <= 2, (res.study_id, lv)
            checked += 1
    assert checked == 10


def test_graders_that_read_the_same_crops_cut_them_once(monkeypatch):
    """v6's ten graders (two fold models of five) read three kinds of crop: each kind is cut once per slice, and
    the grades are those of cutting every grader's own."""
    import spinegrade.slicemodel.model as model_mod
    from spinegrade.slicemodel.grader import GraderSpec

    v6 = SliceModel.load(V6)
    kinds = {g[1].input_key for m in v6.members for g in m.graders()}
    assert len(kinds) == 3 and sum(len(m.graders()) for m in v6.members) == 10
    yy, xx = np.mgrid[0:200, 0:160]
    img = (np.sin(xx / 7.0) * np.cos(yy / 11.0) * 80 + 100 + np.random.default_rng(0).normal(0, 5, xx.shape))
    asks = [("left_neural_foraminal_narrowing", "l4_l5", 90.0, 120.0),
            ("right_neural_foraminal_narrowing", "l5_s1", 70.5, 150.2)]
    calls = []
    real = model_mod.crop_batch
    monkeypatch.setattr(model_mod, "crop_batch", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    shared = v6.grade(img, 400, 320, asks)
    assert len(calls) == 3
    monkeypatch.setattr(GraderSpec, "input_key", property(lambda self: id(self)))  # nothing shared
    alone = v6.grade(img, 400, 320, asks)
    assert len(calls) == 3 + 10
    assert shared.shape == (2, 3) and np.array_equal(shared, alone)


def test_every_bundled_file_is_package_data():
    """A file of a bundled model that no package-data pattern names would be missing from an installed wheel (a
    further grader's temperature, say, would silently fall back to 1)."""
    from pathlib import PurePosixPath

    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")

    root = BUNDLED_DIR.parent
    patterns = tomllib.loads((root.parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    patterns = patterns["spinegrade"]
    files = [PurePosixPath(p.relative_to(root).as_posix()) for p in BUNDLED_DIR.rglob("*") if p.is_file()
             and "__pycache__" not in p.parts]
    assert files
    missed = [str(f) for f in files if not any(f.match(pat) and len(f.parts) == len(PurePosixPath(pat).parts)
                                               for pat in patterns)]
    assert not missed, missed
