"""The slice-trained foramen model on a DICOM study: pick each foramen's Sagittal T1 slice, place and grade it.

The model learned from whole slices stored as the scanner wrote them (anterior to the left, head up, as RSNA's
sagittal series are); a series written the other way round is flipped into that orientation first and the
points mapped back. Each foramen's slice is the one, among the slices 5-40 mm to that side of the midline
(from the canal points when a study localiser gave them, else the middle of the stack), where the level's
heatmap peaks highest. Left is the patient's left (+x in DICOM patient coordinates).
"""

from __future__ import annotations

import numpy as np

from .. import vocab
from ..io.types import Series, Study
from ..results import Finding, Point
from .model import ForaminaModel

LATERAL_MM = (5.0, 40.0)


def _flips(s: Series) -> tuple[bool, bool]:
    """(flip columns, flip rows) that bring a sagittal slice to anterior-left, head-up."""
    return bool(s.geometry.row_dir[1] < 0), bool(s.geometry.col_dir[2] > 0)


def _oriented(s: Series, k: int, fx: bool, fy: bool) -> np.ndarray:
    img = s.pixels[k]
    if fx:
        img = img[:, ::-1]
    if fy:
        img = img[::-1, :]
    return np.ascontiguousarray(img)


def grade_foramina(model: ForaminaModel, study: Study, midline_x: float | None = None
                   ) -> tuple[list[Point], list[Finding], list[str]]:
    """Points and findings for the 10 foraminal targets (fewer when a side has no candidate slice), and notes."""
    t1 = study.first(vocab.SAGITTAL_T1)
    if t1 is None or t1.pixels is None:
        return [], [], ["no Sagittal T1 series: the foramen model could not grade"]
    if not t1.geometry_known:
        return [], [], [f"series {t1.series_id} has no patient geometry: left and right foramina cannot be told apart"]
    rows, cols = t1.shape
    fx, fy = _flips(t1)
    imgs = [_oriented(t1, k, fx, fy) for k in range(t1.n_slices)]
    loc = model.localize_many(imgs, rows, cols)  # (n, 5, 3) in oriented pixels
    xs = np.array([t1.geometry.pixel_to_patient(k, cols / 2, rows / 2)[0] for k in range(t1.n_slices)])
    mid = float(np.median(xs)) if midline_x is None else float(midline_x)
    points: list[Point] = []
    findings: list[Finding] = []
    notes: list[str] = []
    asks: dict[int, list] = {}
    for side, sign in (("left", 1.0), ("right", -1.0)):
        d = sign * (xs - mid)
        cand = np.flatnonzero((d >= LATERAL_MM[0]) & (d <= LATERAL_MM[1]))
        if not cand.size:
            cand = np.flatnonzero(d > 0)
        if not cand.size:
            notes.append(f"no Sagittal T1 slice lies to the patient's {side} of the midline")
            continue
        cond = vocab.condition_at(vocab.FORAMINAL, side)
        for li, lv in enumerate(vocab.LEVELS):
            k = int(cand[np.argmax(loc[cand, li, 2])])
            asks.setdefault(k, []).append((cond, lv, float(loc[k, li, 0]), float(loc[k, li, 1])))
    for k, ask in asks.items():
        probs = model.grade(imgs[k], rows, cols, ask)
        for (cond, lv, x, y), p in zip(ask, probs):
            # back to the series' own pixel grid (the model answers in the labels' pixel-index convention)
            px = cols - 1 - x if fx else x
            py = rows - 1 - y if fy else y
            xyz = t1.geometry.pixel_to_patient(k, px, py)
            points.append(Point(condition=cond, level=lv, series_id=t1.series_id, role=t1.role,
                                instance_number=int(t1.instance_numbers[k]), slice_index=k, x=float(px), y=float(py),
                                patient=[float(v) for v in xyz],
                                sop_instance_uid=t1.sop_instance_uids[k] if k < len(t1.sop_instance_uids) else "",
                                source=f"localizer:{model.name}"))
            findings.append(Finding(cond, lv, [float(v) for v in p / p.sum()], "model", model=model.name))
    return points, findings, notes
