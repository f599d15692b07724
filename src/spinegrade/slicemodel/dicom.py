"""The slice-trained models on a DICOM study: the foramen model picks each foramen's Sagittal T1 slice, places
and grades it; the canal model finds the mid-sagittal slice of the Sagittal T2/STIR series, places the five
canal points and gives each level's yes/no stenosis probability.

The foramen model learned from whole slices stored as the scanner wrote them (anterior to the left, head up, as RSNA's
sagittal series are); a series written the other way round is flipped into that orientation first and the
points mapped back. Each foramen's point lies on the slice, among those 5-40 mm to that side of the midline
(from the canal points when a study localiser gave them, else the middle of the stack), where the level's
heatmap peaks highest; its grade is mixed from the three highest, by peak height (`grade_foramina`). Left is the
patient's left (+x in DICOM patient coordinates).
"""

from __future__ import annotations

import numpy as np

from .. import vocab
from ..errors import DataError
from ..grade.crops import bilinear
from ..io.types import Series, Study
from ..localize.localizer import point_on_slice
from ..results import CANAL_STENOSIS_YES_NO, Finding, Observation, Point
from .canal import TRAINING_FOV_MM
from .model import SliceModel
from .sides import make_series_agree

LATERAL_MM = (5.0, 40.0)
SLICES_MIXED = 3  # a foramen is graded on its side's slices where its level peaks highest, this many, mixed
SLICE_POWER = 32.0  # by weights h^SLICE_POWER of their peak heights (chosen on folds 0, 2, 4: docs/foramina.md)
MIN_SLICE_WEIGHT = 0.01  # a slice that would weigh less is not graded (time), the others' weights renormalised
CANAL_NOTE = ("probability of canal stenosis as yes/no, learned from real mid-sagittal T2 images of another cohort "
              "(their annotators' finding, milder than RSNA's Moderate/Severe): evidence about the canal, not an "
              "RSNA grade")


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


def grade_foramina(model: SliceModel, study: Study, midline_x: float | None = None,
                   instances: dict[tuple[str, str], int] | None = None, slices: int | None = None
                   ) -> tuple[list[Point], list[Finding], list[str]]:
    """Points and findings for the 10 foraminal targets (fewer when a side has no candidate slice), and notes.

    Each foramen is graded on the `slices` (default SLICES_MIXED) slices of its side where its level's heatmap
    peaks highest, their grades mixed by peak height h^SLICE_POWER (`bench/foramina_slice_choice.py` measures it);
    its point is on the highest. `instances`: (condition, level) -> the Sagittal T1 instance number to grade that
    foramen on alone, instead of the model's choice (a reader's slice: how `bench/foramina_dicom_slices.py` tells
    the slice choice apart from the rest)."""
    slices = SLICES_MIXED if slices is None else slices
    t1 = study.first(vocab.SAGITTAL_T1)
    if t1 is None or t1.pixels is None:
        return [], [], ["no Sagittal T1 series: the foramen model could not grade"]
    if not t1.geometry_known:
        return [], [], [f"series {t1.series_id} has no patient geometry: left and right foramina cannot be told apart"]
    rows, cols = t1.shape
    fx, fy = _flips(t1)
    imgs = [_oriented(t1, k, fx, fy) for k in range(t1.n_slices)]
    # every slice looked at once (one view, no refiner) to choose each foramen's slices by their peak heights;
    # the chosen slices are then looked at as the slice sets were scored (`SliceModel.candidates`)
    loc = model.localize_many(imgs, rows, cols, tta=False, refine=False)  # (n, 5, 3) in oriented pixels
    xs = np.array([t1.geometry.pixel_to_patient(k, cols / 2, rows / 2)[0] for k in range(t1.n_slices)])
    mid = float(np.median(xs)) if midline_x is None else float(midline_x)
    notes: list[str] = []
    chosen: dict[tuple[str, str, int], list[tuple[int, float]]] = {}  # foramen -> [(slice, weight)], best first
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
            if instances and (cond, lv) in instances:
                hit = np.flatnonzero(np.asarray(t1.instance_numbers) == int(instances[cond, lv]))
                if not hit.size:
                    raise DataError(f"series {t1.series_id}: no instance {instances[cond, lv]} to grade {cond} {lv} on")
                chosen[cond, lv, li] = [(int(hit[0]), 1.0)]
                continue
            h = loc[cand, li, 2]
            top = np.argsort(-h, kind="stable")[:max(1, slices)]
            w = np.maximum(h[top], 1e-6) ** SLICE_POWER
            w = np.where(w / w.sum() >= MIN_SLICE_WEIGHT, w, 0.0)  # the highest always stays
            chosen[cond, lv, li] = [(int(cand[t]), float(wi / w.sum())) for t, wi in zip(top, w) if wi > 0]
    asks: dict[int, list] = {}  # slice -> [(cond, level, channel)] graded on it
    for (cond, lv, li), ks in chosen.items():
        for k, _ in ks:
            asks.setdefault(k, []).append((cond, lv, li))
    looks = {k: model.candidates(imgs[k], rows, cols) for k in asks}
    picks = {(k, j): looks[k][li].copy() for k, on in asks.items() for j, (_, _, li) in enumerate(on)}
    if model.task.series_together and picks:  # the points of a level on the slices looked at made to agree
        keys = list(picks)
        agreed = make_series_agree([k for k, _ in keys], [asks[k][j][2] for k, j in keys], [picks[key] for key in keys],
                                   {k: v[:, 0, 1] for k, v in looks.items()})
        picks.update(zip(keys, agreed))
    reach = model.neighbour_slices
    graded_on: dict[tuple[int, str, str], tuple[np.ndarray, float, float]] = {}
    for k, on in asks.items():
        ask = [(cond, lv, float(picks[k, j][0, 0]), float(picks[k, j][0, 1])) for j, (cond, lv, _) in enumerate(on)]
        near = [imgs[j] for j in (k - 1, k + 1) if reach and 0 <= j < len(imgs)]
        probs = model.grade(imgs[k], rows, cols, ask, per_member=True,
                            seconds=[tuple(picks[k, j][1]) for j in range(len(on))], neighbours=near)
        for j, (cond, lv, x, y) in enumerate(ask):
            graded_on[k, cond, lv] = (probs[:, j], x, y)
    points: list[Point] = []
    graded, member_probs, said = [], [], []
    for (cond, lv, _), ks in chosen.items():
        member_probs.append(sum(w * graded_on[k, cond, lv][0] for k, w in ks))  # (members, classes)
        k0 = ks[0][0]
        _, x, y = graded_on[k0, cond, lv]
        # back to the series' own pixel grid (the model answers in the labels' pixel-index convention)
        points.append(_point_on(t1, k0, cond, lv, x, y, fx, fy, f"localizer:{model.name}"))
        graded.append((cond, lv))
        said.append(_slices_note(t1, ks))
    findings: list[Finding] = []
    if graded:  # the study's foramina read together where the model has a study-level stage
        probs = model.finish_study(graded, np.stack(member_probs, axis=1))
        findings = [Finding(c, lv, [float(v) for v in p / p.sum()], "model", model=model.name, note=n)
                    for (c, lv), p, n in zip(graded, probs, said)]
    return points, findings, notes


def _slices_note(s: Series, ks: list[tuple[int, float]]) -> str:
    """Which slices a foramen's grade comes from, for a reader to check (predictions.json)."""
    inst = [int(s.instance_numbers[k]) for k, _ in ks]
    if len(ks) == 1:
        return f"graded on {s.series_id} instance {inst[0]}"
    return (f"graded on {s.series_id} instances {', '.join(map(str, inst))}, mixed with weights "
            f"{', '.join(f'{w:.2f}' for _, w in ks)} (the localiser's confidence on each)")


def _point_on(s: Series, k: int, cond: str, lv: str, x: float, y: float, fx: bool, fy: bool, source: str) -> Point:
    """A point found on the oriented slice k, back in the series' own pixel grid."""
    rows, cols = s.shape
    return point_on_slice(cond, lv, s, k, cols - 1 - x if fx else x, rows - 1 - y if fy else y, source)


def _field_of_view(img: np.ndarray, spacing: tuple[float, float], fov_mm: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The slice centred on a zero canvas at least `fov_mm` wide and high, and where it sits (rows, cols offset):
    a model that learned whole slices of a given field of view then sees the anatomy at the size it learned.
    A larger field of view is left as it is."""
    h, w = img.shape
    if not all(np.isfinite(s) and s > 0 for s in spacing):  # a header's spacing that is none: the slice as it is
        return img, (0, 0)
    hh, ww = max(h, int(round(fov_mm / spacing[0]))), max(w, int(round(fov_mm / spacing[1])))
    if (hh, ww) == (h, w):
        return img, (0, 0)
    oy, ox = (hh - h) // 2, (ww - w) // 2
    out = np.zeros((hh, ww), dtype=img.dtype)
    out[oy:oy + h, ox:ox + w] = img
    return out, (oy, ox)


def _mid_slice(score: np.ndarray) -> int:
    """The middle of the run of slices around the best one where the spine is seen (landmark heights at least
    half the best slice's): the canal is seen on several slices, the mid-sagittal plane is central among them."""
    best = int(np.argmax(score))
    lo = hi = best
    while lo > 0 and score[lo - 1] >= score[best] / 2:
        lo -= 1
    while hi < len(score) - 1 and score[hi + 1] >= score[best] / 2:
        hi += 1
    return int(np.floor((lo + hi) / 2 + 0.5)) if best > (lo + hi) / 2 else int(np.ceil((lo + hi) / 2 - 0.5))


CANAL_SEARCH_MM = (-3.0, 15.0)  # where the canal's bright column is looked for, along AP from the model's point
CANAL_MOVE_MM = 12.0  # a centre further than this from the model's point is not believed (the point is kept)
COLUMN_CONTRAST = 1.5  # the column's brightest at least this many times the dark edge in front of it
DARK_SPAN_MM = 6.0  # the dark edge in front of the column (the disc's back, its ligament) is looked for this far


def centre_of_canal(img: np.ndarray, discs: np.ndarray, li: int, canal: np.ndarray,
                    spacing: tuple[float, float]) -> tuple[float, float]:
    """The RSNA canal point of level `li`: the middle of the canal's bright fluid column (T2/STIR) at the level
    of its disc, found on the line from the disc centre across the spine towards the model's canal point.

    The model learned its canal point from another cohort's stenosis boxes, which sit on the narrowing at the
    back of the disc, not always at the disc's own height; RSNA's readers put the point in the middle of the
    canal, level with the disc. Along that line the profile runs
    from the disc's back (dark) into the fluid (bright); the column is the bright run around the brightest
    sample 3 mm in front of to 15 mm behind the model's point, cut at half-way between that peak and the darkest
    sample up to 6 mm in front of it, and its middle is the point. The model's point stays where the slice
    has no usable spacing, the line is degenerate, the brightest is not half again as bright as the edge in
    front of it, the bright run has no dark edge in front of it (a bright disc, not the column) or the middle lies more than 12 mm from it or in front of the window."""
    canal = np.asarray(canal, float)
    disc = np.asarray(discs[li], float)
    mm = float(np.mean(spacing)) if all(np.isfinite(v) and v > 0 for v in spacing) else 0.0
    lo, hi = li - 1 if li else 0, li + 1 if li < len(discs) - 1 else li
    axis = np.asarray(discs[hi], float) - np.asarray(discs[lo], float)  # along the spine, head to feet
    if mm <= 0 or np.linalg.norm(axis) < 1e-6:
        return float(canal[0]), float(canal[1])
    axis /= np.linalg.norm(axis)
    d = canal - disc
    ap = d - (d @ axis) * axis  # across the spine, from the disc towards the canal
    if np.linalg.norm(ap) < 1e-6:
        return float(canal[0]), float(canal[1])
    ap /= np.linalg.norm(ap)
    t0 = float(d @ ap)
    ts = np.arange(max(0.0, t0 + (CANAL_SEARCH_MM[0] - DARK_SPAN_MM) / mm), t0 + CANAL_SEARCH_MM[1] / mm, 0.5)
    img = np.asarray(img, float)
    prof = np.mean([bilinear(img, disc[1] + ts * ap[1] + o * axis[1], disc[0] + ts * ap[0] + o * axis[0])
                    for o in (-1.0, 0.0, 1.0)], axis=0)
    prof = np.convolve(np.pad(prof, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    search = np.flatnonzero(ts >= t0 + CANAL_SEARCH_MM[0] / mm)
    if not search.size:
        return float(canal[0]), float(canal[1])
    j = int(search[np.argmax(prof[search])])
    front = np.flatnonzero((ts >= ts[j] - DARK_SPAN_MM / mm) & (ts <= ts[j]))
    dark = float(prof[front].min())
    if prof[j] < COLUMN_CONTRAST * max(dark, 1e-6):  # nothing brighter than what lies in front: no column
        return float(canal[0]), float(canal[1])
    cut = (prof[j] + dark) / 2
    a = b = j
    while a > 0 and prof[a - 1] > cut:
        a -= 1
    while b < len(ts) - 1 and prof[b + 1] > cut:
        b += 1
    if a == 0:  # no dark edge in front of it: something bright in front of the canal (the disc), not the column
        return float(canal[0]), float(canal[1])
    tc = (ts[a] + ts[b]) / 2
    if abs(tc - t0) * mm > CANAL_MOVE_MM or tc < t0 + CANAL_SEARCH_MM[0] / mm:
        return float(canal[0]), float(canal[1])
    out = disc + tc * ap
    return float(out[0]), float(out[1])


def place_canal(model: SliceModel, study: Study) -> tuple[list[Point], list[Observation], list[str]]:
    """The five spinal canal points on the mid-sagittal T2 slice, each level's yes/no stenosis probability, notes.

    Each slice is first set on a canvas of the training slices' field of view (a smaller field of view, as
    RSNA's 240 mm, would otherwise show the anatomy larger than the model learned it). Among the middle half of
    the stack, the slices where the disc and canal heatmaps peak at least half as high as on the best one show
    the spine; the mid-sagittal slice is the middle of them, and all five points are placed on it (a spine
    tilted across several slices is a known limit). Each canal point is then put where RSNA's readers put theirs,
    in the middle of the canal's fluid column level with its disc (`centre_of_canal`).
    """
    t2 = study.first(vocab.SAGITTAL_T2)
    if t2 is None or t2.pixels is None:
        return [], [], [f"no Sagittal T2/STIR series: {model.name} could not place the canal points"]
    if not t2.geometry_known:
        return [], [], [f"series {t2.series_id} has no patient geometry: {model.name} did not place the canal points"]
    n_lv = len(vocab.LEVELS)
    fx, fy = _flips(t2)
    n = t2.n_slices
    cands = list(range(n // 4, max(n - n // 4, n // 4 + 1)))
    imgs, (oy, ox) = {}, (0, 0)
    for k in cands:
        imgs[k], (oy, ox) = _field_of_view(_oriented(t2, k, fx, fy), t2.pixel_spacing, TRAINING_FOV_MM)
    rows, cols = imgs[cands[0]].shape
    loc = model.localize_many([imgs[k] for k in cands], rows, cols)  # (m, 10, 3): discs, then canal points
    loc[:, :, 0] -= ox
    loc[:, :, 1] -= oy
    best = _mid_slice(loc[:, :, 2].sum(axis=1))
    k = cands[best]
    source = f"localizer:{model.name}"
    points: list[Point] = []
    ask = []
    discs = loc[best, :n_lv, :2]
    img = _oriented(t2, k, fx, fy)
    for li, lv in enumerate(vocab.LEVELS):
        xc, yc = centre_of_canal(img, discs, li, loc[best, n_lv + li, :2], t2.pixel_spacing)
        points.append(_point_on(t2, k, vocab.CANAL, lv, float(xc), float(yc), fx, fy, source))
        xd, yd = loc[best, li, :2]
        ask.append((vocab.CANAL, lv, float(xd) + ox, float(yd) + oy))
    probs = model.grade(imgs[k], rows, cols, ask)
    observations = [Observation(CANAL_STENOSIS_YES_NO, lv, float(p[1] / p.sum()), model.name, CANAL_NOTE)
                    for (_, lv, _, _), p in zip(ask, probs)]
    return points, observations, []
