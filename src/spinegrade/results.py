"""What a prediction for a study is, as plain data: points used, 25 x 3 probabilities, series used.

`predict` writes these into `predictions.json`; the report, DICOM SR and web viewer read them back. The same
structure can be built from ground-truth labels and coordinates (`study_result_from_labels`), so the
viewers can show labels as well as predictions. Torch-free.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import DISCLAIMER, __version__, vocab

FORMAT = "spinegrade.predictions/1"


@dataclass
class Point:
    """A point on one slice of one series that stands for a condition at a level."""

    condition: str  # vocab.CONDITIONS key
    level: str  # vocab.LEVELS key
    series_id: str
    role: str  # role of the series it lies on
    instance_number: int
    slice_index: int  # index in slice order (sorted along the normal)
    x: float  # column, pixels
    y: float  # row, pixels
    patient: list[float] | None = None  # LPS mm
    sop_instance_uid: str = ""
    source: str = "localizer"  # localizer | projection | labels


@dataclass
class Finding:
    """The grade of one condition at one level."""

    condition: str
    level: str
    probs: list[float]  # in vocab.SEVERITY_KEYS order, summing to 1
    source: str = "model"  # model | prior (series missing or level not found) | labels
    label: int | None = None  # ground-truth class index when known
    model: str = ""  # the model that graded it when not the run's own grader (e.g. a bundled foramen model)
    note: str = ""  # why it is what it is, where that needs saying (e.g. why a grade is the prior)

    @property
    def row_id_suffix(self) -> str:
        return vocab.target(self.condition, self.level)

    @property
    def grade(self) -> int:
        return int(max(range(len(self.probs)), key=lambda i: self.probs[i]))


@dataclass
class Observation:
    """A finding outside the 25 graded targets, with a probability of its own: e.g. canal stenosis yes/no,
    learned from another cohort's real images, which is evidence about the canal, not an RSNA grade."""

    name: str  # e.g. "canal_stenosis_yes_no"
    level: str
    probability: float
    model: str
    note: str = ""


# the canal model's yes/no finding (see slicemodel/canal.py): its name in predictions.json, the report and the SR
CANAL_STENOSIS_YES_NO = "canal_stenosis_yes_no"


@dataclass
class SeriesUse:
    series_id: str
    role: str
    role_reason: str
    n_slices: int
    used_for: list[str] = field(default_factory=list)  # condition families graded from it


@dataclass
class StudyResult:
    study_id: str
    path: str
    series: list[SeriesUse]
    points: list[Point]
    findings: list[Finding]
    warnings: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # files not used: {"path" (in the study), "reason"}
    observations: list[Observation] = field(default_factory=list)

    def finding(self, condition: str, level: str) -> Finding:
        for f in self.findings:
            if f.condition == condition and f.level == level:
                return f
        raise KeyError(f"no finding for {condition} {level}")

    def points_for(self, condition: str | None = None, level: str | None = None,
                   role: str | None = None) -> list[Point]:
        return [p for p in self.points if (condition is None or p.condition == condition)
                and (level is None or p.level == level) and (role is None or p.role == role)]

    def submission_rows(self) -> list[dict]:
        """The 25 challenge rows of this study, in the sample submission's order."""
        by_target = {vocab.target(f.condition, f.level): f for f in self.findings}
        rows = []
        for t in vocab.SUBMISSION_TARGETS:
            f = by_target[t]
            rows.append({"row_id": f"{self.study_id}_{t}", **dict(zip(vocab.SEVERITY_KEYS, f.probs))})
        return rows

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StudyResult":
        return cls(study_id=str(d["study_id"]), path=d.get("path", ""),
                   series=[SeriesUse(**s) for s in d.get("series", [])],
                   points=[Point(**p) for p in d.get("points", [])],
                   findings=[Finding(**f) for f in d.get("findings", [])],
                   warnings=list(d.get("warnings", [])),
                   skipped=[dict(k) for k in d.get("skipped", [])],
                   observations=[Observation(**o) for o in d.get("observations", [])])


def write_predictions(path: Path, studies: list[StudyResult], model: dict, failed: list[dict]) -> None:
    """Write predictions.json (atomically)."""
    from .files import atomic_write_text

    doc = {
        "format": FORMAT,
        "spinegrade_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "disclaimer": DISCLAIMER,
        "model": model,
        "studies": [s.to_dict() for s in studies],
        "failed": failed,
    }
    atomic_write_text(Path(path), json.dumps(doc, indent=1))


def read_predictions(path: Path) -> tuple[dict, list[StudyResult]]:
    """Read predictions.json (or a folder holding one): (document header, study results)."""
    from .errors import DataError

    p = Path(path)
    if p.is_dir():
        p = p / "predictions.json"
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise DataError(f"{p}: no predictions.json here (run `spinegrade predict` first)") from None
    except ValueError as e:
        raise DataError(f"{p}: not valid JSON ({e})") from None
    if doc.get("format") != FORMAT:
        raise DataError(f"{p}: not a spinegrade predictions file (format {doc.get('format')!r})")
    return doc, [StudyResult.from_dict(s) for s in doc["studies"]]


def study_result_from_labels(study, coords, labels: dict[str, int | None]) -> StudyResult:
    """A StudyResult that shows ground truth: coordinate rows as points, labels as one-hot findings.

    study: a loaded `Study` (for geometry and SOP UIDs); coords: rows with series_id, instance_number,
    condition, level, x, y (keys or challenge spellings); labels: target -> class index or None.
    """
    points: list[Point] = []
    for r in coords.itertuples(index=False):
        loc = study.locate_row(r)
        if loc is None:
            continue
        s, k, xyz = loc.series, loc.slice_index, loc.patient
        points.append(Point(condition=vocab.parse_condition(r.condition), level=vocab.parse_level(r.level),
                            series_id=s.series_id, role=s.role, instance_number=int(r.instance_number),
                            slice_index=k, x=float(r.x), y=float(r.y), patient=[float(v) for v in xyz],
                            sop_instance_uid=s.sop_instance_uids[k] if s.sop_instance_uids else "",
                            source="labels"))
    findings = []
    for c in vocab.CONDITIONS:
        for lv in vocab.LEVELS:
            y = labels.get(vocab.target(c, lv))
            probs = [1 / 3] * 3 if y is None else [1.0 if i == y else 0.0 for i in range(vocab.N_CLASSES)]
            findings.append(Finding(condition=c, level=lv, probs=probs, source="labels", label=y))
    series = [SeriesUse(s.series_id, s.role, s.role_reason, s.n_slices) for s in study.series]
    return StudyResult(study_id=study.study_id, path=study.path, series=series, points=points,
                       findings=findings)
