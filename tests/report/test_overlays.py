"""Key images: marks drawn where the coordinates say, colours by grade, patient directions, aspect ratio."""

from __future__ import annotations

import io
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from spinegrade import vocab
from spinegrade.geometry import SeriesGeometry
from spinegrade.report.overlays import SEVERITY_RGB, edge_directions, key_images, save_key_images

_VIEW_OF = {  # which key image shows a labelled point of each condition, on its own slice
    "spinal_canal_stenosis": lambda lv: "sagittal_t2",
    "left_neural_foraminal_narrowing": lambda lv: "foramina_left",
    "right_neural_foraminal_narrowing": lambda lv: "foramina_right",
    "left_subarticular_stenosis": lambda lv: f"axial_{lv}",
    "right_subarticular_stenosis": lambda lv: f"axial_{lv}",
}


def _expected_xy(img, x, y):
    """Where source pixel (x, y) must land, from the image's crop and scale (pixel centres at integers)."""
    c0, r0, _, _ = img.crop
    sx, sy = img.scale
    ox, oy = img.origin
    return ox + (x - c0 + 0.5) * sx - 0.5, oy + (y - r0 + 0.5) * sy - 0.5


def _colour_near(png: bytes, x: float, y: float) -> set[tuple[int, int, int]]:
    arr = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    xi, yi = int(round(x)), int(round(y))
    return {tuple(int(v) for v in arr[yi + dy, xi + dx]) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}


@pytest.mark.realdata
def test_real_labelled_points_are_drawn_at_their_coordinates(real_results, tmp_path):
    """Every labelled point on its view's slice is a mark at the coordinate's spot, in its grade's colour."""
    artifacts = os.environ.get("SPINEGRADE_ARTIFACTS")
    for study, result, rows in real_results:
        images = {img.key: img for img in key_images(study, result)}
        save_key_images(list(images.values()), tmp_path / result.study_id)
        if artifacts:
            shutil.copytree(tmp_path / result.study_id, os.path.join(artifacts, "overlays", result.study_id),
                            dirs_exist_ok=True)
        assert len(rows) == 25 and len(result.points) == 25  # every row found its instance (split axial stacks)
        checked = 0
        for r in rows.itertuples():
            img = images[_VIEW_OF[r.condition](r.level)]
            marks = [m for m in img.marks if m.condition == r.condition and m.level == r.level]
            assert len(marks) == 1, (r.condition, r.level, img.key)
            m = marks[0]
            if not m.on_slice:  # drawn on a neighbouring slice of the same stack: projected, checked below
                assert m.source.instance_number == r.instance_number and m.source.instance_number != img.instance_number
                continue
            assert img.instance_number == r.instance_number
            ex, ey = _expected_xy(img, r.x, r.y)
            assert (m.x, m.y) == pytest.approx((ex, ey), abs=1e-6)
            label = result.finding(r.condition, r.level).label
            assert m.grade == label and vocab.SEVERITIES[label] in m.text
            assert SEVERITY_RGB[label] in _colour_near(img.png, m.x, m.y)
            checked += 1
        assert checked >= 17  # most points lie on the slice their view shows


@pytest.mark.realdata
def test_real_images_are_oriented_by_the_geometry(real_results):
    """Levels run head to foot on the sagittal slice; the left subarticular point is on the side marked L."""
    for study, result, _ in real_results:
        images = {img.key: img for img in key_images(study, result)}
        sag = images["sagittal_t2"]
        assert sag.edges["top"] == "S" and sag.edges["bottom"] == "I"
        ys = [m.y for m in sorted(sag.marks, key=lambda m: vocab.LEVELS.index(m.level))]
        assert ys == sorted(ys)
        for lv in vocab.LEVELS:
            ax = images[f"axial_{lv}"]
            left = next(m for m in ax.marks if m.condition == "left_subarticular_stenosis")
            right = next(m for m in ax.marks if m.condition == "right_subarticular_stenosis")
            assert ax.edges["right"].startswith("L") and ax.edges["left"].startswith("R")
            assert left.x > right.x
            canal = next(m for m in ax.marks if m.condition == "spinal_canal_stenosis")
            assert not canal.on_slice and "projected" in canal.text  # the canal is labelled on the sagittal
            assert right.x < canal.x < left.x


def test_edge_directions_follow_the_orientation():
    axial = edge_directions([1, 0, 0, 0, 1, 0])
    assert axial == {"right": "L", "left": "R", "bottom": "P", "top": "A"}
    mirrored = edge_directions([-1, 0, 0, 0, 1, 0])
    assert mirrored["right"] == "R" and mirrored["left"] == "L"
    sagittal = edge_directions([0, 1, 0, 0, 0, -1])
    assert sagittal == {"right": "P", "left": "A", "bottom": "I", "top": "S"}
    tilted = edge_directions([1, 0, 0, 0, np.cos(0.6), -np.sin(0.6)])  # an axial block tilted along a disc
    assert tilted["bottom"] == "PI" and tilted["top"] == "AS"


def test_pixel_spacing_sets_the_aspect_ratio(synth_result):
    """Doubling the row spacing doubles how tall a source row is drawn, relative to a column."""
    study, result = synth_result
    sag = study.first(vocab.SAGITTAL_T2)
    base = next(i for i in key_images(study, result, ("spinal_canal_stenosis",)) if i.key == "sagittal_t2")
    assert base.scale[0] == pytest.approx(base.scale[1], rel=0.02)  # square pixels in this study
    g = sag.geometry
    rs, cs = g.pixel_spacing
    original = g
    try:
        sag.geometry = SeriesGeometry(g.orientation, g.positions, (2 * rs, cs), g.shape)
        stretched = next(i for i in key_images(study, result, ("spinal_canal_stenosis",)) if i.key == "sagittal_t2")
    finally:
        sag.geometry = original
    assert stretched.scale[1] / stretched.scale[0] == pytest.approx(2.0, rel=0.02)


@pytest.mark.parametrize("spacing", [1000.0, 1e-3])
def test_absurd_pixel_spacing_still_gives_every_key_image(synth_result, spacing):
    """1 m pixels make the axial field of view less than a pixel wide (found by scripts/fuzz_predict.py: a division
    by zero); 1 um pixels make every box the whole image."""
    study, result = synth_result
    original = [s.geometry for s in study.series]
    try:
        for s in study.series:
            g = s.geometry
            s.geometry = SeriesGeometry(g.orientation, g.positions, (spacing, spacing), g.shape)
        images = key_images(study, result)
    finally:
        for s, g in zip(study.series, original):
            s.geometry = g
    assert len(images) == 3 + 5  # the sagittal canal view, both foraminal views, an axial slice per level
    for img in images:
        c0, r0, c1, r1 = img.crop
        assert c1 > c0 and r1 > r0 and np.isfinite(img.scale).all()


def test_condition_filter_and_unknown_grades(synth_result):
    study, result = synth_result
    only = key_images(study, result, ("Left Subarticular Stenosis",))
    assert [i.key for i in only] == [f"axial_{lv}" for lv in vocab.LEVELS]
    assert all(i.conditions == ("left_subarticular_stenosis",) for i in only)
    unlabelled = replace(result, findings=[replace(f, label=None, probs=[1 / 3] * 3) for f in result.findings])
    img = key_images(study, unlabelled, ("spinal_canal_stenosis",))[0]
    assert all(m.grade is None and "no label" in m.text for m in img.marks)


def test_predictions_show_grade_and_probability(synth_result):
    study, result = synth_result
    probs = [0.1, 0.2, 0.7]
    predicted = replace(result, findings=[replace(f, source="model", label=None, probs=probs)
                                          for f in result.findings])
    img = key_images(study, predicted, ("spinal_canal_stenosis",))[0]
    assert len(img.marks) == 5
    assert all(m.grade == 2 and "Severe 70%" in m.text for m in img.marks)
    for m in img.marks:  # the centre dot on points of this slice, the ring on all
        assert SEVERITY_RGB[2] in _colour_near(img.png, m.x - 7, m.y)
        assert (SEVERITY_RGB[2] in _colour_near(img.png, m.x, m.y)) == m.on_slice
