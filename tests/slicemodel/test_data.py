"""Point-labelled slice folders: validation, the letterbox frame, crops that land on the point."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from spinegrade.errors import DataError
from spinegrade.slicemodel.data import Frame, study_folds
from spinegrade.slicemodel.foramina import read_point_slices, write_synthetic_point_slices
from spinegrade.slicemodel.grader import GraderSpec, crop_batch
from spinegrade.slicemodel.warp import crop_affine, letterbox_affine, warp


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_synthetic_point_slices(tmp_path_factory.mktemp("fs") / "set", n_studies=10)


def _drop(*cols):
    def edit(df):
        for c in cols:
            del df[c]
    return edit


def _rewrite(src, dst, name, edit):
    import shutil

    shutil.copytree(src, dst)
    df = pd.read_csv(dst / name, dtype=str, keep_default_na=False)
    edit(df)
    df.to_csv(dst / name, index=False)
    return dst


def test_reads_the_layout_with_truth(folder):
    ps = read_point_slices(folder)
    assert ps.has_truth and ps.has_points
    assert len(ps.slices) == 20 and ps.points["study_id"].nunique() == 10
    assert set(ps.points["condition"]) == {"left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing"}
    assert set(ps.labels) <= {0, 1, 2}


def test_truth_columns_are_optional(folder, tmp_path):
    blind = _rewrite(folder, tmp_path / "b", "points.csv", _drop("severity", "x", "y"))
    ps = read_point_slices(blind)
    assert not ps.has_truth and not ps.has_points and (ps.labels == -1).all()


@pytest.mark.parametrize("name,edit,message", [
    ("points.csv", lambda df: df.loc.__setitem__((2, "level"), "L9/L10"), r"points.csv: line 4: level"),
    ("points.csv", lambda df: df.loc.__setitem__((0, "condition"), "spinal_canal_stenosis"),
     r"line 2: condition .*not a neural foraminal"),
    ("points.csv", lambda df: df.loc.__setitem__((1, "path"), "images/none.jpg"), r"line 3: path .* not in slices.csv"),
    ("points.csv", lambda df: df.loc.__setitem__((1, "x"), "-4"), r"line 3: x '-4'"),
    ("slices.csv", lambda df: df.loc.__setitem__((3, "rows"), "0"), r"slices.csv: line 5: rows"),
    ("slices.csv", _drop("cols"), r"slices.csv: lacks column\(s\) cols"),
    ("points.csv", lambda df: df.loc.__setitem__((0, "study_id"), "77"), r"line 2: study_id 77 differs"),
])
def test_bad_rows_are_named(folder, tmp_path, name, edit, message):
    bad = _rewrite(folder, tmp_path / "bad", name, edit)
    with pytest.raises(DataError, match=message):
        read_point_slices(bad)


def test_missing_image_is_named(folder, tmp_path):
    bad = _rewrite(folder, tmp_path / "bad", "slices.csv", lambda df: None)
    first = pd.read_csv(bad / "slices.csv")["path"][0]
    (bad / first).unlink()
    with pytest.raises(DataError, match="1 image file"):
        read_point_slices(bad)


def test_folds_keep_each_study_in_one_fold(folder):
    ps = read_point_slices(folder)
    folds = study_folds(ps, 5, seed=1)
    assert set(folds.index) == set(ps.points["study_id"]) and sorted(set(folds)) == [0, 1, 2, 3, 4]
    assert folds.equals(study_folds(ps, 5, seed=1))


def test_frame_undoes_the_stretch():
    # A 640 cols x 760 rows slice stored as 250 x 250: a point in the middle column, 3/4 of the way down.
    f = Frame(rows=760, cols=640, stored=(250, 250), size=100)
    u, v = f.stored_to_original(125.0, 187.5)
    assert (float(u), float(v)) == (320.0, 570.0)
    bx, by = f.original_to_box(u, v)
    # The longer side (rows) fills the box; columns are centred: 640 * 100 / 760 wide.
    assert by == pytest.approx(570 * 100 / 760) and bx == pytest.approx(50.0)
    back = f.original_to_stored(*f.box_to_original(bx, by))
    assert np.allclose(back, (125.0, 187.5))
    assert f.error_px250(760, 0) == pytest.approx(250.0)


def _stored_with_dot(rows, cols, u, v, stored=250):
    """A stored (stretched) image with a bright 3x3 dot at original pixel (u, v)."""
    img = np.zeros((stored, stored), dtype=np.float32)
    x, y = int(u * stored / cols), int(v * stored / rows)
    img[y - 1:y + 2, x - 1:x + 2] = 1.0
    return img, (x + 0.5, y + 0.5)


def test_letterbox_and_crop_land_on_the_point():
    rows, cols = 760, 640
    img, (xs, ys) = _stored_with_dot(rows, cols, 200, 500)
    f = Frame(rows, cols, img.shape, 128)
    box = warp(torch.from_numpy(img), [letterbox_affine(f)], 128)[0, 0].numpy()
    by, bx = np.unravel_index(np.argmax(box), box.shape)
    ex, ey = f.original_to_box(*f.stored_to_original(xs, ys))
    assert abs(bx + 0.5 - ex) <= 1.0 and abs(by + 0.5 - ey) <= 1.0
    assert box[:, :5].max() == 0  # the columns' padding stays empty
    spec = GraderSpec(crop_px=32, crop_frac=0.1)
    u, v = f.stored_to_original(xs, ys)
    crop = crop_batch(img, f, spec, [(float(u), float(v))])[0, 0]
    cy, cx = np.unravel_index(np.argmax(crop), crop.shape)
    assert abs(cx - 15.5) <= 1.5 and abs(cy - 15.5) <= 1.5
    # A crop 90 degrees rotated about the point still has the dot in its centre.
    a, t = crop_affine(f, (float(u), float(v)), spec.crop_side(f), 32, angle_deg=90)
    rot = warp(torch.from_numpy(img), [(a, t)], 32)[0, 0].numpy()
    ry, rx = np.unravel_index(np.argmax(rot), rot.shape)
    assert abs(rx - 15.5) <= 1.5 and abs(ry - 15.5) <= 1.5
