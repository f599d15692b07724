"""Key images: the slices a reader checks, with each level's point and grade drawn on them.

One image per view that carries points: the sagittal T2 slice of the spinal canal points, the sagittal T1
slices of the left and the right foramina, and the axial T2 slice at each level (canal and both
subarticular points). Images are resampled to square millimetres (pixel spacing honoured), windowed, and
the patient directions (R/L, A/P, S/I) are written on each edge from ImageOrientationPatient, so a
mirrored series cannot pass unnoticed. Every mark records where it was drawn in output pixels, which is
what the tests check against the coordinates.

PIL rather than matplotlib: exact control over where each pixel lands, and no figure machinery per image.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .. import DISCLAIMER, vocab
from ..errors import SpinegradeError, in_words
from ..files import atomic_write_bytes
from ..results import Finding, Point, StudyResult

SEVERITY_RGB: tuple[tuple[int, int, int], ...] = ((40, 190, 60), (255, 205, 0), (235, 40, 40))
UNKNOWN_RGB = (170, 170, 170)  # a point whose grade is unknown (no label)

_SHORT_NAMES = vocab.SHORT_LABELS  # what fits beside a mark on an axial slice, where the level is in the title
# Patient axes in DICOM LPS: +x is the patient's left, +y posterior, +z superior (head).
_AXIS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))

_FONT_PX = 15
_TITLE_H = 30
_EDGE = 24  # margin that holds the orientation letters
_FOOTER_H = 60
_MIN_W = 460  # so the legend and the disclaimer line fit
_RADIUS = 7
_SAG_MIN_MM = (130.0, 170.0)  # (width, height) of a sagittal crop at least
_SAG_PAD_MM = 40.0  # context kept around the points on sagittal slices
_AXIAL_FOV_MM = 110.0  # square crop around the points on an axial slice
_PROJECT_TOL_MM = 6.0  # a point from another series is drawn when it lies this close to the slice


@dataclass
class Mark:
    """One drawn point: where it is in the output image and what it stands for."""

    condition: str
    level: str
    grade: int | None  # class index, None when unknown
    text: str
    x: float  # output image column of the mark centre
    y: float  # output image row
    source: Point  # the point as predicted or labelled
    on_slice: bool  # False: the point lies on another slice (or series) and is projected here


@dataclass
class KeyImage:
    """A rendered key image (PNG bytes) and what is on it."""

    key: str  # sagittal_t2 | foramina_left | foramina_right | axial_<level>
    title: str
    series_id: str
    role: str
    slice_index: int
    instance_number: int
    png: bytes
    size: tuple[int, int]  # (width, height)
    marks: list[Mark] = field(default_factory=list)
    edges: dict[str, str] = field(default_factory=dict)  # edge (left/right/top/bottom) -> patient direction
    # Source pixel (x, y) lands at origin + ((x - crop[0] + 0.5) * scale[0] - 0.5, (y - crop[1] + 0.5) * scale[1] - 0.5)
    crop: tuple[int, int, int, int] = (0, 0, 0, 0)  # (c0, r0, c1, r1) of the slice, in source pixels
    scale: tuple[float, float] = (1.0, 1.0)  # output pixels per source column, per source row
    origin: tuple[int, int] = (0, 0)  # where the crop's top-left corner sits in the output image

    @property
    def conditions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(m.condition for m in self.marks))


def why_no_key_images(e: Exception) -> str:
    """The warning for a study whose key images could not be made: its study unreadable (our error), or the
    drawing failed (a bug, named by its class)."""
    return f"key images not available: {e if isinstance(e, SpinegradeError) else f'drawing them failed ({in_words(e)})'}"


def key_images(study, result: StudyResult, conditions: tuple[str, ...] | None = None,
               side: int = 480) -> list[KeyImage]:
    """Render the key images of a study for its predictions (or labels), in reading order.

    `study` is a loaded `Study` with pixels. `conditions` limits which marks are drawn (images left with no
    mark are dropped); `side` is the longer side of the image area in pixels.
    """
    wanted = set(vocab.CONDITIONS if conditions is None else (vocab.parse_condition(c) for c in conditions))
    pts = [p for p in result.points if p.condition in wanted]
    grades = {(f.condition, f.level): f for f in result.findings}
    out: list[KeyImage] = []

    canal = [p for p in pts if p.condition == vocab.CANAL and p.role == vocab.SAGITTAL_T2]
    if canal:
        out.append(_render_view(study, "sagittal_t2", "spinal canal", canal, grades, side, _sagittal_box))
    for sd in vocab.SIDES:
        cond = vocab.condition_at(vocab.FORAMINAL, sd)
        foramina = [p for p in pts if p.condition == cond and p.role == vocab.SAGITTAL_T1]
        if foramina:
            out.append(_render_view(study, f"foramina_{sd}", f"{sd} neural foramina", foramina, grades, side,
                                    _sagittal_box))
    for lv in vocab.LEVELS:
        img = _axial_view(study, result, lv, wanted, grades, side)
        if img is not None:
            out.append(img)
    return out


def save_key_images(images: list[KeyImage], folder: str | Path, prefix: str = "") -> list[Path]:
    """Write each image as `<prefix><key>.png` in `folder` (atomically); returns the paths."""
    folder = Path(folder)
    return [atomic_write_bytes(folder / f"{prefix}{img.key}.png", img.png) for img in images]


def grade_text(finding: Finding | None) -> tuple[int | None, str]:
    """(class index or None, words) for a finding: the grade, with its probability when it is a prediction."""
    if finding is None or (finding.source == "labels" and finding.label is None):
        return None, "no label"
    g = finding.grade
    if finding.source == "labels":
        return g, vocab.SEVERITIES[g]
    return g, f"{vocab.SEVERITIES[g]} {finding.probs[g]:.0%}"


def severity_rgb(grade: int | None) -> tuple[int, int, int]:
    return UNKNOWN_RGB if grade is None else SEVERITY_RGB[grade]


# --- choosing slices -----------------------------------------------------------------------------------

def _modal(points: list[Point], attr: str):
    """The most common value of an attribute among points (ties: the first seen)."""
    return Counter(getattr(p, attr) for p in points).most_common(1)[0][0]


def _patient_xyz(study, p: Point) -> np.ndarray | None:
    if p.patient is not None:
        return np.asarray(p.patient, dtype=np.float64)
    try:
        return study.get(p.series_id).geometry.pixel_to_patient(p.slice_index, p.x, p.y)
    except (KeyError, IndexError):
        return None


def _geometry_known(study, series_id: str) -> bool:
    """False for a series whose files had no position/orientation: its geometry is a placeholder."""
    try:
        return bool(getattr(study.get(series_id), "geometry_known", True))
    except KeyError:
        return False


def _place_on_slice(study, series, k: int, p: Point) -> tuple[float, float, bool] | None:
    """(x, y, on_slice) of a point on slice k of a series, projecting it through patient space if needed."""
    same_series = p.series_id == series.series_id
    if same_series and p.slice_index == k:
        return p.x, p.y, True
    if not (_geometry_known(study, series.series_id) and _geometry_known(study, p.series_id)):
        return (p.x, p.y, False) if same_series else None  # without geometry only the in-plane spot is known
    xyz = _patient_xyz(study, p)
    if xyz is None:
        return None
    _, x, y, dist = series.geometry.patient_to_pixel(xyz, slice_index=k)
    if not same_series and dist > max(_PROJECT_TOL_MM, series.geometry.slice_spacing):
        return None
    return x, y, False


def _render_view(study, key: str, what: str, points: list[Point], grades: dict, side: int, box_fn) -> KeyImage:
    series = study.get(_modal(points, "series_id"))
    on_series = [p for p in points if p.series_id == series.series_id]
    k = _modal(on_series, "slice_index")
    placed = []
    for p in sorted(points, key=lambda p: vocab.LEVELS.index(p.level)):
        pos = _place_on_slice(study, series, k, p)
        if pos is not None:
            text = vocab.LEVEL_NAMES[p.level]
            placed.append((p, *pos, text))
    title = f"{vocab.ROLE_DESCRIPTIONS.get(series.role, series.role)}, {what}"
    return _draw(series, k, key, title, placed, grades, side, box_fn)


def _axial_view(study, result: StudyResult, level: str, wanted: set[str], grades: dict,
                side: int) -> KeyImage | None:
    at_level = [p for p in result.points if p.level == level and p.condition in wanted]
    axial = [p for p in at_level if p.role == vocab.AXIAL_T2]
    others = [p for p in at_level if p.role != vocab.AXIAL_T2 and p.condition == vocab.CANAL]
    if axial:
        series = study.get(_modal(axial, "series_id"))
        k = _modal([p for p in axial if p.series_id == series.series_id], "slice_index")
    else:
        found = _nearest_axial(study, others)
        if found is None:
            return None
        series, k = found
    placed = []
    has_axial_canal = any(p.condition == vocab.CANAL for p in axial)
    for p in axial + ([] if has_axial_canal else others):
        pos = _place_on_slice(study, series, k, p)
        if pos is not None:
            placed.append((p, *pos, _SHORT_NAMES[p.condition]))
    if not placed:
        return None
    title = f"{vocab.ROLE_DESCRIPTIONS[vocab.AXIAL_T2]}, {vocab.LEVEL_NAMES[level]}"
    return _draw(series, k, f"axial_{level}", title, placed, grades, side, _axial_box)


def _nearest_axial(study, points: list[Point]):
    """The axial series and slice nearest a point from another view, when one lies within tolerance."""
    best = None
    for p in points:
        xyz = _patient_xyz(study, p)
        if xyz is None:
            continue
        for s in study.by_role(vocab.AXIAL_T2):
            if not (_geometry_known(study, s.series_id) and _geometry_known(study, p.series_id)):
                continue
            k, dist = s.geometry.nearest_slice(xyz)
            if dist <= max(_PROJECT_TOL_MM, s.geometry.slice_spacing) and (best is None or dist < best[0]):
                best = (dist, s, k)
    return None if best is None else best[1:]


# --- crops ---------------------------------------------------------------------------------------------

def _box_around(cx: float, cy: float, w_px: float, h_px: float, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """Integer box (c0, r0, c1, r1) of about w x h pixels centred near (cx, cy), shifted to fit the image."""
    rows, cols = shape
    # at least a pixel: a field of view in mm under one pixel (a header with 1 m pixels) would be an empty crop
    w, h = min(cols, max(1, int(round(w_px)))), min(rows, max(1, int(round(h_px))))
    c0 = int(round(min(max(cx - w / 2, 0), cols - w)))
    r0 = int(round(min(max(cy - h / 2, 0), rows - h)))
    return c0, r0, c0 + w, r0 + h


def _sagittal_box(xy: np.ndarray, spacing: tuple[float, float], shape: tuple[int, int]):
    rs, cs = spacing
    span_w = (np.ptp(xy[:, 0]) * cs + 2 * _SAG_PAD_MM)
    span_h = (np.ptp(xy[:, 1]) * rs + 2 * _SAG_PAD_MM)
    w_mm, h_mm = max(span_w, _SAG_MIN_MM[0]), max(span_h, _SAG_MIN_MM[1])
    cx, cy = (xy[:, 0].min() + xy[:, 0].max()) / 2, (xy[:, 1].min() + xy[:, 1].max()) / 2
    return _box_around(cx, cy, w_mm / cs, h_mm / rs, shape)


def _axial_box(xy: np.ndarray, spacing: tuple[float, float], shape: tuple[int, int]):
    rs, cs = spacing
    cx, cy = xy[:, 0].mean(), xy[:, 1].mean()
    return _box_around(cx, cy, _AXIAL_FOV_MM / cs, _AXIAL_FOV_MM / rs, shape)


# --- drawing -------------------------------------------------------------------------------------------

def _font(size: int = _FONT_PX) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _direction_letters(v: np.ndarray) -> str:
    """Patient direction of a vector in LPS as letters, strongest first ('L', 'P', 'LA' when oblique)."""
    order = np.argsort(-np.abs(v))
    letters = [_AXIS_LETTERS[i][int(v[i] > 0)] for i in order if abs(v[i]) > 0.4]
    return "".join(letters) or _AXIS_LETTERS[order[0]][int(v[order[0]] > 0)]


def edge_directions(orientation) -> dict[str, str]:
    """Patient direction at each image edge from ImageOrientationPatient (row_dir points to the right edge)."""
    o = np.asarray(orientation, dtype=np.float64).reshape(6)
    row_dir, col_dir = o[:3], o[3:]
    return {"right": _direction_letters(row_dir), "left": _direction_letters(-row_dir),
            "bottom": _direction_letters(col_dir), "top": _direction_letters(-col_dir)}


def _window(img: np.ndarray) -> np.ndarray:
    """uint8 display of a slice: 0.5-99.5 percentile window (robust to a few very bright pixels)."""
    lo, hi = np.percentile(img, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return (np.clip((img - lo) / (hi - lo), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _draw(series, k: int, key: str, title: str, placed: list, grades: dict, side: int, box_fn) -> KeyImage:
    geo = series.geometry
    rs, cs = geo.pixel_spacing
    xy = np.array([[x, y] for _, x, y, _, _ in placed], dtype=np.float64)
    c0, r0, c1, r1 = box_fn(xy, geo.pixel_spacing, geo.shape)
    w_mm, h_mm = (c1 - c0) * cs, (r1 - r0) * rs
    px_per_mm = side / max(w_mm, h_mm)
    out_w, out_h = max(1, int(round(w_mm * px_per_mm))), max(1, int(round(h_mm * px_per_mm)))
    sx, sy = out_w / (c1 - c0), out_h / (r1 - r0)

    gray = Image.fromarray(_window(series.pixels[k])).crop((c0, r0, c1, r1))
    gray = gray.resize((out_w, out_h), Image.Resampling.BICUBIC)
    width = max(out_w + 2 * _EDGE, _MIN_W)
    height = _TITLE_H + out_h + 2 * _EDGE + _FOOTER_H
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    ox, oy = (width - out_w) // 2, _TITLE_H + _EDGE  # where the slice's crop starts on the canvas
    canvas.paste(gray.convert("RGB"), (ox, oy))
    d = ImageDraw.Draw(canvas)
    font = _font()

    inst = int(series.instance_numbers[k])
    d.text((8, 7), f"{title}  (image {inst}, slice {k + 1}/{series.n_slices})", fill=(255, 255, 255), font=font)
    edges = edge_directions(geo.orientation)
    letter_boxes = _draw_edges(d, edges, ox, oy, out_w, out_h, _font(18))

    marks: list[Mark] = []
    for p, x, y, on_slice, label in placed:
        # pixel centres are at integer coordinates; PIL maps source pixel i to [i*s, (i+1)*s)
        X = ox + (x - c0 + 0.5) * sx - 0.5
        Y = oy + (y - r0 + 0.5) * sy - 0.5
        g, words = grade_text(grades.get((p.condition, p.level)))
        if not on_slice:
            words += f" (image {p.instance_number})" if p.series_id == series.series_id else " (projected)"
        marks.append(Mark(p.condition, p.level, g, f"{label} {words}", X, Y, p, on_slice))
    for m in marks:
        _draw_ring(d, m)
    _place_labels(d, marks, font, (ox, oy, ox + out_w, oy + out_h), letter_boxes)
    for m in marks:  # last, so that no ring, leader line or label of a neighbour hides the exact spot
        if m.on_slice:
            d.ellipse((m.x - 1.5, m.y - 1.5, m.x + 1.5, m.y + 1.5), fill=severity_rgb(m.grade))
    _draw_footer(d, width, height, _font(12))

    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=False)
    return KeyImage(key=key, title=title, series_id=series.series_id, role=series.role, slice_index=k,
                    instance_number=inst, png=buf.getvalue(), size=(width, height), marks=marks, edges=edges,
                    crop=(c0, r0, c1, r1), scale=(sx, sy), origin=(ox, oy))


def _draw_edges(d: ImageDraw.ImageDraw, edges: dict[str, str], ox: int, oy: int, w: int, h: int,
                font) -> list[tuple[float, float, float, float]]:
    """Write the patient direction at the middle of each edge; returns the boxes (labels must not cover them)."""
    at = {"top": (ox + w / 2, oy - _EDGE / 2), "bottom": (ox + w / 2, oy + h + _EDGE / 2),
          "left": (ox - _EDGE / 2, oy + h / 2), "right": (ox + w + _EDGE / 2, oy + h / 2)}
    boxes = []
    for edge, xy in at.items():
        d.text(xy, edges[edge], fill=(120, 220, 255), font=font, anchor="mm")
        x0, y0, x1, y1 = d.textbbox(xy, edges[edge], font=font, anchor="mm")
        boxes.append((x0 - 3, y0 - 3, x1 + 3, y1 + 3))
    return boxes


def _draw_ring(d: ImageDraw.ImageDraw, m: Mark) -> None:
    """A ring, so the anatomy under the point stays visible; on-slice points get a centre dot later."""
    r = _RADIUS
    d.ellipse((m.x - r - 1, m.y - r - 1, m.x + r + 1, m.y + r + 1), outline=(0, 0, 0), width=4)
    d.ellipse((m.x - r, m.y - r, m.x + r, m.y + r), outline=severity_rgb(m.grade), width=2)


def _place_labels(d: ImageDraw.ImageDraw, marks: list[Mark], font, area: tuple[int, int, int, int],
                  keep_clear: list[tuple[float, float, float, float]]) -> None:
    """Put each mark's text beside it, on the side away from the other marks, without overlaps.

    Candidates go outward in steps; a thin leader line joins a label that had to move away to its mark.
    """
    if not marks:
        return
    cx = float(np.mean([m.x for m in marks]))
    taken = [(m.x - _RADIUS - 2, m.y - _RADIUS - 2, m.x + _RADIUS + 2, m.y + _RADIUS + 2) for m in marks]
    taken += keep_clear
    W = d.im.size[0]
    gap = _RADIUS + 5
    for m in marks:
        tx0, ty0, tx1, ty1 = d.textbbox((0, 0), m.text, font=font)
        w, h = tx1 - tx0 + 6, ty1 - ty0 + 4
        dys = [-h / 2] + [s * k * (h + 3) - h / 2 for k in (1, 2, 3) for s in (-1, 1)]
        right = [(m.x + gap + dx, m.y + dy) for dx in (0, 25) for dy in dys]
        left = [(m.x - gap - w - dx, m.y + dy) for dx in (0, 25) for dy in dys]
        order = right + left if m.x >= cx else left + right
        x0, y0 = order[0]
        for bx, by in order:
            box = (bx, by, bx + w, by + h)
            inside = 0 <= box[0] and box[2] <= W and area[1] - _EDGE <= box[1] and box[3] <= area[3] + _EDGE
            if inside and not any(_overlap(box, o) for o in taken):
                x0, y0 = bx, by
                break
        taken.append((x0, y0, x0 + w, y0 + h))
        rgb = severity_rgb(m.grade)
        near_x = x0 if x0 > m.x else x0 + w
        if abs(near_x - m.x) > gap + 1 or abs(y0 + h / 2 - m.y) > 1:  # moved away: show whose label it is
            ex, ey = near_x, min(max(m.y, y0), y0 + h)
            u = np.array([ex - m.x, ey - m.y]) / max(1e-6, float(np.hypot(ex - m.x, ey - m.y)))
            d.line((m.x + u[0] * (_RADIUS + 1), m.y + u[1] * (_RADIUS + 1), ex, ey), fill=rgb, width=1)
        d.rectangle((x0, y0, x0 + w, y0 + h), fill=(0, 0, 0))
        d.text((x0 + 3 - tx0, y0 + 2 - ty0), m.text, fill=rgb, font=font)


def _overlap(a, b) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _draw_footer(d: ImageDraw.ImageDraw, width: int, height: int, font) -> None:
    y = height - _FOOTER_H + 6
    x = 8
    for g, name in enumerate(vocab.SEVERITIES):
        d.ellipse((x, y + 2, x + 10, y + 12), fill=SEVERITY_RGB[g])
        d.text((x + 14, y), name, fill=(255, 255, 255), font=font)
        x += 24 + int(d.textlength(name, font=font))
    d.text((8, y + 17), "ring without centre dot: a point from another slice, projected onto this one",
           fill=(200, 200, 200), font=font)
    d.text((8, y + 34), DISCLAIMER, fill=(200, 200, 200), font=font)
