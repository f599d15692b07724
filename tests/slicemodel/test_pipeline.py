"""The foramen localiser + crop grader end to end on a small generated folder: train, evaluate, flags."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from spinegrade.cli import build_parser, main
from spinegrade.errors import DataError

# Fixtures `folder` (a generated point-labelled slice folder) and `run` (a small run on it): conftest.py.
from spinegrade.localize.heatmap import decode_heatmaps
from spinegrade.slicemodel.foramina import read_point_slices
from spinegrade.slicemodel.grader import GraderSpec
from spinegrade.slicemodel.localizer import LocalizerDataset, LocalizerSpec, MaskedHeatmapTask, heatmap_to_box
from spinegrade.slicemodel.model import SliceModel
from spinegrade.slicemodel.pipeline import (
    SliceConfig,
    evaluate_slices,
    fit_temperature,
    make_split,
    predict_points,
    predict_rows,
    slice_config,
    train_slices,
)


def test_localizer_targets_sit_on_the_labelled_points_only(folder):
    ps = read_point_slices(folder)
    ds = LocalizerDataset(ps, {p: np.asarray(__import__("PIL.Image").Image.open(ps.root / p).convert("L"))
                               for p in ps.slices["path"]}, LocalizerSpec(input_size=64), augment=False)
    item = ds[0]
    labelled = np.flatnonzero(item["mask"].numpy())
    expected = {["l1_l2", "l2_l3", "l3_l4", "l4_l5", "l5_s1"].index(lv)
                for lv in ps.points.loc[ps.points["path"] == ps.slices["path"][0], "level"]}
    assert set(labelled) == expected  # exactly the levels labelled on that slice
    dec = decode_heatmaps(item["target"].numpy())
    for lv in range(5):
        if lv in labelled:
            assert np.allclose(heatmap_to_box(dec[lv, :2]), item["points"][lv].numpy(), atol=0.2)
        else:
            assert float(item["target"][lv].max()) == 0 and np.isnan(item["points"][lv].numpy()).all()


def test_masked_loss_ignores_unlabelled_levels():
    task = MaskedHeatmapTask()
    target = torch.zeros(2, 5, 8, 8)
    target[:, 1, 4, 4] = 1
    mask = torch.tensor([[0, 1, 0, 0, 0], [0, 1, 0, 0, 0]], dtype=torch.float32)
    out = torch.randn(2, 5, 8, 8)
    base = task.loss(out, {"target": target, "mask": mask})
    changed = out.clone()
    changed[:, [0, 2, 3, 4]] = 50.0  # anything at all in the unlabelled channels
    assert task.loss(changed, {"target": target, "mask": mask}) == pytest.approx(float(base))
    changed[:, 1] += 1.0
    assert task.loss(changed, {"target": target, "mask": mask}) != pytest.approx(float(base))


def test_split_holds_each_study_once_and_excludes(folder):
    ps = read_point_slices(folder)
    cfg = SliceConfig(slices=str(folder), folds=3, val_fold=1, exclude_studies=["5003"], inner_val=0.2)
    split = make_split(ps, cfg)
    assert split["study_id"].is_unique and "5003" not in set(split["study_id"])
    assert set(split["role"]) == {"train", "inner_val", "test"}
    assert (split.loc[split["role"] == "test", "fold"] == 1).all()
    assert (split.loc[split["role"] != "test", "fold"] != 1).all()


def test_temperature_fit_sharpens_an_underconfident_model():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    sharp = np.full((400, 3), 0.02)
    sharp[np.arange(400), y] = 0.96
    soft = sharp ** 0.3
    soft /= soft.sum(1, keepdims=True)
    assert fit_temperature(y, soft) < 0.5


def test_trained_run_learns_and_is_self_describing(run, folder):
    h = json.loads((run / "summary.json").read_text())["heldout"]
    pp = h["predicted_points"]
    # The generated foramina are easy: the localiser finds most and the grader beats the per-level constant.
    assert pp["localisation_px250"]["median"] < 8
    assert h["true_points"]["weighted_log_loss"] < pp["level_prior_wll"]
    for name in ("localizer", "grader"):
        ck = torch.load(run / name / "best.pt", weights_only=True)
        assert ck["kind"] == f"foramina-{name}" and ck["spec"] and ck["model"]["name"]
    assert json.loads((run / "calibration.json").read_text())["temperature"] > 0


def _patch_default(monkeypatch, cls, **values):
    import dataclasses

    names = [f.name for f in dataclasses.fields(cls)]
    defaults = list(cls.__init__.__defaults__)
    for k, v in values.items():
        defaults[names.index(k)] = v
    monkeypatch.setattr(cls.__init__, "__defaults__", tuple(defaults))


def test_inference_reads_specs_from_the_checkpoint_not_code_defaults(run, folder, tmp_path, monkeypatch):
    a = evaluate_slices(run, folder, tmp_path / "a", log=lambda *_: None)
    _patch_default(monkeypatch, LocalizerSpec, input_size=160, sigma=3.0)
    _patch_default(monkeypatch, GraderSpec, crop_px=96, crop_frac=0.35)
    assert LocalizerSpec().input_size == 160 and GraderSpec().crop_px == 96  # the new code defaults took
    b = evaluate_slices(run, folder, tmp_path / "b", log=lambda *_: None)
    assert a["weighted_log_loss"] == pytest.approx(b["weighted_log_loss"])
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "predictions.csv"),
                                  pd.read_csv(tmp_path / "b" / "predictions.csv"))


def test_evaluate_never_reads_the_truth(run, folder, tmp_path):
    blind = tmp_path / "blind"
    shutil.copytree(folder, blind)
    pts = pd.read_csv(blind / "points.csv", dtype=str)
    pts.drop(columns=["severity", "x", "y"]).to_csv(blind / "points.csv", index=False)
    with_truth = evaluate_slices(run, folder, tmp_path / "t", log=lambda *_: None)
    without = evaluate_slices(run, blind, tmp_path / "n", log=lambda *_: None)
    a = pd.read_csv(tmp_path / "t" / "predictions.csv")
    b = pd.read_csv(tmp_path / "n" / "predictions.csv")
    assert list(a.columns) == ["path", "condition", "level", "normal_mild", "moderate", "severe", "x_pred", "y_pred"]
    pd.testing.assert_frame_equal(a, b)
    assert "weighted_log_loss" in with_truth and "weighted_log_loss" not in without
    # Studies the model trained on are left out unless --all.
    assert with_truth["n_studies"] == len(set(pts["study_id"])) - len(SliceModel.load(run).train_studies)


def test_points_alone_are_the_points_grading_reads(run, folder):
    """predict_points (localisation without grading, for the localisation bench) places every row where
    predict_rows does, truth columns or not."""
    ps = read_point_slices(folder)
    model = SliceModel.load(run)
    graded = predict_rows(model, ps)
    placed = predict_points(model, ps)
    assert list(placed.columns) == ["path", "condition", "level", "x_pred", "y_pred"] and len(placed) == len(ps)
    assert placed[["path", "condition", "level"]].equals(graded[["path", "condition", "level"]])
    assert np.isfinite(placed[["x_pred", "y_pred"]].to_numpy()).all()
    np.testing.assert_allclose(placed[["x_pred", "y_pred"]].to_numpy(), graded[["x_pred", "y_pred"]].to_numpy(),
                               atol=5.001e-4)  # predictions.csv rounds points to 3 decimals


def test_a_folder_of_runs_is_an_ensemble(run, folder, tmp_path):
    ens = tmp_path / "ens"
    ens.mkdir()
    for k in (0, 1):
        shutil.copytree(run, ens / f"fold{k}")
    one = SliceModel.load(run)
    two = SliceModel.load(ens)
    assert len(two.members) == 2
    img = np.asarray(__import__("PIL.Image").Image.open(folder / "images/5000/900_1.jpg").convert("L"))
    asks = [("left_neural_foraminal_narrowing", "l3_l4", 30.0, 30.0)]
    assert np.allclose(one.grade(img, 320, 320, asks), two.grade(img, 320, 320, asks), atol=1e-6)
    with pytest.raises(DataError, match="not a run folder nor a bundled model"):
        SliceModel.load(tmp_path / "nothing")


def test_members_that_disagree_by_a_level_are_decoded_on_their_mean_heatmap(run, folder):
    """Two members, each sure of another of two places: the point lands on the place their mean heatmap favours,
    never between the two (where their points' mean would put it)."""
    import dataclasses

    base = SliceModel.load(run).members[0]
    n_ch, h = len(base.task.channels), base.lspec.input_size // 2

    def sure_of(first, second):  # logits of heatmaps peaking at (x, y) `first` (0.9) and `second` (0.3)
        def net(x):
            hm = np.full((len(x), n_ch, h, h), -9.0, dtype=np.float32)
            hm[:, :, first[1], first[0]], hm[:, :, second[1], second[0]] = np.log(9.0), np.log(0.3 / 0.7)
            return hm
        return net

    a, b = (10, 8), (10, 22)
    keen = dataclasses.replace(base, localizer=sure_of(a, b))
    doubtful = dataclasses.replace(base, localizer=lambda x: sure_of(b, a)(x) * 0.5)  # b 0.69, a 0.55 after sigmoid
    img = np.asarray(__import__("PIL.Image").Image.open(folder / "images/5000/900_1.jpg").convert("L"))
    pa = SliceModel([keen], "a").localize(img, 320, 320, refine=False)
    pb = SliceModel([doubtful], "b").localize(img, 320, 320, refine=False)
    both = SliceModel([keen, doubtful], "ab").localize(img, 320, 320, refine=False)
    assert np.abs(pa[:, 1] - pb[:, 1]).min() > 5  # the two members place every channel apart
    assert np.allclose(both[:, :2], pa[:, :2], atol=0.5)  # mean heights: a (0.9 + 0.55) beats b (0.3 + 0.69)
    assert np.allclose(both[:, 2], (0.9 + 1 / (1 + np.exp(-np.log(0.3 / 0.7) * 0.5))) / 2, atol=1e-3)


@pytest.mark.parametrize("flag,value,check", [
    ("--epochs", "3", lambda c: c.grader_loop.epochs == 3),
    ("--grader-epochs", "4", lambda c: c.grader_loop.epochs == 4),
    ("--localizer-epochs", "5", lambda c: c.localizer_loop.epochs == 5),
    ("--localizer-size", "160", lambda c: c.localizer.input_size == 160),
    ("--localizer-model", "unet-small", lambda c: c.localizer.network == "unet-small"),
    ("--localizer-model-kwargs", '{"widths": [8, 8, 16, 16, 32]}',
     lambda c: dict(c.localizer.network_kwargs) == {"widths": [8, 8, 16, 16, 32]}),
    ("--image-size", "48", lambda c: c.grader.crop_px == 48),
    ("--crop-frac", "0.2", lambda c: c.grader.crop_frac == 0.2),
    ("--label-smoothing", "0.1", lambda c: c.grader.label_smoothing == 0.1),
    ("--model", "seed-cnn", lambda c: c.grader.network == "seed-cnn" and c.grader.network_kwargs == ()),
    ("--model-kwargs", '{"widen_factor": 0.25}', lambda c: dict(c.grader.network_kwargs) == {"widen_factor": 0.25}),
    ("--batch-size", "8", lambda c: c.grader_loop.batch_size == 8),
    ("--lr", "0.01", lambda c: c.grader_loop.lr == 0.01 and c.localizer_loop.lr == 0.01),
    ("--weight-decay", "0.5", lambda c: c.grader_loop.weight_decay == 0.5),
    ("--patience", "2", lambda c: c.grader_loop.patience == 2 and c.localizer_loop.patience == 2),
    ("--class-weights", "none", lambda c: c.grader.class_weights == "none"),
    ("--no-augment", None, lambda c: c.grader.jitter == 0 and c.localizer.rotate == 0),
    ("--no-amp", None, lambda c: not c.grader_loop.amp),
    ("--seed", "7", lambda c: c.seed == 7),
    ("--folds", "4", lambda c: c.folds == 4),
    ("--val-fold", "2", lambda c: c.val_fold == 2),
    ("--exclude-studies", "1,2", lambda c: c.exclude_studies == ["1", "2"]),
    ("--no-calibrate", None, lambda c: not c.calibrate),
    ("--drop-inconsistent-labels", None, lambda c: c.drop_inconsistent),
    ("--no-refine", None, lambda c: c.refiner is None),
    ("--one-grader", None, lambda c: c.extra_graders == () and c.refiner is not None),
    ("--pretrained-grader", None, lambda c: [x["tag"] for x in c.extra_graders][-1] == "lite"
     and not c.grader.pretrained),
    ("--ema", "0.99", lambda c: c.grader_loop.ema == 0.99 and c.localizer_loop.ema == 0.99),
    ("--pretrained", None, lambda c: c.grader.pretrained and c.grader.network == "efficientnet-lite0"),
])
def test_every_train_flag_reaches_the_config(folder, monkeypatch, tmp_path, flag, value, check):
    seen = {}
    import spinegrade.slicemodel.pipeline as pl

    monkeypatch.setattr(pl, "train_slices", lambda cfg, out, resume=False: seen.setdefault("cfg", cfg))
    argv = ["train", "--slices", str(folder), "--out", str(tmp_path / "r"), flag] + ([value] if value else [])
    assert main(argv) == 0
    assert check(seen["cfg"])


def test_flags_that_mean_nothing_for_slices_are_refused(folder, tmp_path, capsys):
    rc = main(["train", "--slices", str(folder), "--out", str(tmp_path / "r"), "--no-condition"])
    assert rc != 0 and "--no-condition: not used by --slices" in capsys.readouterr().err


def test_label_smoothing_outside_zero_to_one_is_refused(folder):
    for eps in (-0.1, 1.0):
        with pytest.raises(DataError, match=f"label smoothing {eps}"):
            slice_config(folder, folds=3, val_fold=0, label_smoothing=eps)
    assert slice_config(folder, folds=3, val_fold=0, label_smoothing=0.05).grader.label_smoothing == 0.05


def test_resume_with_a_different_config_is_refused(folder, run, tmp_path):
    cfg = slice_config(folder, folds=3, val_fold=0, crop_px=40)
    shutil.copytree(run, tmp_path / "r")
    with pytest.raises(DataError, match="--resume with a different configuration: .*crop_px"):
        train_slices(cfg, tmp_path / "r", resume=True, log=lambda *_: None)
    with pytest.raises(DataError, match="already holds a run"):
        train_slices(cfg, tmp_path / "r", log=lambda *_: None)


def test_parser_knows_slices():
    a = build_parser().parse_args(["evaluate", "--run", "r", "--slices", "s", "--out", "o", "--no-tta"])
    assert a.no_tta and str(a.slices) == "s"
