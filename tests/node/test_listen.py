"""`spinegrade listen` against a real PACS (Orthanc): studies sent by the PACS come back as SRs in it."""

from __future__ import annotations

import logging
import time

import pydicom
import pytest
from dicom_net import send_direct, wait_until
from sr_check import check_sr


@pytest.mark.realdata
def test_real_studies_sent_by_orthanc_come_back_as_srs(orthanc, node, real_copies, predictor, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="spinegrade.node")
    for folder in real_copies.values():
        orthanc.upload(sorted(folder.rglob("*.dcm")))
    held = {uid: {i["SOPInstanceUID"] for i in orthanc.instances(uid)} for uid in real_copies}
    assert {uid: len(v) for uid, v in held.items()} == {uid: len(list(f.rglob("*.dcm")))
                                                        for uid, f in real_copies.items()}
    for uid in real_copies:
        orthanc.send_study(uid)  # Orthanc's REST /modalities/spinegrade/store: a C-STORE to the node
    got = orthanc.wait_for_srs(list(real_copies), timeout=120)
    for uid, folder in real_copies.items():
        assert len(got[uid]) == 1, f"study {uid}: {len(got[uid])} SRs in Orthanc"
        sr = got[uid][0]
        assert sr["SeriesInstanceUID"] not in {i["SeriesInstanceUID"] for i in orthanc.instances(uid)
                                               if i["Modality"] != "SR"}  # its own series, in the study
        path = tmp_path / f"{uid}.dcm"
        path.write_bytes(orthanc.file(sr["ID"]))
        expected = predictor.predict_path(folder)  # the same files graded here, without the network
        check_sr(path, expected, uid, held[uid])
        assert node.state(uid).gradings == 1 and node.state(uid).sr_sent
    text = caplog.text
    assert "association" in text and "graded" in text and "SR sent" in text
    for folder in real_copies.values():  # no patient identifier in the node's log
        pid = str(pydicom.dcmread(next(folder.rglob("*.dcm")), stop_before_pixels=True).PatientID)
        assert all(pid not in r.getMessage().replace(str(uid), "") for r in caplog.records for uid in real_copies)
