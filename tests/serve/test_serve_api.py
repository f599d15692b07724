"""The viewer's HTTP API: upload, progress, result; refusals for bad zips, large uploads, unreadable studies."""

from __future__ import annotations

import logging
import re
import shutil
import stat
import zipfile
from pathlib import Path

import pydicom
import pytest
from fastapi.testclient import TestClient

from spinegrade import DISCLAIMER
from spinegrade.errors import SpinegradeError
from spinegrade.serve.app import VIEWS, model_predictor


def _upload(client, data: bytes, name: str = "study.zip"):
    return client.post("/api/upload", content=data, headers={"content-type": "application/zip", "x-filename": name})


def test_upload_grades_and_shows_the_study(make_app, synth_zip, synth_study, wait_for_job, monkeypatch):
    import spinegrade.io.dicom as reader

    reads = []
    real_load_study = reader.load_study
    def load_study(*a, **k):  # counts the reads here that decode pixels (the upload's check reads headers only)
        if k.get("load_pixels", True):
            reads.append(a[0])
        return real_load_study(*a, **k)

    monkeypatch.setattr(reader, "load_study", load_study)
    from spinegrade.serve import app as server

    apart = []
    real_read_apart = server.read_apart
    monkeypatch.setattr(server, "read_apart", lambda *a, **k: apart.append(a[0]) or real_read_apart(*a, **k))
    from spinegrade.report import html

    redrawn = []
    real_key_images = html.key_images
    monkeypatch.setattr(html, "key_images", lambda *a, **k: redrawn.append(1) or real_key_images(*a, **k))
    with TestClient(make_app()) as client:
        assert "Upload a zipped study" in client.get("/").text
        r = _upload(client, synth_zip.read_bytes(), synth_zip.name)
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["study"] == synth_study.name
        done = wait_for_job(client, job["job"])
        assert done["status"] == "done" and done["progress"] == 1.0, done
        # grades, key images, report and SR all from one read of the study, in a reader process: the server's
        # own process decodes no pixels
        assert len(apart) == 1 and reads == []
        assert not redrawn  # the report shows the key images the page drew
        page = client.get(job["url"]).text
        assert DISCLAIMER in page and 'class="grades"' in page
        assert len(re.findall(r'<td class="sev\d', page)) == 25
        images = re.findall(rf'src="(/jobs/{job["job"]}/images/[^"]+)"', page)
        assert len(images) == 8 + 6 + 1 + 1 + 5 + 5  # all; canal: sagittal + 5 axials; foramina; subarticular
        for view in VIEWS:
            assert f'data-view="{view}"' in page
        img = client.get(images[0])
        assert img.status_code == 200 and img.headers["content-type"] == "image/png"
        assert client.get(f"/jobs/{job['job']}/images/..%2Fupload.zip").status_code == 404
        result = client.get(f"/api/jobs/{job['job']}/result").json()
        assert result["study_id"] == synth_study.name and len(result["findings"]) == 25
        assert DISCLAIMER in client.get(f"/jobs/{job['job']}/report.html").text
        sr = client.get(f"/jobs/{job['job']}/sr.dcm")
        assert sr.status_code == 200
        import io

        assert pydicom.dcmread(io.BytesIO(sr.content)).Modality == "SR"


def test_a_study_whose_key_images_cannot_be_drawn_keeps_its_grades(make_app, synth_zip, wait_for_job, monkeypatch):
    from spinegrade.serve import app

    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(app, "key_images", broken)
    with TestClient(make_app()) as client:
        job = _upload(client, synth_zip.read_bytes(), synth_zip.name).json()
        done = wait_for_job(client, job["job"])
        assert done["status"] == "done", done
        page = client.get(job["url"]).text
        assert len(re.findall(r'<td class="sev\d', page)) == 25 and "/images/" not in page
        assert "key images not available: drawing them failed (ZeroDivisionError: float division by zero)" in page
        assert client.get(f"/jobs/{job['job']}/sr.dcm").status_code == 200


def _zip_with(tmp_path, entries: list[tuple[str, bytes]], symlink: str | None = None) -> bytes:
    path = tmp_path / "bad.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("123/ok.txt", b"fine")
        for name, data in entries:
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, "/etc/passwd")
    return path.read_bytes()


@pytest.mark.parametrize("entry, symlink, words", [
    ("../evil.txt", None, "'..'"),
    ("123/../../evil.txt", None, "'..'"),
    ("/tmp/spinegrade-evil.txt", None, "absolute path"),
    ("C:/evil.txt", None, "absolute path"),
    (None, "123/link", "symbolic link"),
])
def test_zip_entries_escaping_the_folder_are_rejected(make_app, tmp_path, entry, symlink, words):
    data = _zip_with(tmp_path, [(entry, b"x")] if entry else [], symlink)
    with TestClient(make_app()) as client:
        r = _upload(client, data)
        assert r.status_code == 400
        detail = r.json()["detail"]
        assert words in detail and "rejected" in detail and (entry or symlink) in detail
        assert not client.app.state.viewer.jobs
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "work" / "evil.txt").exists()
    assert not list((tmp_path / "work").iterdir())  # the refused upload left nothing behind


def test_upload_size_limits(make_app, synth_zip):
    data = synth_zip.read_bytes()
    with TestClient(make_app(max_upload_bytes=len(data) - 1)) as client:
        r = _upload(client, data)
        assert r.status_code == 413 and "larger than the limit" in r.json()["detail"]
    with TestClient(make_app(max_upload_bytes=len(data), max_unpacked_bytes=len(data) // 2)) as client:
        r = _upload(client, data)
        assert r.status_code == 400 and "unpacks to more than" in r.json()["detail"]
    with TestClient(make_app()) as client:
        r = _upload(client, b"this is not a zip")
        assert r.status_code == 400 and "not a zip file" in r.json()["detail"]
        assert _upload(client, b"").status_code == 400


def test_a_study_that_cannot_be_read_gets_a_clear_message(make_app, tmp_path, wait_for_job, synth_study):
    data = _zip_with(tmp_path, [("123/series/1.dcm", b"not dicom at all")])
    with TestClient(make_app()) as client:
        r = _upload(client, data, "123.zip")  # no usable image: refused before it is queued
        assert r.status_code == 400
        assert r.json()["detail"] == ("123: no readable DICOM image found among 2 files (not a DICOM file: ok.txt, "
                                      "series/1.dcm)")
        assert not client.app.state.viewer.jobs and not list((tmp_path / "work").iterdir())
        # readable images, but the study cannot be graded (no labels for a folder named "abc")
        zpath = tmp_path / "abc.zip"
        with zipfile.ZipFile(zpath, "w") as zf:
            for f in sorted(synth_study.rglob("*.dcm"))[:3]:
                zf.write(f, f"abc/{f.parent.name}/{f.name}")
        r = _upload(client, zpath.read_bytes(), "abc.zip")
        assert r.status_code == 202
        done = wait_for_job(client, r.json()["job"])
        assert done["status"] == "error"
        assert done["message"].startswith("Could not read this study: ")
        assert str(tmp_path) not in done["message"]  # no server paths shown
        page = client.get(r.json()["url"]).text
        assert 'id="error"' in page and "Could not read this study" in page
        assert not list((tmp_path / "work").iterdir())  # the failed job keeps its message, not its files


def test_a_failed_job_says_so_only_once_its_files_are_gone(make_app, tmp_path, wait_for_job, synth_study, monkeypatch):
    """The page (or a client) may look the moment a job reads "error": its upload must already be removed then,
    not a moment later (the job's thread used to set the status first)."""
    import spinegrade.serve.app as app_module

    seen = []
    real_rmtree = shutil.rmtree

    def rmtree(path, *a, **kw):
        if Path(path).parent == tmp_path / "work":  # a job's folder
            seen.append([j.status for j in viewer.jobs.values()])
        return real_rmtree(path, *a, **kw)

    monkeypatch.setattr(app_module.shutil, "rmtree", rmtree)
    zpath = tmp_path / "abc.zip"
    with zipfile.ZipFile(zpath, "w") as zf:  # readable images of a folder that cannot be graded
        for f in sorted(synth_study.rglob("*.dcm"))[:3]:
            zf.write(f, f"abc/{f.parent.name}/{f.name}")
    with TestClient(make_app()) as client:
        viewer = client.app.state.viewer
        r = _upload(client, zpath.read_bytes(), "abc.zip")
        assert wait_for_job(client, r.json()["job"])["status"] == "error"
        assert not list((tmp_path / "work").iterdir())
    assert seen and all("error" not in statuses for statuses in seen), seen


def test_logs_name_jobs_not_patients(make_app, synth_study, tmp_path, caplog, wait_for_job):
    """A study whose files carry a patient name and id: the logs show the job and folder, never those."""
    study = tmp_path / synth_study.name
    shutil.copytree(synth_study, study)
    for f in study.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        ds.PatientName, ds.PatientID = "Doe^Janet", "PID-70123-SECRET"
        ds.save_as(f)
    zpath = tmp_path / "named.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(study.rglob("*")):
            zf.write(f, f.relative_to(tmp_path).as_posix())
    caplog.set_level(logging.DEBUG)
    with TestClient(make_app()) as client:
        r = _upload(client, zpath.read_bytes(), "named.zip")
        done = wait_for_job(client, r.json()["job"])
        assert done["status"] == "done", done
        sr = pydicom.dcmread(client.app.state.viewer.jobs[done["job"]].folder / "sr.dcm")
        assert sr.PatientID == "PID-70123-SECRET"  # the SR belongs to the patient; only the logs must not say
    text = caplog.text
    assert done["job"] in text and synth_study.name in text
    assert "Janet" not in text and "70123" not in text


def test_open_a_study_from_the_configured_folder(make_app, synth_cohort, synth_study, wait_for_job):
    with TestClient(make_app(studies_dir=synth_cohort / "train_images")) as client:
        assert f'<option value="{synth_study.name}">' in client.get("/").text
        r = client.post(f"/api/open?name={synth_study.name}")
        assert r.status_code == 202
        assert wait_for_job(client, r.json()["job"])["status"] == "done"
        assert client.post("/api/open?name=..").status_code == 404
        assert client.get("/api/jobs/nope").status_code == 404


def test_model_predictor_needs_a_run_folder(tmp_path):
    with pytest.raises(SpinegradeError, match="run folder not found"):
        model_predictor(tmp_path / "missing")


def test_serve_binds_this_machine_unless_told(tmp_path):
    from spinegrade import cli

    a = cli.build_parser().parse_args(["serve", "--labels", str(tmp_path)])
    assert a.host == "127.0.0.1" and a.max_upload_mb == 500
    bare = cli.build_parser().parse_args(["serve"])  # no model named: the bundled models grade
    assert bare.model is None and bare.labels is None and bare.host == "127.0.0.1"
    with pytest.raises(SystemExit):  # a model and a labels folder exclude each other
        cli.build_parser().parse_args(["serve", "--model", "x", "--labels", str(tmp_path)])
