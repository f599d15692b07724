"""The slice index and dataset: parsing, images, condition vectors, pluggable sources, study folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from spinegrade import vocab
from spinegrade.data.slices import (COND_DIM, COND_LAYOUT, SliceDataset, condition_vector, png_source, read_index,
                                    study_folds, write_synthetic_index)
from spinegrade.errors import DataError


def _write_index(folder, rows, images=True):
    for r in rows:
        if images:
            p = folder / r["path"]
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)).save(p)
    pd.DataFrame(rows).to_csv(folder / "index.csv", index=False)
    return folder / "index.csv"


ROWS = [
    {"path": "a b/x 1.png", "study_id": "7", "series_id": "99", "condition": "Left Neural Foraminal Narrowing",
     "level": "L4/L5", "severity": "Moderate"},
    {"path": "a b/x 2.png", "study_id": "7", "series_id": "99", "condition": "right_subarticular_stenosis",
     "level": "l1_l2", "severity": ""},
    {"path": "c/y.png", "study_id": "8", "series_id": "98", "condition": "spinal_canal_stenosis",
     "level": "l5_s1", "severity": "Normal/Mild"},
]


def test_read_index_parses_and_keeps_columns_as_written(tmp_path):
    idx = read_index(_write_index(tmp_path, ROWS))
    assert list(idx.table["path"]) == [r["path"] for r in ROWS]
    assert list(idx.table["series_id"]) == ["99", "99", "98"]  # extra columns kept
    assert list(idx.condition) == ["left_neural_foraminal_narrowing", "right_subarticular_stenosis",
                                   "spinal_canal_stenosis"]
    assert list(idx.level) == ["l4_l5", "l1_l2", "l5_s1"]
    assert list(idx.label) == [1, -1, 0]
    assert list(idx.view) == [vocab.SAGITTAL_T1, vocab.AXIAL_T2, vocab.SAGITTAL_T2]
    sub = idx.subset(idx.label >= 0)
    assert list(sub.study_id) == ["7", "8"] and list(sub.label) == [1, 0]


def test_view_column_overrides_the_default(tmp_path):
    rows = [dict(r, view="Axial T2") for r in ROWS]
    assert set(read_index(_write_index(tmp_path, rows)).view) == {vocab.AXIAL_T2}


@pytest.mark.parametrize("change, message", [
    (lambda rows: [{k: v for k, v in r.items() if k != "level"} for r in rows], "lacks column"),
    (lambda rows: [dict(r, severity="Terrible") if i == 2 else r for i, r in enumerate(rows)], "line 4: severity"),
    (lambda rows: [dict(r, level="L6/L7") for r in rows], "line 2: level"),
])
def test_read_index_errors_name_the_problem(tmp_path, change, message):
    with pytest.raises(DataError, match=message):
        read_index(_write_index(tmp_path, change(ROWS)))


def test_missing_image_is_named(tmp_path):
    csv = _write_index(tmp_path, ROWS)
    (tmp_path / "c" / "y.png").unlink()
    with pytest.raises(DataError, match="1 image file"):
        read_index(csv)


def test_condition_vector_layout():
    v = condition_vector("left_neural_foraminal_narrowing", "l4_l5")
    on = {COND_LAYOUT[i] for i in np.flatnonzero(v)}
    assert on == {"level=l4_l5", "side=left", "family=foraminal"}
    central = condition_vector("spinal_canal_stenosis", "l1_l2")
    assert {COND_LAYOUT[i] for i in np.flatnonzero(central)} == {"level=l1_l2", "family=spinal"}
    assert v.shape == (COND_DIM,)


def test_dataset_item_resized_normalised_labelled(tmp_path):
    idx = read_index(_write_index(tmp_path, ROWS))
    ds = SliceDataset(idx, png_source(idx.root), image_size=16)
    item = ds[0]
    assert item["image"].shape == (1, 16, 16) and item["image"].dtype == torch.float32
    assert abs(float(item["image"].mean())) < 1e-5 and abs(float(item["image"].std()) - 1) < 1e-3
    assert item["label"].item() == 1 and ds[1]["label"].item() == -1
    assert torch.equal(item["cond"], torch.from_numpy(condition_vector("left_neural_foraminal_narrowing", "l4_l5")))
    # the gradient of the PNG (values rise along rows and columns) survives the resize
    assert item["image"][0, -1, -1] > item["image"][0, 0, 0]


def test_any_source_plugs_in_including_25d(tmp_path):
    idx = read_index(_write_index(tmp_path, ROWS, images=False), check_files=False)
    seen = []

    def stack_source(row):
        seen.append(row["path"])
        return np.stack([np.full((10, 12), float(k)) + np.eye(10, 12) for k in range(3)])

    ds = SliceDataset(idx, stack_source, image_size=8)
    assert ds[2]["image"].shape == (3, 8, 8)
    assert seen == ["c/y.png"]


def test_study_folds_put_each_study_in_one_fold(tmp_path):
    idx = read_index(write_synthetic_index(tmp_path, n_studies=12, rows_per_study=5))
    folds = study_folds(idx, 4, seed=3)
    assert set(folds.index) == set(idx.study_id) and set(folds) == {0, 1, 2, 3}
    assert folds.equals(study_folds(idx, 4, seed=3))
    with pytest.raises(DataError, match="13 folds"):
        study_folds(idx, 13)


@pytest.mark.realdata
def test_real_foramina_points_read_as_a_slice_index_and_split_by_study(foramina_set):
    # points.csv carries the slice-index columns (path, study_id, condition, level, severity) plus extras.
    idx = read_index(foramina_set / "points.csv")
    assert len(idx) == 13618 and len(set(idx.study_id)) == 1364
    assert np.bincount(idx.label).tolist() == [10674, 2397, 547]
    assert png_source(idx.root)(idx.table.iloc[0]).shape == (250, 250)
    folds = study_folds(idx, 5, seed=0)
    per_fold = folds.reindex(idx.study_id).to_numpy()
    for k in range(5):
        severe = (idx.label[per_fold == k] == 2).mean()
        assert 0.02 < severe < 0.07  # 4.0 % overall: stratification spreads the severe rows
