"""DICOM SR: 25 findings read back, each pointing at a real instance of the study at the labelled spot."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pydicom
import pytest

from spinegrade import vocab
from spinegrade.report.sr import GRADE_CODES, PRIVATE_SCHEME, write_sr


def _study_instances(study) -> dict[str, tuple[str, str]]:
    """SOP Instance UID -> (SOP Class UID as the file states it, file path), read straight from the files."""
    out = {}
    for s in study.series:
        for f in s.files:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            cls = ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID")
            out[ds.SOPInstanceUID] = (cls, f)
    return out


def _groups(path: Path):
    import highdicom as hd

    sr = hd.sr.srread(path)
    return sr, sr.content.get_planar_roi_measurement_groups(), sr.content.get_image_measurement_groups()


def _code_value(group, name_meaning: str) -> str:
    ev = [e for e in group.get_qualitative_evaluations() if e.name.meaning == name_meaning]
    assert len(ev) == 1 and ev[0].value.scheme_designator == PRIVATE_SCHEME
    return ev[0].value.value


@pytest.mark.realdata
def test_real_study_sr_has_25_findings_on_real_instances(real_results, tmp_path):
    for study, result, rows in real_results:
        out = write_sr(result, study, tmp_path / f"{result.study_id}.dcm")
        raw = pydicom.dcmread(out)
        assert raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
        source = pydicom.dcmread(study.series[0].files[0], stop_before_pixels=True)
        assert raw.StudyInstanceUID == source.StudyInstanceUID
        assert raw.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == PRIVATE_SCHEME
        sr, roi_groups, image_groups = _groups(out)
        assert len(roi_groups) == 25 and not image_groups
        instances = _study_instances(study)
        evidence = {i.ReferencedSOPInstanceUID for st in raw.CurrentRequestedProcedureEvidenceSequence
                    for se in st.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
        by_target = {}
        for g in roi_groups:
            region = g.roi
            uid = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            cls = region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPClassUID
            assert uid in instances and cls == instances[uid][0] and uid in evidence
            by_target[g.tracking_identifier] = (uid, [float(v) for v in region.GraphicData], g)
        assert sorted(by_target) == sorted(vocab.TARGETS)
        for r in rows.itertuples():
            uid, (gx, gy), g = by_target[vocab.target(r.condition, r.level)]
            ds = pydicom.dcmread(instances[uid][1], stop_before_pixels=True)
            assert int(ds.InstanceNumber) == r.instance_number
            assert (gx, gy) == pytest.approx((r.x + 0.5, r.y + 0.5), abs=1e-3)  # SCOORD: pixel corner origin
            label = result.finding(r.condition, r.level).label
            assert _code_value(g, "Severity (attribute)") == GRADE_CODES[label][0]
            probs = {m.name.meaning: m.value for m in g.get_measurements()}
            assert probs[f"Probability of {vocab.SEVERITIES[label]}"] == 1.0
            assert sum(probs.values()) == pytest.approx(1.0)


def test_findings_without_a_point_stay_in_the_report(synth_result, tmp_path):
    """A condition graded without a point (its series missing) is an image-level finding: still 25 in all."""
    study, result = synth_result
    probs = [0.2, 0.5, 0.3]
    predicted = replace(
        result,
        points=[p for p in result.points if p.condition != "left_neural_foraminal_narrowing"],
        findings=[replace(f, source="model", label=None, probs=probs) for f in result.findings])
    sr, roi_groups, image_groups = _groups(write_sr(predicted, study, tmp_path / "sr.dcm"))
    assert len(roi_groups) == 20 and len(image_groups) == 5
    assert {g.tracking_identifier for g in image_groups} == {
        vocab.target("left_neural_foraminal_narrowing", lv) for lv in vocab.LEVELS}
    for g in roi_groups + image_groups:
        assert _code_value(g, "Severity (attribute)") == "MOD"
        assert sorted(m.value for m in g.get_measurements()) == pytest.approx(sorted(probs))
    instances = _study_instances(study)
    for g in roi_groups:
        assert g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID in instances


def _changed_copy(study, tmp_path, change):
    """The study read again from a copy of its files under tmp_path, each changed by `change(dataset)`."""
    import shutil

    from spinegrade.io.dicom import load_study

    root = Path(study.series[0].files[0]).parents[1]
    copy = Path(shutil.copytree(root, tmp_path / root.name))
    for f in copy.rglob("*.dcm"):
        ds = pydicom.dcmread(f)
        change(ds)
        ds.save_as(f)
    moved = load_study(copy)
    assert [s.series_id for s in moved.series] == [s.series_id for s in study.series]
    return moved


@pytest.mark.parametrize("damaged", ["dataset", "both"])
def test_a_source_image_of_no_known_storage_class(synth_result, tmp_path, damaged):
    """A damaged SOP Class UID in the source images: the file meta's class serves when it is sound; when the
    images name no storage class at all, no SR is made and the error names the file and the class (never
    highdicom's KeyError)."""
    from spinegrade.errors import DataError

    study, result = synth_result

    def damage(ds):
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.99"
        if damaged == "both":
            ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.99"

    moved = _changed_copy(study, tmp_path, damage)
    if damaged == "dataset":
        _, roi_groups, _ = _groups(write_sr(result, moved, tmp_path / "sr.dcm"))
        assert len(roi_groups) == 25
        assert {g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPClassUID for g in roi_groups} == \
            {"1.2.840.10008.5.1.4.1.1.4"}  # MR Image Storage, from the file meta
    else:
        with pytest.raises(DataError, match=r"\.dcm: SOP Class UID '1\.2\.840\.10008\.5\.1\.4\.1\.1\.99' is not a "
                                            r"storage class DICOM defines: the SR could not reference this image"):
            write_sr(result, moved, tmp_path / "sr.dcm")
        assert not (tmp_path / "sr.dcm").exists()


@pytest.mark.parametrize("keyword, value", [
    ("PatientSex", "Q"), ("PatientName", "A\\B"), ("PatientBirthDate", "notadate"), ("StudyDate", "2024\\2025"),
    ("StudyTime", "xx"), ("SOPInstanceUID", "1.2.3\\4.5"), ("SeriesInstanceUID", ""),
    ("MediaStorageSOPInstanceUID", "1.2.3\\4.5")])  # and the dataset's too: no UID left to reference by
def test_hostile_patient_study_and_instance_values_cost_at_most_the_sr_with_a_reason(synth_result, tmp_path,
                                                                                     keyword, value):
    """Values highdicom would refuse the whole SR for (a sex, date or time that is not one, several values):
    the attribute is left empty; a SOP Instance UID of several values gives way to the file meta's; an image
    without a Series Instance UID cannot be referenced, and the error names its file."""
    from spinegrade.errors import DataError

    study, result = synth_result
    def change(ds):
        if keyword.startswith("MediaStorage"):
            setattr(ds.file_meta, keyword, value)
            ds.SOPInstanceUID = value
        else:
            setattr(ds, keyword, value)

    moved = _changed_copy(study, tmp_path, change)
    out = tmp_path / "sr.dcm"
    if keyword in ("SeriesInstanceUID", "MediaStorageSOPInstanceUID"):
        with pytest.raises(DataError, match=r"\.dcm: the source image has no usable SOP, Study or Series Instance "
                                            r"UID: the SR could not reference it"):
            write_sr(result, moved, out)
        return
    _, roi_groups, _ = _groups(write_sr(result, moved, out))
    assert len(roi_groups) == 25
    raw = pydicom.dcmread(out)
    if keyword == "SOPInstanceUID":
        metas = {pydicom.dcmread(f, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID
                 for s in moved.series for f in s.files}
        refs = {g.roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID for g in roi_groups}
        assert refs and refs <= metas
    else:
        assert raw.get(keyword) in ("", None)
