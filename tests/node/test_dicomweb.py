"""DICOMweb against Orthanc's plugin: `predict --dicomweb URL --study UID --stow URL` pulls a real study by
WADO-RS and the SR it stores by STOW-RS is found in the study by QIDO-RS and read back whole."""

from __future__ import annotations

import pydicom
import pytest
from sr_check import check_sr

from spinegrade.cli import main
from spinegrade.node.dicomweb import client, list_studies
from spinegrade.node.spool import safe_name
from spinegrade.results import read_predictions

SR_MODALITY = {"Modality": "SR"}


def _sr_uids(web, study_uid: str) -> set[str]:
    found = web.search_for_instances(study_instance_uid=study_uid, search_filters=SR_MODALITY)
    return {d["00080018"]["Value"][0] for d in found}


@pytest.mark.realdata
def test_predict_pulls_by_wado_and_stows_the_sr(orthanc, real_copies, tiny_run, tmp_path, capsys):
    uid, folder = sorted(real_copies.items())[-1]
    orthanc.upload(sorted(folder.rglob("*.dcm")))
    assert uid in {s["study_uid"] for s in list_studies(orthanc.dicomweb)}
    web = client(orthanc.dicomweb)
    before = _sr_uids(web, uid)  # another test's node may have put one there already
    out = tmp_path / "pred"
    rc = main(["predict", "--dicomweb", orthanc.dicomweb, "--study", uid, "--model", str(tiny_run),
               "--out", str(out), "--stow", orthanc.dicomweb, "--device", "cpu"])
    assert rc == 0
    assert f"predicted study {uid} ({len(list(folder.rglob('*.dcm')))} instances)" in capsys.readouterr().out
    new = _sr_uids(web, uid) - before
    assert len(new) == 1
    sr_uid = new.pop()
    # the SR's own series is in the study, and WADO-RS gives the instance back whole
    sr_meta = web.search_for_instances(study_instance_uid=uid, search_filters={"SOPInstanceUID": sr_uid})[0]
    series_uid = sr_meta["0020000E"]["Value"][0]
    assert series_uid in {d["0020000E"]["Value"][0] for d in web.search_for_series(study_instance_uid=uid)}
    sr = web.retrieve_instance(uid, series_uid, sr_uid)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    _, (expected,) = read_predictions(out)
    assert expected.study_id == safe_name(uid)
    held = {str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in folder.rglob("*.dcm")}
    check_sr(path, expected, uid, held)


def test_dicomweb_errors_are_one_clear_line(orthanc, tiny_run, tmp_path, capsys):
    rc = main(["predict", "--dicomweb", orthanc.dicomweb, "--study", "1.2.3.4.5.6.7.8.9", "--model", str(tiny_run),
               "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and "no study 1.2.3.4.5.6.7.8.9" in err and "Traceback" not in err
    rc = main(["predict", "--dicomweb", orthanc.dicomweb, "--model", str(tiny_run), "--out", str(tmp_path / "o")])
    assert rc == 2 and "--dicomweb needs --study" in capsys.readouterr().err


def test_an_unreachable_server_is_reported_within_seconds():
    """A refused connection is retried briefly, not for the 30 s of dicomweb-client's defaults."""
    import time

    from orthanc_pacs import free_port

    from spinegrade.node.send import NodeError

    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    t = time.monotonic()
    with pytest.raises(NodeError, match="not reachable"):
        list_studies(url)
    assert time.monotonic() - t < 5
