"""A grader that also reads the series' neighbouring slice (`GraderSpec.neighbour_slices`): which slice is the
neighbour, that the channel is that slice's crop, and that the model hands it over where the grader reads it."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from spinegrade.errors import DataError
from spinegrade.slicemodel.data import Frame, PointSlices, read_gray
from spinegrade.slicemodel.foramina import read_point_slices
from spinegrade.slicemodel.grader import GraderSpec, crop_batch
from spinegrade.slicemodel.model import SliceModel
from spinegrade.slicemodel.pipeline import SliceConfig, _check_grader, predict_rows, train_grader_into
from spinegrade.train.config import LoopConfig


def _set(rows) -> PointSlices:
    sl = pd.DataFrame(rows, columns=["path", "study_id", "series_id", "instance_number", "rows", "cols"])
    pts = sl[["path", "study_id"]].assign(condition="left_neural_foraminal_narrowing", level="l4_l5")
    return PointSlices(Path("."), sl.astype({"instance_number": str}), pts, False, False)


def test_the_neighbour_is_the_nearest_other_slice_of_the_same_series():
    ps = _set([("a3", "1", "A", 3, 64, 64), ("a4", "1", "A", 4, 64, 64), ("a6", "1", "A", 6, 64, 64),
               ("b5", "1", "B", 5, 64, 64), ("c4", "2", "A", 4, 64, 64), ("a9", "1", "A", "", 64, 64)])
    assert ps.neighbours("a3", 1) == ["a4"]
    assert ps.neighbours("a4", 2) == ["a3"]  # the nearest only: a6 is two away
    assert ps.neighbours("a6", 1) == [] and ps.neighbours("a6", 2) == ["a4"]
    assert ps.neighbours("b5", 3) == []  # another series of the study
    assert ps.neighbours("c4", 1) == []  # the same series id in another study
    assert ps.neighbours("a9", 5) == []  # no instance number
    assert ps.neighbours("a3", 0) == []
    both = _set([("x1", "1", "S", 1, 64, 64), ("x2", "1", "S", 2, 64, 64), ("x3", "1", "S", 3, 64, 64)])
    assert both.neighbours("x2", 1) == ["x1", "x3"]
    bare = PointSlices(Path("."), pd.DataFrame({"path": ["p"], "study_id": ["1"], "rows": [9], "cols": [9]}),
                       pd.DataFrame({"path": ["p"], "study_id": ["1"]}), False, False)
    assert bare.neighbours("p", 3) == []


def test_the_neighbour_channel_is_the_same_crop_on_the_other_slice():
    rng = np.random.default_rng(0)
    a, b = rng.random((80, 80)).astype(np.float32), rng.random((80, 80)).astype(np.float32)
    frame = Frame(80, 80, (80, 80), 32)
    one, two = GraderSpec(crop_px=32), GraderSpec(crop_px=32, neighbour_slices=1)
    assert two.in_channels == 2 and GraderSpec(crop_px=32, context_frac=0.3, neighbour_slices=2).in_channels == 3
    centres = [(40.0, 40.0), (30.0, 50.0)]
    own = crop_batch(a, frame, one, centres)
    with_b = crop_batch(a, frame, two, centres, neighbour01=b)
    np.testing.assert_allclose(with_b[:, :1], own)
    np.testing.assert_allclose(with_b[:, 1:], crop_batch(b, frame, one, centres))
    alone = crop_batch(a, frame, two, centres)  # no neighbour: the slice itself
    np.testing.assert_allclose(alone[:, 1:], own)
    for bad in (-1, 1.5):
        with pytest.raises(DataError, match="whole number of slices"):
            _check_grader(GraderSpec(neighbour_slices=bad), "")


def test_a_grader_reading_the_neighbouring_slice_is_trained_and_handed_it(run, folder, tmp_path):
    main = tmp_path / "main"
    shutil.copytree(run, main)
    cfg = SliceConfig.from_dict(json.loads((main / "config.json").read_text()))
    spec = dataclasses.replace(cfg.grader, neighbour_slices=1)
    dst = train_grader_into(main, "nb", grader=spec, loop=LoopConfig(epochs=2, batch_size=16, lr=3e-3, patience=0),
                            log=lambda *_: None)
    ck = torch.load(dst / "best.pt", map_location="cpu", weights_only=True)
    assert ck["model"]["in_channels"] == 2 and ck["spec"]["neighbour_slices"] == 1
    plain, both = SliceModel.load(run), SliceModel.load(main)
    assert plain.neighbour_slices == 0 and both.neighbour_slices == 1
    ps = read_point_slices(folder)
    path = ps.slices["path"].iloc[0]
    (near,) = ps.neighbours(path, 1)  # the generated set: two slices per study, instances 1 and 2
    img, other = read_gray(folder / path), read_gray(folder / near)
    f = ps.frame(path, 0, img.shape)
    asks = [("left_neural_foraminal_narrowing", "l3_l4", 30.0, 30.0)]
    # the neighbour reaches the grader that reads it, and only that one
    assert np.allclose(plain.grade(img, f.rows, f.cols, asks), plain.grade(img, f.rows, f.cols, asks, neighbours=[other]))
    assert not np.allclose(both.grade(img, f.rows, f.cols, asks), both.grade(img, f.rows, f.cols, asks,
                                                                                 neighbours=[other]), atol=1e-6)
    # the slice-set path finds each slice's neighbour in the set: the same grades as given by hand
    one = ps.subset_studies([ps.slices["study_id"].iloc[0]]).labelled()
    rows = predict_rows(both, one, true_points=True)
    mine = one.points["path"] == path
    want = both.grade(img, f.rows, f.cols, [(r.condition, r.level, float(r.x), float(r.y))
                                            for r in one.points[mine].itertuples()], neighbours=[other])
    assert mine.sum() > 0
    np.testing.assert_allclose(rows.loc[mine.to_numpy(), ["normal_mild", "moderate", "severe"]].to_numpy(), want,
                               atol=1e-5)
