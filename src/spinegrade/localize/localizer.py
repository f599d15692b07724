"""Stage 1 at inference: find the five disc levels on a study and place every point the graders need.

Order: the spinal canal points on the mid-sagittal T2; from them (through patient coordinates) the
candidate sagittal T1 slices of each foramen, where the T1 heatmaps pick slice and point; and the axial
T2 slice at each level, where the axial heatmaps place the left and right subarticular recesses.
A missing series only removes what depends on it; the result says what could not be placed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .. import vocab
from ..geometry import nearest_slice_among
from ..io.types import Series, Study
from ..results import Point
from ..runtime import Runtime, has_network, runtime, sigmoid
from .data import SeriesInput, neighbours
from .heatmap import decode_heatmaps, refine_peak

LOCALIZER_DIR = "localizer"


def point_on_slice(cond: str, level: str, s: Series, k: int, x: float, y: float, source: str) -> Point:
    """The point (x, y) of slice k of a series, with its patient coordinates and the slice's identifiers."""
    xyz = s.geometry.pixel_to_patient(k, x, y)
    return Point(condition=cond, level=level, series_id=s.series_id, role=s.role,
                 instance_number=int(s.instance_numbers[k]), slice_index=int(k), x=float(x), y=float(y),
                 patient=[float(v) for v in xyz],
                 sop_instance_uid=s.sop_instance_uids[k] if k < len(s.sop_instance_uids) else "", source=source)


def _climb(h: np.ndarray, px: int, py: int) -> tuple[int, int]:
    """From pixel (px, py), step to the highest of the 8 neighbours until none is higher: the local peak."""
    rows, cols = h.shape
    while True:
        y0, y1, x0, x1 = max(py - 1, 0), min(py + 2, rows), max(px - 1, 0), min(px + 2, cols)
        dy, dx = divmod(int(np.argmax(h[y0:y1, x0:x1])), x1 - x0)
        ny, nx = y0 + dy, x0 + dx
        if h[ny, nx] <= h[py, px]:
            return px, py
        px, py = nx, ny


def axial_levels(axials: list[Series], centres: dict[str, np.ndarray]) -> list[tuple]:
    """(level, series, slice, x, y) for each level centre (patient space) that an axial series covers: its
    nearest axial slice and the centre projected onto it."""
    out = []
    for lv, centre in centres.items():
        best = nearest_slice_among(centre, [a.geometry for a in axials])
        if best is not None:
            out.append((lv, axials[best[0]], *best[1:4]))
    return out


def axial_projections(study: Study, canal: list[Point]) -> list[Point]:
    """The canal points carried to the axial slice of each level (what picks the axial slice a grader reads)."""
    axials = study.by_role(vocab.AXIAL_T2)
    centres = {p.level: np.asarray(p.patient) for p in canal if p.patient}
    return [point_on_slice(vocab.CANAL, lv, s, k, x, y, "projection")
            for lv, s, k, x, y in axial_levels(axials, centres)]


class Localizer:
    """The three view networks of a run, ready to place points on a study."""

    def __init__(self, run_dir: Path, device: str | Runtime = "cpu", batch: int | None = None):
        self.runtime = rt = runtime(device)
        # images per pass: on a CPU small passes are fastest (unet-small, one thread: 300 images/s at 8, 230 at
        # 64 and 150 at 1, see bench/bench_predict.py); a GPU wants them large
        self.batch = batch or (8 * rt.threads if rt.type == "cpu" else 256)
        self.models: dict[str, tuple] = {}  # view -> (network: numpy in, numpy out; its checkpoint's description)
        root = Path(run_dir) / LOCALIZER_DIR
        for view in (vocab.SAGITTAL_T2, vocab.SAGITTAL_T1, vocab.AXIAL_T2):
            p = root / view / "best.pt"
            if has_network(p):
                self.models[view] = rt.load(p)
        t1 = self.models.get(vocab.SAGITTAL_T1)
        self.offsets = (t1[1].get("foramen_offsets") if t1 else None) or {
            "left": {lv: 15.0 for lv in vocab.LEVELS}, "right": {lv: -15.0 for lv in vocab.LEVELS}}

    def _heatmaps(self, view: str, images: np.ndarray) -> np.ndarray:
        model, _ = self.models[view]
        return sigmoid(model(images))

    def _size(self, view: str) -> int:
        return int(self.models[view][1]["preprocessing"]["input_size"])

    def _input(self, view: str, stack: np.ndarray, k: int) -> np.ndarray:
        """Slice k and its neighbours, as many channels as this view's network was trained with."""
        return neighbours(stack, k, int(self.models[view][1]["preprocessing"]["n_channels"]))

    # --- views: each gives the images its network must see and what turns their heatmaps into points -----
    def _canal(self, t2: Series) -> tuple[np.ndarray, Callable[[np.ndarray], list[Point]]]:
        """Five spinal canal points on the most confident of the central sagittal T2 slices."""
        inp = SeriesInput.from_series(t2, self._size(vocab.SAGITTAL_T2))
        mid = t2.n_slices // 2
        cands = sorted({int(np.clip(k, 0, t2.n_slices - 1)) for k in (mid - 1, mid, mid + 1)})

        def finish(hms: np.ndarray) -> list[Point]:
            decs = [decode_heatmaps(h) for h in hms]
            best = int(np.argmax([d[:, 2].sum() for d in decs]))
            k = cands[best]
            pts = []
            for c, lv in enumerate(vocab.LEVELS):
                x, y = inp.to_original(*decs[best][c, :2])
                pts.append(point_on_slice(vocab.CANAL, lv, t2, k, x, y, "localizer"))
            return pts

        return np.stack([self._input(vocab.SAGITTAL_T2, inp.stack, k) for k in cands]), finish

    def _foramina(self, t1: Series, canal: list[Point]) -> tuple[np.ndarray, Callable[[np.ndarray], list[Point]]]:
        """Left and right foramen at each level: candidate slices from the canal + learned offsets, then the
        highest heatmap peak among them.

        Where the canal point of the level is known, the search on each slice is weighted towards it (the
        foramen sits beside the disc, within about a centimetre of the canal's height): the heatmaps find
        foramina reliably, the canal point says which level each one is.
        """
        inp = SeriesInput.from_series(t1, self._size(vocab.SAGITTAL_T1))
        g = t1.geometry
        sign = float(np.sign(g.normal[0]) or 1.0)
        off = g.slice_offsets
        canal_by_level = {p.level: np.asarray(p.patient) for p in canal}
        centre = np.mean(list(canal_by_level.values()), axis=0) if canal_by_level else None
        wanted: dict[tuple[str, str], list[int]] = {}
        for side in vocab.SIDES:
            for lv in vocab.LEVELS:
                if lv in canal_by_level:
                    mid_off = float(canal_by_level[lv] @ g.normal)
                elif centre is not None:
                    mid_off = float(centre @ g.normal)
                else:
                    mid_off = float(off.mean())
                target = mid_off + self.offsets[side][lv] * sign
                k = int(np.argmin(np.abs(off - target)))
                wanted[(side, lv)] = sorted({int(np.clip(j, 0, t1.n_slices - 1)) for j in range(k - 2, k + 3)})
        slices = sorted({k for ks in wanted.values() for k in ks})

        def finish(heatmaps: np.ndarray) -> list[Point]:
            hms = dict(zip(slices, heatmaps))
            size = hms[slices[0]].shape[-1]
            yy, xx = np.mgrid[0:size, 0:size]
            pts = []
            for (side, lv), ks in wanted.items():
                c = vocab.LEVELS.index(lv)
                best = None
                for j in ks:
                    h = hms[j][c]
                    weighted = h
                    if lv in canal_by_level:
                        _, cx, cy, _ = g.patient_to_pixel(canal_by_level[lv], slice_index=j)
                        ix, iy = inp.to_input(cx, cy)
                        dy = (yy - iy) * inp.mm_per_px[0]
                        dx = (xx - ix) * inp.mm_per_px[1]
                        weighted = h * np.exp(-(dy**2) / (2 * 8.0**2) - dx**2 / (2 * 20.0**2))
                    # the window only picks which peak; its position and height come from the unweighted map: the
                    # window's slope moves the weighted maximum off the peak towards the canal, by a pixel or two
                    # (3 mm each at 96 px), so climb from there to the peak itself
                    py, px = divmod(int(np.argmax(weighted)), size)
                    score = float(weighted[py, px])
                    px, py = _climb(h, px, py)
                    dec = (*refine_peak(h, px, py)[:2], score)
                    if best is None or dec[2] > best[1][2]:
                        best = (j, dec)
                k, dec = best
                x, y = inp.to_original(*dec[:2])
                pts.append(point_on_slice(vocab.condition_at(vocab.FORAMINAL, side), lv, t1, k, x, y, "localizer"))
            return pts

        return np.stack([self._input(vocab.SAGITTAL_T1, inp.stack, k) for k in slices]), finish

    @staticmethod
    def centre_canal(t2: Series, canal: list[Point], foramina: list[Point]) -> list[Point]:
        """Move each canal point to the T2 slice midway between that level's left and right foramina.

        The canal lies between the foramina, and a spine that is tilted or rotated crosses several
        sagittal slices, so the mid-sagittal slice can differ from level to level. The point keeps its
        position in the image; only its slice changes, and never by more than two slices.
        """
        out = []
        for p in canal:
            sides = [np.asarray(f.patient) for f in foramina if f.level == p.level]
            if len(sides) != 2:
                out.append(p)
                continue
            k, _ = t2.geometry.nearest_slice((sides[0] + sides[1]) / 2)
            if k == p.slice_index or abs(k - p.slice_index) > 2:
                out.append(p)
                continue
            out.append(point_on_slice(p.condition, p.level, t2, k, p.x, p.y, p.source))
        return out

    def _axial(self, axials: list[Series], centres: dict[str, np.ndarray]
               ) -> tuple[np.ndarray, Callable[[np.ndarray], list[Point]]]:
        """At each level: the axial slice nearest the level's centre (patient space), the canal projected onto
        it, and the left/right subarticular recesses from the axial heatmaps (every level's slice in one pass)."""
        levels = axial_levels(axials, centres)
        graded = vocab.AXIAL_T2 in self.models
        images = []
        inputs: dict[str, SeriesInput] = {}  # a single-stack axial series serves every level: resize it once
        for _, s, k, _, _ in levels if graded else ():
            if s.series_id not in inputs:
                inputs[s.series_id] = SeriesInput.from_series(s, self._size(vocab.AXIAL_T2))
            images.append(self._input(vocab.AXIAL_T2, inputs[s.series_id].stack, k))

        def finish(hms: np.ndarray) -> list[Point]:
            pts = []
            for i, (lv, s, k, x, y) in enumerate(levels):
                pts.append(point_on_slice(vocab.CANAL, lv, s, k, x, y, "projection"))
                if graded:
                    inp, dec = inputs[s.series_id], decode_heatmaps(hms[i])
                    for c, cond in enumerate(vocab.FAMILY_CONDITIONS[vocab.SUBARTICULAR]):
                        xo, yo = inp.to_original(*dec[c, :2])
                        pts.append(point_on_slice(cond, lv, s, k, xo, yo, "localizer"))
            return pts

        return (np.stack(images) if images else np.zeros((0,), np.float32)), finish

    def _run(self, view: str, jobs: dict[int, tuple[np.ndarray, Callable]]) -> dict[int, list[Point]]:
        """Each job's points: the images of all jobs (studies) go through the view's network together, in
        passes of at most `batch` images, then each job's own heatmaps go to its `finish`."""
        owned = [(i, images) for i, (images, _) in jobs.items() if len(images)]
        heatmaps: dict[int, np.ndarray] = {}
        if owned:
            flat = np.concatenate([images for _, images in owned])
            hms = np.concatenate([self._heatmaps(view, flat[lo:lo + self.batch])
                                  for lo in range(0, len(flat), self.batch)])
            ends = np.cumsum([len(images) for _, images in owned])
            heatmaps = {i: hms[end - len(images):end] for (i, images), end in zip(owned, ends)}
        return {i: finish(heatmaps.get(i)) for i, (_, finish) in jobs.items()}

    # --- whole studies -----------------------------------------------------------------------------------
    def localize(self, study: Study) -> tuple[list[Point], list[str]]:
        """All points for a study, and warnings for what could not be placed."""
        return self.localize_many([study])[0]

    def localize_many(self, studies: list[Study], canal_given: dict[int, list[Point]] | None = None
                      ) -> list[tuple[list[Point], list[str]]]:
        """`localize` for several studies at once: each view's images of all of them go through its network
        together (in passes of `batch` images), which is what fills a GPU; the points are each study's own.

        `canal_given` (study index -> its five canal points, placed by another model) replaces this run's
        Sagittal T2 network: those points then drive the foramen search and the axial slices.
        """
        warnings: list[list[str]] = [[] for _ in studies]
        points: list[list[Point]] = [[] for _ in studies]
        own_t2 = canal_given is None and vocab.SAGITTAL_T2 in self.models
        t2s = [s.first(vocab.SAGITTAL_T2) if own_t2 else None for s in studies]
        t1s = [s.first(vocab.SAGITTAL_T1) if vocab.SAGITTAL_T1 in self.models else None for s in studies]
        canal = self._run(vocab.SAGITTAL_T2, {i: self._canal(t2) for i, t2 in enumerate(t2s) if t2 is not None})
        canal.update({i: pts for i, pts in (canal_given or {}).items() if pts})
        foramina = self._run(vocab.SAGITTAL_T1, {i: self._foramina(t1, canal.get(i, []))
                                                 for i, t1 in enumerate(t1s) if t1 is not None})
        axial_jobs = {}
        for i, study in enumerate(studies):
            c, f = canal.get(i, []), foramina.get(i, [])
            points[i] += c + f
            if i not in canal:
                warnings[i].append("no Sagittal T2/STIR series: spinal canal levels not localised")
            if i not in foramina:
                warnings[i].append("no Sagittal T1 series: foramina not localised")
            if c and f and t2s[i] is not None:
                c = canal[i] = self.centre_canal(t2s[i], c, f)
                points[i] = [p for p in points[i] if not (p.condition == vocab.CANAL and p.role == t2s[i].role)] + c
            centres = {p.level: np.asarray(p.patient) for p in c}
            if not centres and f:  # no T2: the level centre is midway between the two foramina
                for lv in vocab.LEVELS:
                    ps = [np.asarray(p.patient) for p in f if p.level == lv]
                    if ps:
                        centres[lv] = np.mean(ps, axis=0)
            axials = study.by_role(vocab.AXIAL_T2)
            if axials and centres:
                axial_jobs[i] = self._axial(axials, centres)
            elif not axials:
                warnings[i].append("no Axial T2 series: subarticular recesses not localised")
            else:
                warnings[i].append("no sagittal series to place the axial levels")
        for i, ax in self._run(vocab.AXIAL_T2, axial_jobs).items():
            points[i] += ax
            missing = [lv for lv in vocab.LEVELS if not any(p.level == lv for p in ax)]
            if missing:
                warnings[i].append("axial T2 does not cover level(s) "
                                   + ", ".join(vocab.LEVEL_NAMES[m] for m in missing))
        return list(zip(points, warnings))
