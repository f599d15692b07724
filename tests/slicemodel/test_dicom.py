"""The slice-trained foramen model on real DICOM studies: slice choice by side, points, findings marked."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from spinegrade import vocab
from spinegrade.errors import DataError
from spinegrade.predict import predict
from spinegrade.slicemodel.dicom import LATERAL_MM, grade_foramina
from spinegrade.slicemodel.model import SliceModel

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def studies(real_rsna):
    from spinegrade.io.dicom import load_study

    return {sid.name: load_study(sid) for sid in sorted((real_rsna / "train_images").iterdir())}


def test_each_side_is_graded_on_a_slice_to_that_side(run, studies):
    model = SliceModel.load(run)
    for study in studies.values():
        points, findings, notes = grade_foramina(model, study)
        assert len(findings) == 10 and not notes
        assert {f.condition for f in findings} == set(vocab.FAMILY_CONDITIONS[vocab.FORAMINAL])
        assert all(f.source == "model" and f.model == model.name and abs(sum(f.probs) - 1) < 1e-6 for f in findings)
        t1 = study.first(vocab.SAGITTAL_T1)
        xs = [t1.geometry.pixel_to_patient(k, t1.shape[1] / 2, t1.shape[0] / 2)[0] for k in range(t1.n_slices)]
        mid = float(np.median(xs))
        for p in points:
            assert p.series_id == t1.series_id and p.role == vocab.SAGITTAL_T1
            side = vocab.CONDITION_BY_KEY[p.condition].side
            d = (xs[p.slice_index] - mid) * (1 if side == "left" else -1)
            assert LATERAL_MM[0] - 0.5 <= d <= LATERAL_MM[1] + 0.5  # the patient's left is +x
            assert 0 <= p.x < t1.shape[1] and 0 <= p.y < t1.shape[0]


def test_a_foramen_is_graded_on_its_highest_slices_mixed(run, studies):
    """Its point on the slice where its level peaks highest, its grade mixed from the three highest; one slice is
    the old choice, and forcing each foramen's slice (a reader's) grades it there alone."""
    model = SliceModel.load(run)
    study = next(iter(studies.values()))
    p1, f1, _ = grade_foramina(model, study, slices=1)
    p3, f3, _ = grade_foramina(model, study, slices=3)
    key = lambda p: (p.condition, p.level)  # noqa: E731
    at1, at3 = {key(p): p for p in p1}, {key(p): p for p in p3}
    assert set(at1) == set(at3) and len(at1) == 10
    for k, p in at1.items():
        assert at3[k].slice_index == p.slice_index and abs(at3[k].x - p.x) < 1e-6 and abs(at3[k].y - p.y) < 1e-6
    g1, g3 = {key(f): np.array(f.probs) for f in f1}, {key(f): np.array(f.probs) for f in f3}
    assert all(abs(v.sum() - 1) < 1e-6 for v in g3.values())
    t1 = study.first(vocab.SAGITTAL_T1)
    for f in f3:  # which slices each grade came from, the point's first
        first = int(t1.instance_numbers[at3[key(f)].slice_index])
        assert f.note.startswith(f"graded on {t1.series_id} instance") and f" {first}" in f.note.split(",")[0]
    assert max(np.abs(g1[k] - g3[k]).max() for k in g1) > 1e-4  # the other slices weigh in
    forced = {k: int(t1.instance_numbers[p.slice_index]) for k, p in at1.items()}
    pf, ff, _ = grade_foramina(model, study, instances=forced, slices=3)
    for f in ff:
        np.testing.assert_allclose(f.probs, g1[key(f)], atol=1e-6)
    with pytest.raises(DataError, match="no instance 99999"):
        grade_foramina(model, study, instances={next(iter(forced)): 99999})


def test_predict_with_a_foramen_model_alone_writes_all_rows(run, real_rsna, tmp_path):
    out = tmp_path / "pred"
    r = predict(real_rsna, run, out, device="cpu", log=lambda *_: None, report=True)
    assert r["studies"] == 2 and not r["failed"]
    sub = pd.read_csv(out / "submission.csv")
    assert len(sub) == 50 and np.allclose(sub[list(vocab.SEVERITY_KEYS)].sum(axis=1), 1)
    doc = json.loads((out / "predictions.json").read_text())
    assert doc["model"]["foramina"]["name"] == SliceModel.load(run).name
    for s in doc["studies"]:
        by_source = {}
        for f in s["findings"]:
            fam = vocab.CONDITION_BY_KEY[f["condition"]].family
            by_source.setdefault(fam, set()).add((f["source"], f["model"]))
        assert by_source[vocab.FORAMINAL] == {("model", doc["model"]["foramina"]["name"])}
        assert by_source[vocab.SPINAL] == {("prior", "")}
        assert sum(p["role"] == vocab.SAGITTAL_T1 for p in s["points"]) == 10
    html = (out / "report.html").read_text()
    assert f"by {doc['model']['foramina']['name']}" in html and "model unknown" not in html


def test_the_mid_sagittal_slice_is_the_middle_of_where_the_spine_is_seen():
    from spinegrade.slicemodel.dicom import _mid_slice

    # the spine seen on slices 6..10 (the best at 10, an edge): the middle of them, not the best
    score = np.array([0.5, 0.2, 0.1, 0.4, 0.6, 0.3, 2.3, 2.5, 3.0, 3.3, 3.4, 0.5, 0.5])
    assert _mid_slice(score) == 8
    assert _mid_slice(np.array([0.1, 3.0, 3.1, 0.2])) == 2  # two slices: the better one
    assert _mid_slice(np.array([1.0])) == 0


def test_a_small_field_of_view_is_set_on_the_training_canvas():
    from spinegrade.slicemodel.dicom import _field_of_view

    img = np.arange(12, dtype=np.uint16).reshape(3, 4) + 1
    out, (oy, ox) = _field_of_view(img, (1.0, 0.5), 6.0)  # 3 x 2 mm shown, 6 mm wanted: 6 rows, 12 columns
    assert out.shape == (6, 12) and (oy, ox) == (1, 4)
    assert (out[oy:oy + 3, ox:ox + 4] == img).all() and out.sum() == img.sum()
    same, off = _field_of_view(img, (1.0, 1.0), 2.0)  # already wider than asked: untouched
    assert same is img and off == (0, 0)
    for bad in ((0.0, 1.0), (float("nan"), 1.0)):  # no usable spacing: untouched, no error
        assert _field_of_view(img, bad, 300.0)[0] is img


def _column_slice(col_x=(60, 72), disc_x=40, size=128):
    """A generated sagittal slice: a vertical bright fluid column between col_x, a darker disc band in front of it,
    dark elsewhere (T2/STIR-like)."""
    img = np.full((size, size), 20.0)
    img[:, col_x[0]:col_x[1] + 1] = 200.0
    img[50:58, disc_x - 15:56] = 90.0
    return img


def test_canal_point_moves_to_the_middle_of_the_fluid_column_at_its_disc():
    from spinegrade.slicemodel.dicom import centre_of_canal

    img = _column_slice()
    discs = np.array([[40.0, 14 + 20 * i] for i in range(5)])  # a vertical spine, the level-2 disc at y=54
    # the model's point at the back of the disc, a little low: moved to the column's middle, level with the disc
    x, y = centre_of_canal(img, discs, 2, np.array([57.0, 58.0]), (0.5, 0.5))
    assert x == pytest.approx(66.0, abs=0.6) and y == pytest.approx(54.0, abs=1e-6)
    # already inside the column, or just behind it: the same middle
    for start in (63.0, 70.0):
        assert centre_of_canal(img, discs, 2, np.array([start, 54.0]), (0.5, 0.5))[0] == pytest.approx(66.0, abs=0.6)
    # the first and last levels use the one neighbour they have
    assert centre_of_canal(img, discs, 0, np.array([55.0, 14.0]), (0.5, 0.5))[0] == pytest.approx(66.0, abs=0.6)
    assert centre_of_canal(img, discs, 4, np.array([55.0, 94.0]), (0.5, 0.5))[0] == pytest.approx(66.0, abs=0.6)


def test_canal_point_stays_where_no_column_is_believable():
    from spinegrade.slicemodel.dicom import centre_of_canal

    discs = np.array([[40.0, 14 + 20 * i] for i in range(5)])
    far = _column_slice(col_x=(100, 110))  # the only bright column 50+ px (25+ mm) behind the point
    assert centre_of_canal(far, discs, 2, np.array([57.0, 54.0]), (0.5, 0.5)) == (57.0, 54.0)
    img = _column_slice()
    assert centre_of_canal(img, discs, 2, np.array([57.0, 54.0]), (float("nan"), 0.5)) == (57.0, 54.0)  # no spacing
    assert centre_of_canal(img, discs, 2, np.array([40.0, 60.0]), (0.5, 0.5)) == (40.0, 60.0)  # no line across
    same = np.array([[40.0, 54.0]] * 5)
    assert centre_of_canal(img, same, 2, np.array([57.0, 54.0]), (0.5, 0.5)) == (57.0, 54.0)  # no spine axis
