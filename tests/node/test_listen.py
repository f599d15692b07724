"""`spinegrade listen` against a real PACS (Orthanc): studies sent by the PACS come back as SRs in it."""

from __future__ import annotations

import copy
import io
import logging
import time

import numpy as np
import pydicom
import pydicom.uid
import pytest
from dicom_net import send_direct, synthetic_studies, wait_until
from PIL import Image
from pynetdicom import AE
from sr_check import check_sr

from spinegrade.node.spool import safe_name as st_key

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


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
        # the SR is in Orthanc while the node's C-STORE is still being answered: the node marks it sent after
        assert wait_until(lambda uid=uid: node.state(uid).sr_sent, timeout=60)
        assert node.state(uid).gradings == 1
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


def _vm_kb(pid: int | str, field: str) -> int:
    """A /proc/<pid>/status memory figure in kB (VmHWM: peak resident set, VmRSS: resident now)."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


def _reset_peak(pid: int | str) -> None:
    """Start VmHWM afresh from the current resident size (Linux: '5' to clear_refs)."""
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")


def _seconds_per_study(predictor, datasets, folder) -> float:
    """What one grading costs on this machine now: read, grade and write the SR, as a grader process does."""
    from spinegrade.report.sr import write_sr

    for ds in datasets:
        (folder / str(ds.SeriesInstanceUID)).mkdir(parents=True, exist_ok=True)
        ds.save_as(folder / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    t0 = time.perf_counter()
    study = predictor.read(folder)
    write_sr(predictor.predict_loaded(study), study, folder.parent / "timing_sr.dcm")
    return time.perf_counter() - t0


# Bounds of the node while ten studies are sent at once (the synthetic ones are 6-9 MB each, ~75 MB in all):
SCP_GROWTH_MB = 64  # peak resident growth of the process holding the SCP: images go to disk, not memory
GRADER_PEAK_MB = 1536  # peak resident size of the grader process: one study and the tiny run's networks


def test_ten_studies_at_once_each_graded_once(orthanc, node, predictor, synth_cohort, tmp_path, caplog):
    """Orthanc sends ten studies at once (parallel jobs): each is graded once, its SR arrives, the node's
    memory, concurrent gradings and disk stay bounded; then an unchanged resend is not graded again and a
    changed one is. Waits are on conditions, with limits derived from the measured time of one grading."""
    from spinegrade.results import read_predictions

    caplog.set_level(logging.INFO, logger="spinegrade.node")
    studies = synthetic_studies(synth_cohort, 11)[1:]  # the first one is the broken-study test's good study
    uids = [str(s[0].StudyInstanceUID) for s in studies]
    assert len(set(uids)) == 10
    per_study = _seconds_per_study(predictor, studies[0], tmp_path / "timing" / "study")

    def budget(n: int) -> float:
        """Seconds for n gradings one after another, each after its quiet period, at three times the time
        just measured (the load of a shared machine changes while we wait), plus transfers and start-up."""
        return 120 + n * (node.cfg.quiet_seconds + 3 * per_study)

    print(f"one grading took {per_study:.1f} s here: waiting up to {budget(10):.0f} s for the ten")
    for datasets in studies:
        orthanc.upload_datasets(datasets)
    graded_before = node.gradings
    workers = node.grader_pids()
    for pid in ["self", *workers]:
        _reset_peak(pid)
    rss_before = _vm_kb("self", "VmRSS")
    jobs = [orthanc.send_study(uid, asynchronous=True)["ID"] for uid in uids]  # Orthanc runs 4 at a time

    def all_sent() -> bool:
        states = [node.state(u) for u in uids]
        return all(st is not None and st.state == "graded" and st.sr_sent for st in states)

    assert wait_until(all_sent, timeout=budget(10), step=0.5), {u: node.state(u) for u in uids}
    assert wait_until(lambda: all(orthanc.get(f"/jobs/{j}")["State"] in ("Success", "Failure") for j in jobs),
                      timeout=120, step=0.5)
    assert [orthanc.get(f"/jobs/{j}")["State"] for j in jobs] == ["Success"] * 10
    growth_mb = (_vm_kb("self", "VmHWM") - rss_before) / 1024
    grader_mb = max(_vm_kb(pid, "VmHWM") for pid in workers) / 1024
    spooled_mb = sum(f.stat().st_size for u in uids for f in node.spool.images(st_key(u)).rglob("*.dcm")) / 2**20
    print(f"ten studies, {spooled_mb:.0f} MB spooled: SCP process peak grew {growth_mb:.0f} MB, "
          f"grader process peak {grader_mb:.0f} MB")
    assert growth_mb < SCP_GROWTH_MB < spooled_mb
    assert grader_mb < GRADER_PEAK_MB
    # a grading overtaken by more instances of its study sends nothing and is followed by the full one
    superseded = caplog.text.count("changed while it was graded")
    assert node.gradings - graded_before == 10 + superseded and node.peak_active == node.cfg.jobs == 1
    assert node.spool.bytes_used == _held(node) <= node.cfg.max_store_mb * 2**20  # the store's count is the disk's

    got = {u: orthanc.srs(u) for u in uids}  # stored before the node's C-STORE was answered
    assert {u: len(v) for u, v in got.items()} == {u: 1 for u in uids}
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
    orthanc.send_study(uids[0])  # the same study again, byte for byte (returns once Orthanc has sent it)
    assert wait_until(lambda: "unchanged since its last grading" in caplog.text,
                      timeout=60 + 10 * node.cfg.quiet_seconds)
    changed = copy.deepcopy(studies[1][-1])  # one instance sent again, corrected: the study changed
    changed.WindowWidth = int(changed.WindowWidth) + 1
    send_direct([changed], node.cfg.port)
    assert wait_until(lambda: node.state(uids[1]).gradings == 2 and node.state(uids[1]).sr_sent,
                      timeout=budget(1))
    assert node.state(uids[0]).gradings == 1
    assert len(orthanc.srs(uids[1])) == 2


def test_key_images_arrive_as_secondary_capture_in_the_study(orthanc, node, predictor, synth_cohort, tmp_path):
    """With key images on, each key image the report draws arrives in Orthanc beside the SR: a Secondary
    Capture in the same study, its pixels those of the report's rendering, naming the slice it shows."""
    from spinegrade.report.overlays import key_images

    datasets = synthetic_studies(synth_cohort, 13)[12]  # under UIDs no other test sends
    uid = str(datasets[0].StudyInstanceUID)
    orthanc.upload_datasets(datasets)
    node.cfg.key_images = True
    try:
        orthanc.send_study(uid)  # returns once Orthanc has sent it
        assert wait_until(lambda: node.state(uid) is not None and node.state(uid).sr_sent, timeout=600)
    finally:
        node.cfg.key_images = False
    folder = node.spool.images(st_key(uid))
    study = predictor.read(folder, study_id=st_key(uid))
    expected = {img.key: img for img in key_images(study, predictor.predict_loaded(study))}
    assert len(expected) >= 4  # the canal, both foramina and axial levels carry points on this study

    instances = orthanc.instances(uid)
    sc = [i for i in instances if i["Modality"] == "OT"]
    images = {i["SOPInstanceUID"] for i in instances if i["Modality"] == "MR"}
    assert len(orthanc.srs(uid)) == 1 and len(sc) == len(expected)
    assert len({i["SeriesInstanceUID"] for i in sc}) == 1  # one series of its own
    assert sc[0]["SeriesInstanceUID"] not in {i["SeriesInstanceUID"] for i in instances if i["Modality"] != "OT"}
    seen = set()
    for inst in sc:
        path = tmp_path / f"{inst['ID']}.dcm"
        path.write_bytes(orthanc.file(inst["ID"]))
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == SECONDARY_CAPTURE and ds.StudyInstanceUID == uid
        assert ds.PatientID == datasets[0].PatientID and ds.BurnedInAnnotation == "YES"
        key = ds.DerivationDescription.removeprefix("spinegrade key image: ")
        img = next(i for i in expected.values() if i.title == key)
        seen.add(img.key)
        ref = ds.SourceImageSequence[0].ReferencedSOPInstanceUID
        assert ref in images and ref == str(study.get(img.series_id).sop_instance_uids[img.slice_index])
        drawn = np.asarray(Image.open(io.BytesIO(img.png)).convert("RGB"))
        assert ds.pixel_array.shape == drawn.shape and np.array_equal(ds.pixel_array, drawn)
        assert all(m.text in ds.ImageComments for m in img.marks)
    assert seen == set(expected)


def test_store_bound_drops_graded_images_then_refuses(orthanc, node, synth_cohort):
    """The spool stays under --max-store-mb: graded studies' images go first (their states stay), then new
    instances are refused with "out of resources" (0xA700), which a PACS retries later."""
    first, second = synthetic_studies(synth_cohort, 15)[13:]
    u1, u2 = str(first[0].StudyInstanceUID), str(second[0].StudyInstanceUID)
    send_direct(first, node.cfg.port)
    assert wait_until(lambda: node.state(u1) is not None and node.state(u1).sr_sent, timeout=600)
    assert node.spool.images(st_key(u1)).exists()
    limit_before = node.cfg.max_store_mb
    try:
        spool = node.spool
        droppable = sum(f.stat().st_size for k in spool.keys() if spool.load(k).state in ("graded", "failed")
                        for f in spool.images(k).rglob("*") if f.is_file())
        incoming = sum(len(_encoded(ds)) for ds in second)
        u1_bytes = sum(f.stat().st_size for f in spool.images(st_key(u1)).rglob("*") if f.is_file())
        # room for the second study only once every graded study's images are gone, the newest (u1) last
        node.cfg.max_store_mb = (spool.bytes_used - droppable + incoming + u1_bytes / 2) / 2**20
        statuses, _ = send_direct(second, node.cfg.port)
        assert statuses == [0] * len(second)
        assert not node.spool.images(st_key(u1)).exists() and node.state(u1).state == "graded"
        assert node.spool.bytes_used <= node.cfg.max_store_mb * 2**20
        assert node.spool.bytes_used == _held(node)
        node.cfg.max_store_mb = node.spool.bytes_used / 2**20  # full, and nothing graded left to drop
        extra = copy.deepcopy(second[0])
        extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        statuses, _ = send_direct([extra], node.cfg.port)
        assert statuses == [0xA700]
    finally:
        node.cfg.max_store_mb = limit_before
    assert wait_until(lambda: node.state(u2).sr_sent, timeout=600)  # the second is graded as received
    assert node.state(u2).gradings == 1 and len(orthanc.srs(u2)) == 1


def _encoded(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _held(node) -> int:
    """Bytes of every study's images and results on disk (what the store's bound counts)."""
    studies = node.spool.studies_dir
    return sum(f.stat().st_size for f in [*studies.glob("*/images/**/*"), *studies.glob("*/out/**/*")] if f.is_file())
