"""DICOM out: the 25 grades of a study as a Comprehensive 3D SR (TID 1500 measurement report) for PACS.

One measurement group per condition and level: the grade as a coded qualitative evaluation, the three class
probabilities as numeric measurements, and the point as an SCOORD POINT on the real source instance (TID
1410). A finding without a point (its series was missing) becomes an image-level group (TID 1501) so that
all 25 are always there.

Codes: standard ones where they exist (SCT Severity, the SCT lumbar disc levels, SCT Left/Right, DCM
Probability, UCUM "1"); the RSNA three-step grade and the three condition types have no standard code, so
they use the private scheme `99SPINEGRADE`, declared in the Coding Scheme Identification Sequence.

References must name the instances exactly as PACS stores them, so they are read from the source files'
headers. The RSNA challenge files lack SOPClassUID in the dataset (the file meta has it) and use short
UIDs such as "100206310.1.1": the class falls back to the file meta, then MR Image Storage.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .. import DISCLAIMER, __version__, vocab
from ..errors import DataError
from ..files import atomic_path
from ..results import Finding, Point, StudyResult

PRIVATE_SCHEME = "99SPINEGRADE"
PRIVATE_SCHEME_NAME = "spinegrade lumbar spine grading (RSNA 2024 grading scale)"
GRADE_CODES: tuple[tuple[str, str], ...] = (("NM", "Normal/Mild"), ("MOD", "Moderate"), ("SEV", "Severe"))
PROBABILITY_CODES: tuple[tuple[str, str], ...] = (
    ("PNM", "Probability of Normal/Mild"), ("PMOD", "Probability of Moderate"), ("PSEV", "Probability of Severe"))
FINDING_CODES: dict[str, tuple[str, str]] = {
    vocab.SPINAL: ("SCS", "Spinal canal stenosis"),
    vocab.FORAMINAL: ("NFN", "Neural foraminal narrowing"),
    vocab.SUBARTICULAR: ("SAS", "Subarticular stenosis"),
}
# where a grade came from: a model, or the prior (no model graded it), said per grade
SOURCE_NAME = ("GSRC", "Grade source")
SOURCE_CODES: dict[str, tuple[str, str]] = {"model": ("GMODEL", "Graded by a model"),
                                            "prior": ("GPRIOR", "Prior: not graded by a model"),
                                            "labels": ("GLABEL", "Ground-truth label")}
# a yes/no finding outside the RSNA scale (see results.Observation)
OBSERVATION_CODES: dict[str, tuple[str, str]] = {
    "canal_stenosis_yes_no": ("SCSYN", "Canal stenosis yes/no (other cohort; not an RSNA grade)")}
OBSERVATION_PROBABILITY = ("PYES", "Probability of yes")
_LEVEL_SITES = {  # pydicom codedict names of the SCT disc-level codes
    "l1_l2": "LevelOfL1L2IntervertebralDisc",
    "l2_l3": "LevelOfL2L3IntervertebralDisc",
    "l3_l4": "LevelOfL3L4IntervertebralDisc",
    "l4_l5": "LevelOfL4L5IntervertebralDisc",
    "l5_s1": "LevelOfL5S1IntervertebralDisc",
}
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_PATIENT_STUDY_KEYWORDS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber",
                           "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName")


def private_code(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=PRIVATE_SCHEME, meaning=meaning)


def write_sr(result: StudyResult, study, out_path: str | Path, *, series_number: int = 901,
             model_name: str = "spinegrade") -> Path:
    """Write the study's grades as a DICOM Comprehensive 3D SR at `out_path`; returns the path.

    `study` is the loaded `Study` the points refer to (its files are read for the instance references).
    Raises DataError when a referenced file has no usable SOP Instance or Study Instance UID.
    """
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.sr.codedict import codes

    algorithm = hd.sr.AlgorithmIdentification(name=model_name, version=__version__)
    evidence: dict[str, Dataset] = {}  # SOP Instance UID -> reference
    read: dict[tuple[str, int], Dataset] = {}  # (series, slice) -> reference, so each file is read once
    groups = []
    for c in vocab.CONDITIONS:
        cond = vocab.CONDITION_BY_KEY[c]
        finding_type = private_code(*FINDING_CODES[cond.family])
        for lv in vocab.LEVELS:
            f = result.finding(c, lv)
            laterality = None if cond.side is None else (codes.SCT.Left if cond.side == "left" else codes.SCT.Right)
            site = hd.sr.FindingSite(anatomic_location=getattr(codes.SCT, _LEVEL_SITES[lv]), laterality=laterality)
            common = dict(
                tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=vocab.target(c, lv)),
                finding_type=finding_type, finding_sites=[site], algorithm_id=algorithm,
                measurements=_probabilities(f, algorithm),
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(name=codes.SCT.Severity, value=private_code(*GRADE_CODES[f.grade])),
                    hd.sr.QualitativeEvaluation(name=private_code(*SOURCE_NAME),
                                                value=private_code(*SOURCE_CODES.get(f.source, SOURCE_CODES["model"])))],
            )
            groups.append(_group(hd, study, _point_for(result, c, lv), common, read, evidence))
    for o in result.observations:
        if o.name not in OBSERVATION_CODES:
            continue
        by = hd.sr.AlgorithmIdentification(name=o.model or model_name, version=__version__)
        site = hd.sr.FindingSite(anatomic_location=getattr(codes.SCT, _LEVEL_SITES[o.level]))
        common = dict(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{o.name}_{o.level}"),
            finding_type=private_code(*OBSERVATION_CODES[o.name]), finding_sites=[site], algorithm_id=by,
            measurements=[hd.sr.Measurement(name=private_code(*OBSERVATION_PROBABILITY), value=float(o.probability),
                                            unit=codes.UCUM.NoUnits, algorithm_id=by)])
        canal = [p for p in result.points_for(vocab.CANAL, o.level) if p.role == vocab.SAGITTAL_T2]
        groups.append(_group(hd, study, canal[0] if canal else None, common, read, evidence))
    if not evidence:
        evidence = {"": _reference_any(study)}
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=hd.UID(), name="spinegrade", model_name=model_name, manufacturer_name="spinegrade"))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.SCT.ImagingProcedure,
        imaging_measurements=groups,
        title=codes.DCM.ImagingMeasurementReport,
    )
    refs = list(evidence.values())
    sr = hd.sr.Comprehensive3DSR(
        evidence=refs, content=report[0], series_instance_uid=hd.UID(), series_number=series_number,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="spinegrade",
        is_complete=True, series_description=f"spinegrade grades ({DISCLAIMER})"[:64],
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = PRIVATE_SCHEME_NAME
    scheme.CodingSchemeResponsibleOrganization = "spinegrade"
    sr.CodingSchemeIdentificationSequence = [scheme]
    out = Path(out_path)
    with atomic_path(out) as tmp:
        sr.save_as(tmp, enforce_file_format=True)
    return out


def _group(hd, study, point: Point | None, common: dict, read: dict, evidence: dict):
    """A measurement group on its point's source instance (TID 1410), or image-level (TID 1501) without one."""
    if point is None:
        return hd.sr.MeasurementsAndQualitativeEvaluations(**common)
    key = (point.series_id, point.slice_index)
    ref = read[key] = read.get(key) or _reference(study, point)
    evidence[ref.SOPInstanceUID] = ref
    # SCOORD pixel coordinates put (0, 0) at the top-left corner of the first pixel; ours are centres
    region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POINT,
        graphic_data=np.array([[point.x + 0.5, point.y + 0.5]]),
        source_image=hd.sr.SourceImageForRegion(referenced_sop_class_uid=ref.SOPClassUID,
                                                referenced_sop_instance_uid=ref.SOPInstanceUID))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(referenced_region=region, **common)


def _probabilities(f: Finding, algorithm) -> list:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return [hd.sr.Measurement(name=private_code(*PROBABILITY_CODES[i]), value=float(p), unit=codes.UCUM.NoUnits,
                              algorithm_id=algorithm)
            for i, p in enumerate(f.probs)]


def _point_for(result: StudyResult, condition: str, level: str) -> Point | None:
    """The point that stands for a finding: the one on the condition's own view when there are several."""
    pts = result.points_for(condition, level)
    best = [p for p in pts if p.role == vocab.CONDITION_BY_KEY[condition].view]
    return (best or pts or [None])[0]


def _header(path: str):
    from ..io.dicom import read_header

    return read_header(path)  # damaged elements dropped: the source's header was read the same way for grading


def _evidence_item(ds, fallback_uid: str = "", path: str = ""):
    """A minimal dataset naming one source instance (the file `path`), with the patient/study attributes
    highdicom copies."""
    from pydicom.dataset import Dataset

    meta = getattr(ds, "file_meta", None)
    item = Dataset()
    item.SOPClassUID = _image_class(ds.get("SOPClassUID"), meta.get("MediaStorageSOPClassUID") if meta else None,
                                    path)
    item.SOPInstanceUID = _one_uid(ds.get("SOPInstanceUID")) \
        or _one_uid(meta.get("MediaStorageSOPInstanceUID") if meta else None) or _one_uid(fallback_uid)
    item.StudyInstanceUID = _one_uid(ds.get("StudyInstanceUID"))
    item.SeriesInstanceUID = _one_uid(ds.get("SeriesInstanceUID"))
    for kw in _PATIENT_STUDY_KEYWORDS:
        setattr(item, kw, _conformant(kw, ds.get(kw)))
    if not item.SOPInstanceUID or not item.StudyInstanceUID or not item.SeriesInstanceUID:
        raise DataError(f"{path}: the source image has no usable SOP, Study or Series Instance UID: the SR could not "
                        "reference it")
    return item


def _one_uid(value) -> str:
    """A UID as one printable string, or "" where the header holds none (several values, nothing). A UID that
    breaks DICOM's form in other ways is kept: it is what the archive has filed the image under."""
    if not isinstance(value, str):  # (pydicom's several values are a MultiValue)
        return ""
    text = value.strip().rstrip("\0")
    return text if text and text.isprintable() and not set(text) & {" ", "\\"} else ""


def _conformant(keyword: str, value):
    """A patient or study attribute as the SR may copy it, or "" (empty: allowed for each of them) where a
    damaged or hostile value would make highdicom refuse the whole SR: several values, a date, time or sex that
    is not one."""
    import datetime

    from pydicom.multival import MultiValue

    if value is None or isinstance(value, MultiValue):
        return ""
    text = str(value).strip()
    if keyword == "PatientSex":
        return text if text in ("M", "F", "O") else ""
    if keyword.endswith("Date"):
        if not (len(text) == 8 and text.isdigit()):
            return ""
        try:
            datetime.date(int(text[:4]), int(text[4:6]), int(text[6:]))
        except ValueError:  # a month or day that does not exist
            return ""
        return text
    if keyword.endswith("Time"):
        return text if re.fullmatch(r"([01][0-9]|2[0-3])([0-5][0-9]([0-5][0-9](\.[0-9]{1,6})?)?)?", text) else ""
    return value


def _image_class(own, meta_class, path: str) -> str:
    """The SOP class a source image is referenced by: its own, else its file meta's (RSNA files have only that),
    else MR Image Storage when it names none. Raises DataError when it names only classes that are not image
    storage classes DICOM defines (a damaged UID): a reference to it could not be made, nor trusted."""
    named = [u for u in (_one_uid(own), _one_uid(meta_class)) if u]
    for uid in named:
        if _storage_class(uid):
            return uid
    if not named:
        return MR_IMAGE_STORAGE
    raise DataError(f"{path}: SOP Class UID {named[0]!r} is not a storage class DICOM defines: the SR could not "
                    "reference this image")


def _storage_class(uid: str) -> bool:
    """Whether highdicom knows the IOD of this SOP class (it must, to reference an image of it)."""
    try:  # what highdicom itself looks the class up in
        from highdicom._standard_utils import get_sop_class_iod_map
    except ImportError:  # a private module: should it move, pydicom's dictionary of storage classes decides
        from pydicom.uid import UID

        return UID(uid).type == "SOP Class" and UID(uid).keyword.endswith("Storage")
    return uid in get_sop_class_iod_map()


def _reference(study, p: Point):
    series = study.get(p.series_id)
    fallback = series.sop_instance_uids[p.slice_index] if series.sop_instance_uids else ""
    path = series.files[p.slice_index]
    return _evidence_item(_header(path), fallback, path)


def _reference_any(study):
    """Evidence when no finding has a point: the first image of the study, so the SR still names its study."""
    s = study.series[0]
    return _evidence_item(_header(s.files[0]), s.sop_instance_uids[0] if s.sop_instance_uids else "", s.files[0])
