"""The viewer under hostile uploads: damaged zips, a decompression bomb, a full disk, odd requests. The
server must answer 4xx, stay up, and keep no files from a refused upload."""

from __future__ import annotations

import io
import os
import shutil
import struct
import sys
import threading
import zipfile
from pathlib import Path

import pydicom
from fastapi.testclient import TestClient
from pydicom.uid import RLELossless

from spinegrade import batch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "io"))
from dicom_factory import add_short_rle  # noqa: E402

_real_read_job = batch._read_job



def _upload(client, data: bytes, name: str = "study.zip"):
    return client.post("/api/upload", content=data, headers={"content-type": "application/zip", "x-filename": name})


def _nothing_kept(client, work):
    assert not client.app.state.viewer.jobs
    assert not list(work.iterdir())


def _one_entry_zip(payload: bytes) -> bytearray:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("123/1/1.dcm", payload)
    return bytearray(buf.getvalue())


def test_a_zip_with_a_bad_crc_and_lying_sizes_is_refused_and_leaves_nothing(make_app, tmp_path):
    payload = bytes(range(256)) * 64
    bad_crc = _one_entry_zip(payload)
    bad_crc[14:18] = struct.pack("<I", 0xDEADBEEF)  # the local header's CRC-32
    cd = bad_crc.rfind(b"PK\x01\x02")
    bad_crc[cd + 16:cd + 20] = struct.pack("<I", 0xDEADBEEF)  # and the central directory's
    lying = _one_entry_zip(payload)
    for at in (22, lying.rfind(b"PK\x01\x02") + 24):  # uncompressed size: under-reported in both headers
        lying[at:at + 4] = struct.pack("<I", 100)
    cut = _one_entry_zip(payload)
    data_at = 30 + len("123/1/1.dcm")
    cut[data_at + 5:data_at + 40] = b"\xff" * 35  # damaged deflate stream
    with TestClient(make_app()) as client:
        for data in (bad_crc, lying, cut):
            r = _upload(client, bytes(data))
            assert r.status_code == 400, r.text
            detail = r.json()["detail"]
            assert detail.startswith("zip entry '123/1/1.dcm' is damaged (") and detail.endswith("upload rejected")
            _nothing_kept(client, tmp_path / "work")
        assert client.get("/").status_code == 200


def _bomb(src, dst):
    ds = pydicom.dcmread(src)
    ds.compress(RLELossless)
    ds.Rows = ds.Columns = 65535
    dst.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dst)


def test_a_bomb_alone_is_refused_and_beside_a_study_it_is_skipped(make_app, synth_study, tmp_path, wait_for_job,
                                                                 zip_study):
    first = sorted(synth_study.rglob("*.dcm"))[0]
    _bomb(first, tmp_path / "b" / "123" / "1" / "bomb.dcm")
    alone = zip_study(tmp_path / "b" / "123", tmp_path / "bomb.zip")
    mixed = tmp_path / "mixed" / synth_study.name
    import shutil

    shutil.copytree(synth_study, mixed)
    _bomb(first, mixed / first.parent.name / "bomb.dcm")
    with TestClient(make_app()) as client:
        r = _upload(client, alone.read_bytes())
        assert r.status_code == 400
        assert r.json()["detail"].startswith("123: no readable DICOM image found among 1 files (1/bomb.dcm: image too "
                                             "large: the header claims 65535 x 65535 = 4,294,836,225 pixels, over")
        _nothing_kept(client, tmp_path / "work")
        r = _upload(client, zip_study(mixed, tmp_path / "mixed.zip").read_bytes())
        assert r.status_code == 202
        assert wait_for_job(client, r.json()["job"])["status"] == "done"


def test_the_disk_bound_removes_finished_jobs_then_refuses(make_app, synth_zip, wait_for_job, tmp_path):
    data = synth_zip.read_bytes()
    need = 5 * len(data)  # the upload and what it may unpack to
    with TestClient(make_app()) as client:
        viewer = client.app.state.viewer
        first = _upload(client, data).json()["job"]
        assert wait_for_job(client, first)["status"] == "done"
        viewer.max_disk = viewer.disk_used() + need - 1  # the next upload fits only if the first goes
        second = _upload(client, data)
        assert second.status_code == 202
        assert client.get(f"/api/jobs/{first}").status_code == 404  # removed to make room
        assert not (tmp_path / "work" / first).exists()
        assert wait_for_job(client, second.json()["job"])["status"] == "done"
    with TestClient(make_app(max_disk_bytes=need - 1, work_dir=tmp_path / "work2")) as client:
        r = _upload(client, data)
        assert r.status_code == 503 and "no room" in r.json()["detail"]
        _nothing_kept(client, tmp_path / "work2")


def test_multipart_forms_and_hostile_file_names(make_app, synth_zip, tmp_path, wait_for_job):
    with TestClient(make_app()) as client:
        r = client.post("/api/upload", files={"file": ("s.zip", b"PK\x03\x04garbage", "application/zip")})
        assert r.status_code == 400 and "not a zip file" in r.json()["detail"]
        r = client.post("/api/upload", content=b"--x\r\nContent-Disposition: form-data; name=\"f\"\r\n",
                        headers={"content-type": "multipart/form-data; boundary=x"})
        assert r.status_code == 400
        r = _upload(client, synth_zip.read_bytes(), "..%2F..%2Fetc%2Fpasswd.zip")
        assert r.status_code == 202
        job = client.app.state.viewer.jobs[r.json()["job"]]
        assert job.folder.parent == tmp_path / "work"
        assert wait_for_job(client, job.id)["status"] == "done"
    assert not (tmp_path / "etc").exists()


def test_concurrent_uploads_are_all_graded(make_app, synth_zip, wait_for_job):
    data = synth_zip.read_bytes()
    with TestClient(make_app()) as client:
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(_upload(client, data))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [a.status_code for a in answers] == [202, 202, 202]
        assert {wait_for_job(client, a.json()["job"])["status"] for a in answers} == {"done"}


# --- reading a study apart from the server -------------------------------------------------------------------
def _read_or_die(path, descriptions, study_id):
    """batch._read_job, except that a study holding a file named `die` kills its reader, as a decoder's crash
    would (module level: the reader process finds it by name)."""
    if (Path(path) / "die").exists():
        os._exit(1)
    return _real_read_job(path, descriptions, study_id)


def _two_studies(synth_cohort, tmp_path) -> tuple[Path, Path, Path]:
    folder = tmp_path / "studies"
    first, second = sorted((synth_cohort / "train_images").iterdir())[:2]
    return folder, shutil.copytree(first, folder / first.name), shutil.copytree(second, folder / second.name)


def test_a_study_that_kills_its_reader_fails_alone_and_the_server_goes_on(make_app, synth_cohort, tmp_path,
                                                                          wait_for_job, monkeypatch):
    monkeypatch.setattr(batch, "_read_job", _read_or_die)
    folder, doomed, fine = _two_studies(synth_cohort, tmp_path)
    (doomed / "die").write_bytes(b"")
    with TestClient(make_app(studies_dir=folder)) as client:
        bad = wait_for_job(client, client.post(f"/api/open?name={doomed.name}").json()["job"])
        assert bad["status"] == "error"
        assert bad["message"] == f"Could not read this study: {batch.READER_DIED}"
        good = wait_for_job(client, client.post(f"/api/open?name={fine.name}").json()["job"])
        assert good["status"] == "done"


def test_a_panicking_decoder_leaves_no_crash_text_in_the_server_log(make_app, synth_cohort, tmp_path, wait_for_job,
                                                                    capfd, monkeypatch):
    """The server grades in a thread beside its web server; reading in a reader process of its own keeps
    pylibjpeg-rle's panic message off the server's stderr (it reached it before)."""
    monkeypatch.setenv("RUST_BACKTRACE", "0")
    folder, study, _ = _two_studies(synth_cohort, tmp_path)
    add_short_rle(min(study.iterdir()))
    with TestClient(make_app(studies_dir=folder)) as client:
        job_id = client.post(f"/api/open?name={study.name}").json()["job"]
        assert wait_for_job(client, job_id)["status"] == "done"
    assert "panicked" not in capfd.readouterr().err
