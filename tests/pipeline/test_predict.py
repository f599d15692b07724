"""predict: input discovery, challenge-format submission, predictions.json, bad studies in a batch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from spinegrade import vocab
from spinegrade.cli import main
from spinegrade.predict import find_studies, predict
from spinegrade.results import read_predictions


def _check_submission(path, study_ids):
    sub = pd.read_csv(path, dtype={"row_id": str})
    assert list(sub.columns) == ["row_id", "normal_mild", "moderate", "severe"]
    want = [f"{s}_{t}" for s in study_ids for t in vocab.SUBMISSION_TARGETS]
    assert sorted(sub["row_id"]) == sorted(want)
    p = sub[["normal_mild", "moderate", "severe"]].to_numpy()
    assert np.all(p >= 0) and np.allclose(p.sum(1), 1.0, atol=1e-6)
    return sub


def test_find_studies_three_input_kinds(synth_cohort, tmp_path):
    jobs = find_studies(synth_cohort)
    assert len(jobs) == 8 and all(j.descriptions for j in jobs)  # roles from the CSV
    images = synth_cohort / "train_images"
    assert [j.study_id for j in find_studies(images)] == sorted(p.name for p in images.iterdir())
    one = sorted(images.iterdir())[0]
    jobs = find_studies(one)
    assert len(jobs) == 1 and jobs[0].study_id == one.name and jobs[0].descriptions is None


def test_a_folder_of_links_to_studies_is_a_folder_of_studies(synth_cohort, tmp_path):
    """Picking a subset by linking studies into a folder: each link is a study (it was read as one study)."""
    picked = sorted((synth_cohort / "train_images").iterdir())[:3]
    subset = tmp_path / "subset"
    subset.mkdir()
    for s in picked:
        (subset / s.name).symlink_to(s, target_is_directory=True)
    assert [(j.study_id, j.path) for j in find_studies(subset)] == [(s.name, subset / s.name) for s in picked]
    # a study whose only folder entry is a link to another study stays one study: its own files count
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "1.dcm").write_bytes(b"")
    (lone / "other").symlink_to(picked[0], target_is_directory=True)
    assert [j.path for j in find_studies(lone)] == [lone]


def test_an_unreadable_study_folder_does_not_stop_finding_the_others(synth_cohort, monkeypatch):
    images = synth_cohort / "train_images"
    iterdir = Path.iterdir
    readable = list(iterdir(images))[-1]  # the last one looked into: all before it refuse

    def refusing(self):
        if self.parent == images and self != readable:
            raise PermissionError(13, "Permission denied", str(self))
        return iterdir(self)

    monkeypatch.setattr(Path, "iterdir", refusing)
    assert [j.study_id for j in find_studies(images)] == sorted(p.name for p in iterdir(images))


def test_predict_dataset_root(synth_cohort, tiny_run, tmp_path):
    out = tmp_path / "pred"
    r = predict(synth_cohort, tiny_run, out, device="cpu", log=lambda *_: None)
    ids = sorted(p.name for p in (synth_cohort / "train_images").iterdir())
    assert r["studies"] == 8 and r["failed"] == []
    _check_submission(out / "submission.csv", ids)
    doc, results = read_predictions(out)
    assert doc["disclaimer"].startswith("Research use only")
    res = results[0]
    assert len(res.findings) == 25
    spinal = res.points_for("spinal_canal_stenosis", role=vocab.SAGITTAL_T2)
    if spinal:  # the study has a sagittal T2
        assert len(spinal) == 5 and all(len(p.patient) == 3 for p in spinal)
    assert set(r["timings"]) == {"read", "localize", "grade"}


def test_predict_real_studies_without_descriptions(two_studies, tiny_run, tmp_path):
    out = tmp_path / "pred"
    r = predict(two_studies / "train_images", tiny_run, out, device="cpu", log=lambda *_: None)
    assert r["studies"] == 2 and r["failed"] == []
    _check_submission(out / "submission.csv", ["100206310", "1002894806"])
    _, results = read_predictions(out)
    for res in results:
        roles = {s.role for s in res.series}
        assert roles == {vocab.SAGITTAL_T1, vocab.SAGITTAL_T2, vocab.AXIAL_T2}
        assert len(res.points_for(role=vocab.SAGITTAL_T2)) == 5
        assert {p.level for p in res.points_for("left_neural_foraminal_narrowing")} \
            == set(vocab.LEVELS)


def test_batch_with_broken_study_reports_it_and_strict_fails(synth_cohort, tiny_run, tmp_path, capsys):
    folder = tmp_path / "studies"
    images = synth_cohort / "train_images"
    good = sorted(images.iterdir())[:2]
    for g in good:
        shutil.copytree(g, folder / g.name)
    broken = folder / "999" / "1"
    broken.mkdir(parents=True)
    (broken / "1.dcm").write_bytes(b"")
    (broken / "2.dcm").write_text("hello")
    out = tmp_path / "pred"
    assert main(["predict", str(folder), "--model", str(tiny_run), "--out", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "skipped study 999" in err and "Traceback" not in err
    _check_submission(out / "submission.csv", [g.name for g in good])
    rep = json.loads((out / "report.json").read_text())
    assert [f["study_id"] for f in rep["failed"]] == ["999"]
    code = main(["predict", str(folder), "--model", str(tiny_run), "--out", str(tmp_path / "p2"), "--device", "cpu",
                 "--strict"])
    assert code == 2
    assert "could not be read" in capsys.readouterr().err


def test_missing_series_gives_prior_and_says_so(synth_cohort, tiny_run, tmp_path):
    images = synth_cohort / "train_images"
    study = sorted(images.iterdir())[0]
    desc = pd.read_csv(synth_cohort / "train_series_descriptions.csv")
    rows = desc[desc.study_id == int(study.name)]
    t1 = rows[rows.series_description == "Sagittal T1"]
    copy = tmp_path / study.name
    shutil.copytree(study, copy)
    for sid in t1.series_id:
        shutil.rmtree(copy / str(sid))
    out = tmp_path / "pred"
    predict(copy, tiny_run, out, device="cpu", log=lambda *_: None)
    _, (res,) = read_predictions(out)
    fora = [f for f in res.findings if vocab.CONDITION_BY_KEY[f.condition].family == vocab.FORAMINAL]
    assert len(fora) == 10 and all(f.source == "prior" for f in fora)
    assert any("Sagittal T1" in w for w in res.warnings)


def test_bad_model_folder_is_one_clear_error(synth_cohort, tmp_path, capsys):
    assert main(["predict", str(synth_cohort), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such run folder" in err[0]


def test_predict_writes_report_and_sr_from_the_study_it_read(synth_cohort, tiny_run, tmp_path):
    import pydicom

    study = sorted((synth_cohort / "train_images").iterdir())[0]
    out = tmp_path / "pred"
    main(["predict", str(study), "--model", str(tiny_run), "--out", str(out), "--device", "cpu", "--report",
          "--dicom-sr"])
    html = (out / "report.html").read_text()
    assert "Research use only" in html and html.count("<img") >= 1
    sr = pydicom.dcmread(out / f"{study.name}_sr.dcm")
    assert sr.Modality == "SR" and str(sr.PatientID) == study.name


def test_a_study_whose_sr_cannot_be_made_keeps_its_grades(synth_cohort, tiny_run, tmp_path):
    """--dicom-sr on a study whose images lack StudyInstanceUID: the SR cannot reference them, so that study has no
    SR and says why; its grades, report and the exit status are as without --dicom-sr (a semantic fuzz of predict
    found the whole study dropped)."""
    import json
    import shutil

    import pandas as pd
    import pydicom

    study = shutil.copytree(sorted((synth_cohort / "train_images").iterdir())[0], tmp_path / "study")
    for f in study.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        del ds.StudyInstanceUID
        ds.save_as(f)
    out = tmp_path / "pred"
    assert main(["predict", str(study), "--model", str(tiny_run), "--out", str(out), "--device", "cpu", "--report",
                 "--dicom-sr", "--readers", "0"]) == 0
    assert len(pd.read_csv(out / "submission.csv")) == 25 and (out / "report.html").is_file()
    assert not list(out.glob("*_sr.dcm"))
    (res,) = json.loads((out / "predictions.json").read_text())["studies"]
    said = [w for w in res["warnings"] if w.startswith("no DICOM SR: ")]
    assert len(said) == 1 and said[0].startswith(f"no DICOM SR: {study}") and said[0].endswith(
        ".dcm: the source image has no usable SOP, Study or Series Instance UID: the SR could not reference it")
