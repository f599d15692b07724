"""Read an SR back with highdicom and check every finding against the prediction it should carry."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from spinegrade import vocab
from spinegrade.report.sr import GRADE_CODES, PRIVATE_SCHEME

COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def check_sr(path: Path, expected, study_uid: str, instance_uids: set[str]) -> None:
    """The SR names the study, references only instances the PACS holds, and carries the 25 findings of
    `expected` (a StudyResult): grade code, the three probabilities, and the point on its source instance."""
    import highdicom as hd

    raw = pydicom.dcmread(path)
    assert raw.SOPClassUID == COMPREHENSIVE_3D_SR and raw.Modality == "SR"
    assert raw.StudyInstanceUID == study_uid
    evidence = {i.ReferencedSOPInstanceUID for st in raw.CurrentRequestedProcedureEvidenceSequence
                for se in st.ReferencedSeriesSequence for i in se.ReferencedSOPSequence}
    assert evidence and evidence <= instance_uids
    sr = hd.sr.srread(path)
    groups = sr.content.get_planar_roi_measurement_groups() + sr.content.get_image_measurement_groups()
    by_target = {g.tracking_identifier: g for g in groups}
    assert len(groups) == 25 and sorted(by_target) == sorted(vocab.TARGETS)
    for c in vocab.CONDITIONS:
        for lv in vocab.LEVELS:
            f, g = expected.finding(c, lv), by_target[vocab.target(c, lv)]
            grade = [e.value for e in g.get_qualitative_evaluations() if e.name.meaning == "Severity (attribute)"]
            assert len(grade) == 1 and grade[0].scheme_designator == PRIVATE_SCHEME
            assert grade[0].value == GRADE_CODES[f.grade][0]
            probs = {m.name.meaning: m.value for m in g.get_measurements()}
            assert [probs[f"Probability of {vocab.SEVERITIES[i]}"] for i in range(3)] == pytest.approx(f.probs,
                                                                                                      abs=1e-5)
            points = expected.points_for(c, lv)
            if not points:
                assert not hasattr(g, "roi") or g.roi is None
                continue
            ref = g.roi.ContentSequence[0].ReferencedSOPSequence[0]
            assert ref.ReferencedSOPInstanceUID in instance_uids and ref.ReferencedSOPInstanceUID in evidence
            # the RSNA files repeat SOP Instance UIDs across the series of a study: match UID and spot
            xy = [float(v) for v in g.roi.GraphicData]
            assert any(p.sop_instance_uid == ref.ReferencedSOPInstanceUID
                       and xy == pytest.approx([p.x + 0.5, p.y + 0.5], abs=1e-3) for p in points), \
                f"{c} {lv}: the SR's point {xy} on {ref.ReferencedSOPInstanceUID} is no predicted point"
