"""Stage 1 at inference: find the five disc levels on a study and place every point the graders need.

Order: the spinal canal points on the mid-sagittal T2; from them (through patient coordinates) the
candidate sagittal T1 slices of each foramen, where the T1 heatmaps pick slice and point; and the axial
T2 slice at each level, where the axial heatmaps place the left and right subarticular recesses.
A missing series only removes what depends on it; the result says what could not be placed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import vocab
from ..geometry import nearest_slice_among
from ..io.types import Series, Study
from ..results import Point
from .data import SeriesInput, neighbours
from .heatmap import decode_heatmaps, refine_peak

LOCALIZER_DIR = "localizer"


def _point(cond: str, level: str, s: Series, k: int, x: float, y: float, source: str) -> Point:
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


class Localizer:
    """The three view networks of a run, ready to place points on a study."""

    def __init__(self, run_dir: Path, device: str | torch.device = "cpu"):
        from ..train.checkpoint import load_model

        self.device = torch.device(device)
        self.models: dict[str, tuple[torch.nn.Module, dict]] = {}
        root = Path(run_dir) / LOCALIZER_DIR
        for view in (vocab.SAGITTAL_T2, vocab.SAGITTAL_T1, vocab.AXIAL_T2):
            p = root / view / "best.pt"
            if p.exists():
                self.models[view] = load_model(p, self.device)
        t1 = self.models.get(vocab.SAGITTAL_T1)
        self.offsets = (t1[1].get("foramen_offsets") if t1 else None) or {
            "left": {lv: 15.0 for lv in vocab.LEVELS}, "right": {lv: -15.0 for lv in vocab.LEVELS}}

    def _heatmaps(self, view: str, images: np.ndarray) -> np.ndarray:
        model, _ = self.models[view]
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(self.device)
            return torch.sigmoid(model(x).float()).cpu().numpy()

    def _size(self, view: str) -> int:
        return int(self.models[view][1]["preprocessing"]["input_size"])

    def _input(self, view: str, stack: np.ndarray, k: int) -> np.ndarray:
        """Slice k and its neighbours, as many channels as this view's network was trained with."""
        return neighbours(stack, k, int(self.models[view][1]["preprocessing"]["n_channels"]))

    # --- views -------------------------------------------------------------------------------------------
    def canal_points(self, t2: Series) -> list[Point]:
        """Five spinal canal points on the most confident of the central sagittal T2 slices."""
        inp = SeriesInput.from_series(t2, self._size(vocab.SAGITTAL_T2))
        mid = t2.n_slices // 2
        cands = sorted({int(np.clip(k, 0, t2.n_slices - 1)) for k in (mid - 1, mid, mid + 1)})
        hms = self._heatmaps(vocab.SAGITTAL_T2, np.stack([self._input(vocab.SAGITTAL_T2, inp.stack, k) for k in cands]))
        decs = [decode_heatmaps(h) for h in hms]
        best = int(np.argmax([d[:, 2].sum() for d in decs]))
        k = cands[best]
        pts = []
        for c, lv in enumerate(vocab.LEVELS):
            x, y = inp.to_original(*decs[best][c, :2])
            pts.append(_point(vocab.CANAL, lv, t2, k, x, y, "localizer"))
        return pts

    def foramen_points(self, t1: Series, canal: list[Point]) -> list[Point]:
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
        hms = dict(zip(slices, self._heatmaps(vocab.SAGITTAL_T1, np.stack([self._input(vocab.SAGITTAL_T1, inp.stack, k) for k in slices]))))
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
            pts.append(_point(vocab.condition_at(vocab.FORAMINAL, side), lv, t1, k, x, y, "localizer"))
        return pts

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
            out.append(_point(p.condition, p.level, t2, k, p.x, p.y, p.source))
        return out

    def axial_points(self, axials: list[Series], centres: dict[str, np.ndarray]) -> list[Point]:
        """At each level: the axial slice nearest the level's centre (patient space), the canal projected onto
        it, and the left/right subarticular recesses from the axial heatmaps."""
        pts = []
        inputs: dict[str, SeriesInput] = {}  # a single-stack axial series serves every level: resize it once
        for lv, centre in centres.items():
            best = nearest_slice_among(centre, [a.geometry for a in axials])
            if best is None:
                continue
            s, (_, k, x, y, _) = axials[best[0]], best
            pts.append(_point(vocab.CANAL, lv, s, k, x, y, "projection"))
            if vocab.AXIAL_T2 in self.models:
                if s.series_id not in inputs:
                    inputs[s.series_id] = SeriesInput.from_series(s, self._size(vocab.AXIAL_T2))
                inp = inputs[s.series_id]
                dec = decode_heatmaps(self._heatmaps(vocab.AXIAL_T2, self._input(vocab.AXIAL_T2, inp.stack, k)[None])[0])
                for c, cond in enumerate(vocab.FAMILY_CONDITIONS[vocab.SUBARTICULAR]):
                    xo, yo = inp.to_original(*dec[c, :2])
                    pts.append(_point(cond, lv, s, k, xo, yo, "localizer"))
        return pts

    # --- whole study -------------------------------------------------------------------------------------
    def localize(self, study: Study) -> tuple[list[Point], list[str]]:
        """All points for a study, and warnings for what could not be placed."""
        warnings: list[str] = []
        points: list[Point] = []
        t2, t1 = study.first(vocab.SAGITTAL_T2), study.first(vocab.SAGITTAL_T1)
        axials = study.by_role(vocab.AXIAL_T2)
        canal: list[Point] = []
        if t2 is not None and vocab.SAGITTAL_T2 in self.models:
            canal = self.canal_points(t2)
            points += canal
        else:
            warnings.append("no Sagittal T2/STIR series: spinal canal levels not localised")
        foramina: list[Point] = []
        if t1 is not None and vocab.SAGITTAL_T1 in self.models:
            foramina = self.foramen_points(t1, canal)
            points += foramina
        else:
            warnings.append("no Sagittal T1 series: foramina not localised")
        if canal and foramina:
            canal = self.centre_canal(t2, canal, foramina)
            points = [p for p in points if not (p.condition == vocab.CANAL and p.role == t2.role)] + canal
        centres = {p.level: np.asarray(p.patient) for p in canal}
        if not centres and foramina:  # no T2: the level centre is midway between the two foramina
            for lv in vocab.LEVELS:
                ps = [np.asarray(p.patient) for p in foramina if p.level == lv]
                if ps:
                    centres[lv] = np.mean(ps, axis=0)
        if axials and centres:
            ax = self.axial_points(axials, centres)
            points += ax
            missing = [lv for lv in vocab.LEVELS if not any(p.level == lv for p in ax)]
            if missing:
                warnings.append("axial T2 does not cover level(s) " + ", ".join(vocab.LEVEL_NAMES[m] for m in missing))
        elif not axials:
            warnings.append("no Axial T2 series: subarticular recesses not localised")
        else:
            warnings.append("no sagittal series to place the axial levels")
        return points, warnings
