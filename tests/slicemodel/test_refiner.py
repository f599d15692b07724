"""The foramen localiser's second look (refiner) and its test-time views: geometry, training, inference, export."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from spinegrade import vocab
from spinegrade.localize.heatmap import decode_heatmaps, gaussian_heatmaps
from spinegrade.runtime import runtime, sigmoid
from spinegrade.slicemodel.bundled import REFINER, pack_run
from spinegrade.slicemodel.data import Frame
from spinegrade.slicemodel.foramina import read_point_slices
from spinegrade.slicemodel.localizer import OUT_STRIDE, heatmap_to_box
from spinegrade.slicemodel.model import SliceModel, _zoomed
from spinegrade.slicemodel.pipeline import SliceConfig, predict_rows, slice_config, train_slices
from spinegrade.slicemodel.refiner import RefinerDataset, RefinerSpec, refine_points
from spinegrade.train.config import LoopConfig

from .conftest import SMALL


def _images(ps):
    return {p: np.asarray(Image.open(ps.root / p).convert("L")) for p in ps.slices["path"]}


def test_window_targets_sit_on_the_true_points(folder):
    ps = read_point_slices(folder)
    spec = RefinerSpec(input_size=32, crop_frac=0.3)
    ds = RefinerDataset(ps, _images(ps), spec, augment=False)
    for i in range(6):
        item, row = ds[i], ps.points.iloc[i]
        lv = vocab.LEVELS.index(row["level"])
        assert item["mask"][lv] == 1 and np.isfinite(item["points"][lv].numpy()).all()
        dec = decode_heatmaps(item["target"].numpy())
        # the blob of the window's own point is where the window's affine puts the true point
        assert np.allclose(heatmap_to_box(dec[lv, :2]), item["points"][lv].numpy(), atol=0.2)
        on_slice = ps.points[ps.points["path"] == row["path"]]
        labelled = {vocab.LEVELS.index(v) for v in on_slice["level"]}
        assert set(np.flatnonzero(item["mask"].numpy())) == labelled  # unlabelled levels give no loss
        for c in labelled:  # a labelled level outside the window: masked in, nothing to find, not scored
            if not np.isfinite(item["points"][c].numpy()).all():
                assert float(item["target"][c].max()) == 0
        # validation windows are displaced (from a fixed draw), never centred on the truth
        centre = np.full(2, spec.input_size / 2)
        assert np.linalg.norm(item["points"][lv].numpy() - centre) > 0.01
    ds.set_epoch(3)  # validation windows do not change with the epoch
    assert np.array_equal(ds[0]["image"].numpy(), RefinerDataset(ps, ds.images, spec, augment=False)[0]["image"].numpy())


def _peak_net(spec: RefinerSpec, n_channels: int = 5):
    """A stand-in refiner whose every channel peaks at the window's brightest pixel."""
    h = spec.heatmap_size

    def net(x):
        out = np.full((len(x), n_channels, h, h), -20.0, dtype=np.float32)
        for i, w in enumerate(x[:, 0]):
            py, px = np.unravel_index(int(np.argmax(w)), w.shape)
            blob = gaussian_heatmaps(np.array([[(px + 0.5) / OUT_STRIDE - 0.5, (py + 0.5) / OUT_STRIDE - 0.5, 1.0]]),
                                     h, 1.0)[0]
            out[i] = np.log(np.clip(blob, 1e-6, 1 - 1e-6) / (1 - np.clip(blob, 1e-6, 1 - 1e-6)))
        return out
    return net


def test_refined_points_move_to_the_landmark_and_far_peaks_are_not_taken():
    img = np.zeros((200, 200), dtype=np.float32)
    img[100:102, 120:122] = 1.0  # a small bright landmark at (121, 101) stored px
    spec = RefinerSpec(input_size=64, crop_frac=0.2, max_move=0.35)
    placed = np.array([[116.0, 98.0], [60.0, 60.0]])  # 6 px off; far away (the window holds no landmark)
    got = refine_points(_peak_net(spec, 2), spec, img, 400, 400, placed, sigmoid)
    assert np.hypot(*(got[0] - (121.0, 101.0))) < 1.0
    # the second window is blank: its arg-max is some pixel, but the point moves only within max_move
    limit = spec.max_move * spec.crop_frac * 400 * 200 / 400
    assert np.hypot(*(got[1] - placed[1])) <= limit + 1e-6
    tight = dataclasses.replace(spec, max_move=0.01)
    assert np.array_equal(refine_points(_peak_net(spec, 2), tight, img, 400, 400, placed, sigmoid)[0], placed[0])


def test_the_refined_point_leans_toward_where_the_window_heatmap_trails_off():
    """A refiner whose window heatmap peaks at one pixel with a weaker trail below it: read as its arg-max the
    point is the peak; read within `peak_radius` (5 px of a 250 px slice) it lies between peak and trail. A
    checkpoint written before the option reads it as 5 px."""
    spec = RefinerSpec(input_size=64, crop_frac=0.2, max_move=0.35)
    assert RefinerSpec.from_dict({k: v for k, v in spec.to_dict().items() if k != "peak_radius"}).peak_radius == 5.0
    h = spec.heatmap_size
    assert spec.peak_radius_cells == pytest.approx(5.0 * h / 50.0)  # the window spans 50 px of a 250 px slice

    def net(x):  # every window: the peak at the centre cell, a trail 3 cells (4.7 px of 250) below it
        c = h / 2 - 0.5
        hm = np.maximum(gaussian_heatmaps(np.array([[c, c, 0.9]]), h, 1.2),
                        gaussian_heatmaps(np.array([[c, c + 3, 0.6]]), h, 1.2))[0]
        p = np.clip(hm, 1e-6, 1 - 1e-6)
        return np.broadcast_to(np.log(p / (1 - p)), (len(x), 1, h, h)).astype(np.float32)

    img = np.random.default_rng(0).random((250, 250)).astype(np.float32)
    placed = np.array([[120.0, 100.0]])
    at_peak = refine_points(net, dataclasses.replace(spec, peak_radius=0.0), img, 250, 250, placed, sigmoid)[0]
    leaning = refine_points(net, spec, img, 250, 250, placed, sigmoid)[0]
    step = 50.0 / h  # stored px per heatmap cell
    assert np.allclose(at_peak, placed[0], atol=0.1)  # the window is centred on the placed point
    assert leaning[0] == pytest.approx(at_peak[0], abs=0.1)
    assert 0.5 * step < leaning[1] - at_peak[1] < 3 * step


def test_zoomed_views_map_back_to_the_same_point():
    frame = Frame(300, 400, (150, 200), 96)  # stretched stored image of a 300 x 400 matrix
    p_stored = np.array([130.0, 60.0])
    for z in (0.92, 1.0, 1.08):
        a, t = _zoomed(frame, z)
        q = np.linalg.solve(a, p_stored - t)  # where the point lies in the zoomed view
        c = (frame.size / 2) / OUT_STRIDE - 0.5
        h = q / OUT_STRIDE - 0.5  # ... in heatmap pixels, as the localiser's peak would be
        back = (h - c) / z + c  # what localize does with a view's peak
        a0, t0 = _zoomed(frame, 1.0)
        assert np.allclose(a0 @ heatmap_to_box(back) + t0, p_stored, atol=1e-9)


@pytest.fixture(scope="module")
def refined_run(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("rr") / "run"
    cfg = SliceConfig(slices=str(folder), folds=3, val_fold=0, device="cpu", inner_val=0.2,
                      **{**SMALL, "localizer": dataclasses.replace(SMALL["localizer"], tta_zooms=(1.0, 0.9, 1.1))},
                      refiner=RefinerSpec(input_size=32, crop_frac=0.25),
                      refiner_loop=LoopConfig(epochs=4, batch_size=16, lr=3e-3, patience=0))
    train_slices(cfg, out, log=lambda *_: None)
    return out


def test_a_run_with_a_refiner_trains_exports_and_packs_it(refined_run, folder, tmp_path):
    assert (refined_run / REFINER / "best.pt").is_file() and (refined_run / REFINER / "best.onnx").is_file()
    records = [json.loads(x) for x in (refined_run / REFINER / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(np.isfinite(r["val_err_mean_px"]) for r in records)
    model = SliceModel.load(refined_run, "cpu")
    assert model.members[0].rspec.input_size == 32 and model.members[0].lspec.tta_zooms == (1.0, 0.9, 1.1)
    ps = read_point_slices(folder)
    sub = ps.subset_studies(sorted(set(ps.points["study_id"]))[:3])
    with_look = predict_rows(model, sub)
    model.members[0].refiner = None
    without = predict_rows(model, sub)
    assert not np.allclose(with_look[["x_pred", "y_pred"]], without[["x_pred", "y_pred"]])
    # packed ONNX-only, the refiner goes with it and grades the same on ONNX Runtime
    pack_run(refined_run, tmp_path / "packed", onnx_only=True)
    assert (tmp_path / "packed" / REFINER / "best.onnx").is_file()
    packed = predict_rows(SliceModel.load(tmp_path / "packed", runtime("cpu", "onnx")), sub)
    assert np.abs(packed[["x_pred", "y_pred"]].to_numpy() - with_look[["x_pred", "y_pred"]].to_numpy()).max() < 0.05
    cols = list(vocab.SEVERITY_KEYS)
    assert np.abs(packed[cols].to_numpy() - with_look[cols].to_numpy()).max() < 2e-3


def test_recipe_and_old_runs(folder, canal_folder):
    cfg = slice_config(folder, device="cpu")  # the foramen recipe: a second look, three localiser views
    assert cfg.refiner == RefinerSpec() and cfg.localizer.tta_zooms == (1.0, 0.92, 1.08)
    assert cfg.localizer.second_peak_power == 4.0
    assert cfg.localizer_loop.epochs == 12  # v5 (v3 and v4: 8)
    assert slice_config(folder, refine=False).refiner is None
    assert slice_config(canal_folder).refiner is None and slice_config(canal_folder).localizer.tta_zooms == ()
    old = SliceConfig.from_dict({"slices": "x", "task": "foramina"})  # a run written before the refiner
    assert old.refiner is None and old.localizer.tta_zooms == () and old.refiner_loop.epochs == 6
    back = SliceConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back.refiner == cfg.refiner and back.localizer == cfg.localizer
    assert hash(back.localizer)


def _two_blob_localizer(size: int, first=(10, 10, 0.9), second=(20, 17, 0.6)):
    """A stand-in localiser: channel 0 has two peaks (heatmap pixels x, y, height), the others one."""
    h = size // OUT_STRIDE

    def blob(x, y, height):
        return gaussian_heatmaps(np.array([[x, y, 1.0]]), h, 1.2)[0] * height

    maps = np.zeros((5, h, h))
    maps[0] = np.maximum(blob(*first), blob(*second))
    for c in range(1, 5):
        maps[c] = blob(5 + 4 * c, 6 + 4 * c, 0.8)
    logits = np.log(np.clip(maps, 1e-6, 1 - 1e-6) / (1 - np.clip(maps, 1e-6, 1 - 1e-6))).astype(np.float32)
    return lambda x: np.repeat(logits[None], len(x), axis=0)


def test_second_peak_is_found_weighted_and_mixed_into_the_grade(run, folder):
    model = SliceModel.load(run, "cpu")
    m = model.members[0]
    m.localizer = _two_blob_localizer(m.lspec.input_size)
    ps = read_point_slices(folder)
    path = ps.slices["path"][0]
    img = np.asarray(Image.open(ps.root / path).convert("L"))
    rows, cols = int(ps.slices["rows"][0]), int(ps.slices["cols"][0])
    frame = Frame(rows, cols, img.shape, m.lspec.input_size)

    off = model.candidates(img, rows, cols)  # the run's spec: no second peak
    assert np.all(off[:, 1, 2] == 0) and np.array_equal(off[:, 1, :2], off[:, 0, :2])

    m.lspec = dataclasses.replace(m.lspec, second_peak_power=4.0, second_peak_gap=3)
    cand = model.candidates(img, rows, cols)
    want = model._to_stored(frame, np.array([[10.0, 10.0, 0.9], [20.0, 17.0, 0.6]]))
    assert np.allclose(cand[0, 0, :2], want[0, :2], atol=0.05) and np.allclose(cand[0, 1, :2], want[1, :2], atol=0.05)
    assert cand[0, 1, 2] == pytest.approx(0.6 ** 4 / (0.9 ** 4 + 0.6 ** 4), abs=0.01)
    # a channel with one peak: its "second" is the faint tail of the first, weighted next to nothing
    assert np.all(cand[1:, 1, 2] < 1e-3)

    asks = [("left_neural_foraminal_narrowing", "l1_l2", *cand[0, 0, :2])]
    p1 = model.grade(img, rows, cols, asks, per_member=True)
    p2 = model.grade(img, rows, cols, [(*asks[0][:2], *cand[0, 1, :2])], per_member=True)
    mixed = model.grade(img, rows, cols, asks, per_member=True, seconds=[tuple(cand[0, 1])])
    w = cand[0, 1, 2]
    assert np.allclose(mixed, (1 - w) * p1 + w * p2, atol=1e-9)
    assert np.allclose(mixed.sum(axis=-1), 1.0)


def test_true_points_are_graded_alone(run, folder):
    model = SliceModel.load(run, "cpu")
    ps = read_point_slices(folder)
    sub = ps.subset_studies(sorted(set(ps.points["study_id"]))[:2])
    plain = predict_rows(model, sub, true_points=True)
    model.members[0].lspec = dataclasses.replace(model.members[0].lspec, second_peak_power=4.0)
    assert predict_rows(model, sub, true_points=True).equals(plain)  # the oracle grades the labelled point only


def test_a_refined_second_peak_run_never_reads_the_truth(refined_run, folder, tmp_path):
    """evaluate --slices with the refiner, three views and the second peak: identical without severity, x, y."""
    import shutil

    import pandas as pd
    import torch

    from spinegrade.slicemodel.pipeline import evaluate_slices

    run = tmp_path / "run"  # the saved run, read with the recipe's second peak as well
    shutil.copytree(refined_run, run)
    ck = torch.load(run / "localizer" / "best.pt", map_location="cpu", weights_only=True)
    ck["spec"]["second_peak_power"] = 4.0
    torch.save(ck, run / "localizer" / "best.pt")
    (run / "localizer" / "best.onnx").unlink(missing_ok=True)
    m = SliceModel.load(run, "cpu").members[0]
    assert m.refiner is not None and m.lspec.second_peak_power == 4.0 and len(m.lspec.tta_zooms) == 3
    blind = tmp_path / "blind"
    shutil.copytree(folder, blind)
    pts = pd.read_csv(blind / "points.csv", dtype=str)
    pts.drop(columns=["severity", "x", "y"]).to_csv(blind / "points.csv", index=False)
    evaluate_slices(run, folder, tmp_path / "t", log=lambda *_: None)
    evaluate_slices(run, blind, tmp_path / "n", log=lambda *_: None)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t" / "predictions.csv"),
                                  pd.read_csv(tmp_path / "n" / "predictions.csv"))
