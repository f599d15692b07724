"""`spinegrade listen` against a real PACS (Orthanc): studies sent by the PACS come back as SRs in it."""

from __future__ import annotations

import copy
import logging

import pydicom
import pytest
from dicom_net import send_direct, synthetic_studies, wait_until
from pynetdicom import AE
from sr_check import check_sr

from spinegrade.node.spool import safe_name as st_key

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.mark.realdata
def test_real_studies_sent_by_orthanc_come_back_as_srs(orthanc, node, real_copies, predictor, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="spinegrade.node")
    for folder in real_copies.values():
        orthanc.upload(sorted(folder.rglob("*.dcm")))
    images = {uid: [i for i in orthanc.instances(uid) if i["Modality"] != "SR"] for uid in real_copies}
    assert {uid: len(v) for uid, v in images.items()} == {
        uid: len(list(f.rglob("*.dcm"))) for uid, f in real_copies.items()}
    held = {uid: {i["SOPInstanceUID"] for i in v} for uid, v in images.items()}
    before = {uid: {i["ID"] for i in orthanc.srs(uid)} for uid in real_copies}  # the DICOMweb test's, if run
    for uid in real_copies:
        orthanc.send_study(uid)  # Orthanc's REST /modalities/spinegrade/store: a C-STORE to the node
    new = {}
    assert wait_until(lambda: new.update({u: [i for i in orthanc.srs(u) if i["ID"] not in before[u]]
                                          for u in real_copies}) or all(new.values()), timeout=600)
    for uid, folder in real_copies.items():
        assert len(new[uid]) == 1, f"study {uid}: {len(new[uid])} new SRs in Orthanc"
        sr = new[uid][0]
        assert sr["SeriesInstanceUID"] not in {i["SeriesInstanceUID"] for i in images[uid]}  # its own series
        path = tmp_path / f"{uid}.dcm"
        path.write_bytes(orthanc.file(sr["ID"]))
        expected = predictor.predict_path(folder)  # the same files graded here, without the network
        check_sr(path, expected, uid, held[uid])
        assert node.state(uid).gradings == 1 and node.state(uid).sr_sent
    text = caplog.text
    assert "association" in text and "graded" in text and "SR sent" in text


def test_broken_study_is_logged_without_sr_and_the_node_serves_on(orthanc, node, synth_cohort, caplog):
    from pydicom.uid import generate_uid

    caplog.set_level(logging.INFO, logger="spinegrade.node")
    good = synthetic_studies(synth_cohort, 1)[0]
    broken_uid, broken_series = generate_uid(), generate_uid()
    broken = []
    for ds in good[:4]:  # MR headers whose pixel data is cut in half: no slice can be read
        ds = copy.deepcopy(ds)
        if ds.file_meta.TransferSyntaxUID.is_compressed:
            ds.decompress()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = broken_uid, broken_series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
        broken.append(ds)
    statuses, _ = send_direct(broken, node.cfg.port)
    assert statuses == [0] * len(broken)  # received and filed: the problem shows when the study is read
    assert wait_until(lambda: node.state(broken_uid) is not None and node.state(broken_uid).state == "failed",
                      timeout=300)
    assert "pixel" in node.state(broken_uid).error.lower() or "no readable" in node.state(broken_uid).error
    assert f"study {broken_uid}: grading failed, no SR sent" in caplog.text
    # other SOP classes are refused at negotiation, and the node still grades the next good study
    ct = copy.deepcopy(good[0])
    ct.SOPClassUID = ct.file_meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(CT_IMAGE_STORAGE, [str(ct.file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", node.cfg.port, ae_title=node.cfg.ae_title)
    assert not assoc.is_established or [c.abstract_syntax for c in assoc.accepted_contexts] == []
    if assoc.is_established:
        assoc.release()
    uid = str(good[0].StudyInstanceUID)
    statuses, _ = send_direct(good, node.cfg.port)
    assert statuses == [0] * len(good)
    assert len(orthanc.wait_for_srs([uid], timeout=300)[uid]) == 1
    assert orthanc.srs(broken_uid) == [] and orthanc.study_id(broken_uid) is None


def test_ten_studies_at_once_each_graded_once(orthanc, node, synth_cohort, tmp_path, caplog):
    """Orthanc sends ten studies at once (parallel jobs); then an unchanged resend is not graded again and a
    changed one is."""
    from spinegrade.results import read_predictions

    caplog.set_level(logging.INFO, logger="spinegrade.node")
    studies = synthetic_studies(synth_cohort, 11)[1:]  # the first one is the broken-study test's good study
    uids = [str(s[0].StudyInstanceUID) for s in studies]
    assert len(set(uids)) == 10
    for datasets in studies:
        orthanc.upload_datasets(datasets)
    graded_before = node.gradings
    jobs = [orthanc.send_study(uid, asynchronous=True)["ID"] for uid in uids]  # Orthanc runs 4 at a time
    got = orthanc.wait_for_srs(uids, timeout=600)
    assert {u: len(v) for u, v in got.items()} == {u: 1 for u in uids}
    assert all(orthanc.get(f"/jobs/{j}")["State"] == "Success" for j in jobs)
    assert node.gradings - graded_before == 10 and node.peak_active == 1  # one study in memory at a time
    for i, (uid, datasets) in enumerate(zip(uids, studies)):
        st = node.state(uid)
        assert (st.state, st.gradings, st.sr_sent) == ("graded", 1, True)
        path = tmp_path / f"{uid}.dcm"
        path.write_bytes(orthanc.file(got[uid][0]["ID"]))
        sr = pydicom.dcmread(path)
        assert sr.StudyInstanceUID == uid and sr.Modality == "SR"
        if i < 3:  # reading all 25 findings back takes a while: three studies stand for the ten
            _, (expected,) = read_predictions(node.spool.out(st_key(uid)) / "predictions.json")
            check_sr(path, expected, uid, {str(ds.SOPInstanceUID) for ds in datasets})
    # no patient identifier in the node's log (the synthetic PatientName is SYNTH^<patient id>)
    names = {str(s[0].PatientName) for s in studies} | {str(s[0].PatientID) for s in studies}
    assert not [r.getMessage() for r in caplog.records if any(n in r.getMessage() for n in names)]

    caplog.clear()
    orthanc.send_study(uids[0])  # the same study again, byte for byte
    assert wait_until(lambda: "unchanged since its last grading" in caplog.text, timeout=120)
    changed = copy.deepcopy(studies[1][-1])  # one instance sent again, corrected: the study changed
    changed.WindowWidth = int(changed.WindowWidth) + 1
    send_direct([changed], node.cfg.port)
    assert wait_until(lambda: node.state(uids[1]).gradings == 2 and node.state(uids[1]).sr_sent, timeout=300)
    assert node.state(uids[0]).gradings == 1
    assert len(orthanc.wait_for_srs([uids[1]], timeout=60, n=2)[uids[1]]) == 2
