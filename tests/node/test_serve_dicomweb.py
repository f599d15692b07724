"""`spinegrade serve --dicomweb URL --stow URL` against a real PACS (Orthanc): the page lists the server's
studies without patient names, grades one pulled by WADO-RS, and the SR comes back into the study by STOW-RS."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dicom_net import synthetic_studies, wait_until
from fastapi.testclient import TestClient
from orthanc_pacs import free_port
from sr_check import check_sr

from spinegrade import DISCLAIMER
from spinegrade.cli import main
from spinegrade.errors import SpinegradeError
from spinegrade.serve.app import create_app, model_predictor


@pytest.fixture(scope="module")
def web_study(orthanc, synth_cohort):
    """A synthetic study under new UIDs (no other test sends it), on Orthanc; its datasets."""
    datasets = synthetic_studies(synth_cohort, 12)[11]
    for ds in datasets:
        ds.StudyDescription = "LUMBAR SPINE WEB"
    orthanc.upload_datasets(datasets)
    return datasets


def _job(client, job_id: str, timeout: float = 600) -> dict:
    got = {}
    assert wait_until(lambda: got.update(client.get(f"/api/jobs/{job_id}").json())
                      or got["status"] in ("done", "error"), timeout=timeout, step=0.3), got
    return got


def test_serve_lists_grades_and_stores_back_a_dicomweb_study(orthanc, tiny_run, predictor, web_study, tmp_path):
    uid = str(web_study[0].StudyInstanceUID)
    app = create_app(model_predictor(tiny_run), work_dir=tmp_path / "work", dicomweb=orthanc.dicomweb,
                     stow=orthanc.dicomweb, model_info={"name": "tiny"})
    with TestClient(app) as client:
        listed = client.get("/api/dicomweb/studies").json()
        mine = [s for s in listed["studies"] if s["study_uid"] == uid]
        assert listed["server"] == orthanc.dicomweb and len(mine) == 1
        n_series = len({str(ds.SeriesInstanceUID) for ds in web_study})
        assert mine[0] == {"study_uid": uid, "date": str(web_study[0].StudyDate), "description": "LUMBAR SPINE WEB",
                           "series": n_series, "modalities": ["MR"]}
        page = client.get("/").text
        patient = str(web_study[0].PatientName)
        assert uid in page and "LUMBAR SPINE WEB" in page and DISCLAIMER in page
        assert patient not in page and patient not in str(listed)  # QIDO's patient names never reach the page

        job = client.post("/api/dicomweb/grade", params={"study": uid}).json()
        done = _job(client, job["job"])
        assert done["status"] == "done", done["message"]
        assert done["study_uid"] == uid and done["stored"] == orthanc.dicomweb and not done["store_error"]
        result = app.state.viewer.jobs[job["job"]].result
        assert DISCLAIMER in client.get(done["url"]).text and "SR stored on" in client.get(done["url"]).text

    # the grades are those of the same files graded here, without the network
    folder = tmp_path / "local"
    for ds in web_study:
        (folder / str(ds.SeriesInstanceUID)).mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    local = predictor.predict_path(folder)
    assert [f.grade for f in result.findings] == [f.grade for f in local.findings]
    np.testing.assert_allclose([f.probs for f in result.findings], [f.probs for f in local.findings], atol=1e-5)

    srs = orthanc.srs(uid)
    assert len(srs) == 1
    images = [i for i in orthanc.instances(uid) if i["Modality"] != "SR"]
    assert srs[0]["SeriesInstanceUID"] not in {i["SeriesInstanceUID"] for i in images}
    path = tmp_path / "sr.dcm"
    path.write_bytes(orthanc.file(srs[0]["ID"]))
    assert pydicom.dcmread(path).StudyInstanceUID == uid
    check_sr(path, result, uid, {i["SOPInstanceUID"] for i in images})


def test_serve_dicomweb_refusals_are_clear(orthanc, tiny_run, tmp_path, capsys):
    app = create_app(model_predictor(tiny_run), work_dir=tmp_path / "work", dicomweb=orthanc.dicomweb)
    with TestClient(app) as client:
        r = client.post("/api/dicomweb/grade", params={"study": "1.2/../3"})
        assert r.status_code == 400 and "Study Instance UID" in r.json()["detail"]
        job = client.post("/api/dicomweb/grade", params={"study": "1.2.3.4.5.6.7.8.9"}).json()
        done = _job(client, job["job"], timeout=120)
        assert done["status"] == "error" and "no study 1.2.3.4.5.6.7.8.9" in done["message"]
        assert not (tmp_path / "work" / job["job"]).exists()  # a failed retrieval leaves no files
    plain = create_app(model_predictor(tiny_run), work_dir=tmp_path / "plain")
    with TestClient(plain) as client:
        r = client.get("/api/dicomweb/studies")
        assert r.status_code == 404 and "--dicomweb" in r.json()["detail"]
        assert "DICOMweb" not in client.get("/").text
    unreachable = create_app(model_predictor(tiny_run), work_dir=tmp_path / "down",
                             dicomweb=f"http://127.0.0.1:{free_port()}/dicom-web")
    with TestClient(unreachable) as client:
        r = client.get("/api/dicomweb/studies")
        assert r.status_code == 502 and "DICOMweb server not reachable" in r.json()["detail"]
        assert 'id="dicomweb-error"' in client.get("/").text  # the page still opens, saying why
    with pytest.raises(SpinegradeError, match="stow goes with dicomweb"):
        create_app(model_predictor(tiny_run), work_dir=tmp_path / "x", stow=orthanc.dicomweb)
    rc = main(["serve", "--model", str(tiny_run), "--stow", orthanc.dicomweb])
    err = capsys.readouterr().err
    assert rc == 2 and "--stow goes with --dicomweb" in err and "Traceback" not in err
