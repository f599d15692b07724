"""The training engine and `train`: run folder, self-describing checkpoints, study split, determinism."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from spinegrade import vocab
from spinegrade.data.slices import SliceDataset, png_source, read_index, write_synthetic_index
from spinegrade.errors import DataError
from spinegrade.evaluate.metric import prior_probs, weighted_log_loss
from spinegrade.train.checkpoint import load_model
from spinegrade.train.config import AugmentConfig, LoopConfig, TrainConfig
from spinegrade.train.distributed import setup
from spinegrade.train.engine import ClassificationTask, fit, predict, read_metrics
from spinegrade.data.splits import read_split
from spinegrade.pipeline.slices import train_slices


def tiny_config(index, **loop) -> TrainConfig:
    return TrainConfig(index=str(index), model="seed-cnn", model_kwargs={"widths": [8, 8, 16, 16, 16]},
                       image_size=32, folds=4, val_fold=1,
                       loop=LoopConfig(**{"epochs": 2, "batch_size": 8, "seed": 3, **loop}))


@pytest.fixture(scope="module")
def toy_index(tmp_path_factory):
    return write_synthetic_index(tmp_path_factory.mktemp("toy"), n_studies=10, rows_per_study=6, size=40)


@pytest.fixture(scope="module")
def run(toy_index, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run one"
    train_slices(tiny_config(toy_index), out, log=lambda s: None)
    return out


def test_run_folder_holds_config_metrics_curves_checkpoints(run, toy_index):
    assert {p.name for p in run.iterdir()} >= {"config.json", "splits.csv", "metrics.jsonl", "curves.png",
                                               "best.pt", "last.pt"}
    cfg = TrainConfig.load(run / "config.json")
    assert cfg.image_size == 32 and cfg.loop.seed == 3 and cfg.index == str(toy_index.resolve())
    records = read_metrics(run)
    assert [r["epoch"] for r in records] == [0, 1]
    assert all(np.isfinite(r["train_loss"]) and 0 < r["val_wll"] < 5 for r in records)
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_split_is_by_study(run, toy_index):
    split = read_split(run)
    train, val = set(split.study_id[split.role == "train"]), set(split.study_id[split.role == "val"])
    assert train and val and not train & val
    assert train | val == set(read_index(toy_index).study_id)
    assert set(split.fold[split.role == "val"]) == {1}


def test_checkpoints_are_self_describing_and_weights_only(run, toy_index):
    for name in ("best.pt", "last.pt"):
        ckpt = torch.load(run / name, weights_only=True)
        assert ckpt["model"]["name"] == "seed-cnn" and ckpt["model"]["in_channels"] == 1
        assert ckpt["labels"]["classes"] == list(vocab.SEVERITY_KEYS)
        assert ckpt["labels"]["conditions"] == list(vocab.CONDITIONS)
        assert ckpt["preprocessing"]["image_size"] == 32
        assert set(ckpt["versions"]) == {"spinegrade", "torch", "monai"}
    assert {"optimizer", "scheduler", "early_stop"} <= set(ckpt)
    # the prior is fitted on the training rows only
    split = read_split(run)
    idx = read_index(toy_index)
    y_train = idx.label[np.isin(idx.study_id, split.study_id[split.role == "train"]) & (idx.label >= 0)]
    assert ckpt["prior"]["class_counts"] == np.bincount(y_train, minlength=3).tolist()
    np.testing.assert_allclose(ckpt["prior"]["class_prior"], prior_probs(y_train))


def test_best_checkpoint_reproduces_its_validation_score(run, toy_index):
    model, ckpt = load_model(run)
    records = read_metrics(run)
    best = min(records, key=lambda r: r["val_wll"])
    assert ckpt["epoch"] == best["epoch"]
    split = read_split(run)
    idx = read_index(toy_index)
    val = idx.subset(np.isin(idx.study_id, split.study_id[split.role == "val"]) & (idx.label >= 0))
    logits = predict(model, SliceDataset(val, png_source(idx.root), 32), ClassificationTask(), torch.device("cpu"))
    assert weighted_log_loss(val.label, torch.softmax(logits, 1).numpy()) == pytest.approx(best["val_wll"], rel=1e-5)


def test_same_seed_same_run(run, toy_index, tmp_path):
    train_slices(tiny_config(toy_index), tmp_path / "again", log=lambda s: None)
    a, b = read_metrics(run), read_metrics(tmp_path / "again")
    for ra, rb in zip(a, b, strict=True):
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-6)
        assert ra["val_wll"] == pytest.approx(rb["val_wll"], rel=1e-6)


def test_run_folder_is_not_overwritten_and_resume_needs_the_same_config(run, toy_index):
    with pytest.raises(DataError, match="--resume"):
        train_slices(tiny_config(toy_index), run, log=lambda s: None)
    with pytest.raises(DataError, match="image_size: 32 -> 48"):
        train_slices(dataclasses.replace(tiny_config(toy_index), image_size=48), run, resume=True)
    logs = []
    again = train_slices(tiny_config(toy_index, device="cpu", workers=0), run, resume=True, log=logs.append)
    assert again.epochs_trained == 0 and any("nothing to do" in s for s in logs)


def test_class_weighted_loss_is_the_metric():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 2, -1])
    p = torch.softmax(logits, 1).numpy()
    batch = {"label": y}
    weighted = ClassificationTask(vocab.SEVERITY_WEIGHTS).loss(logits, batch).item()
    plain = ClassificationTask(None).loss(logits, batch).item()
    assert weighted == pytest.approx(weighted_log_loss(y.numpy(), p), rel=1e-6)
    assert plain == pytest.approx(weighted_log_loss(y.numpy(), p, weights=(1, 1, 1)), rel=1e-6)


def test_label_smoothing_spreads_the_target_under_the_metric_weights():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3], [1.0, -2.0, 0.5], [0.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 2, -1])
    w, eps = np.asarray(vocab.SEVERITY_WEIGHTS, float), 0.2
    logp = torch.log_softmax(logits, 1).numpy()[:3]
    target = (1 - eps) * np.eye(3)[y.numpy()[:3]] + eps / 3  # the unlabelled row is still ignored
    expected = -(target * w * logp).sum() / w[y.numpy()[:3]].sum()
    smoothed = ClassificationTask(vocab.SEVERITY_WEIGHTS, label_smoothing=eps).loss(logits, {"label": y}).item()
    assert smoothed == pytest.approx(expected, rel=1e-6)
    assert smoothed != pytest.approx(ClassificationTask(vocab.SEVERITY_WEIGHTS).loss(logits, {"label": y}).item())


class _ConstantScoreTask(ClassificationTask):
    """A task whose validation never improves: the engine must stop after `patience` epochs."""

    def score(self, outputs, targets):
        return {"val_wll": 1.0}


def test_engine_trains_any_task_and_stops_early(tmp_path):
    g = torch.Generator().manual_seed(0)
    items = [{"image": torch.randn(1, 16, 16, generator=g), "cond": torch.zeros(0),
              "label": torch.tensor(i % 3)} for i in range(24)]
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(256, 3))
    task = _ConstantScoreTask()
    task.forward = lambda m, b: m(b["image"])
    loop = LoopConfig(epochs=6, batch_size=8, patience=2)
    r = fit(model, items, items[:6], task, loop, tmp_path, setup("cpu"), {"model": {}}, log=lambda s: None)
    assert r.stopped_early and r.epochs_trained == 3 and r.best_epoch == 0
    assert [m["epoch"] for m in read_metrics(tmp_path)] == [0, 1, 2]
    assert torch.load(tmp_path / "last.pt", weights_only=True)["early_stop"]["done"]


def test_unlabelled_rows_do_not_train(tmp_path):
    csv = write_synthetic_index(tmp_path / "d", n_studies=8, rows_per_study=5, unlabelled=5)
    out = tmp_path / "r"
    train_slices(dataclasses.replace(tiny_config(csv, epochs=1), augment=AugmentConfig(enabled=False)), out,
                 log=lambda s: None)
    counts = torch.load(out / "best.pt", weights_only=True)["prior"]["class_counts"]
    split = read_split(out)
    n_train = int(pd.read_csv(csv, dtype=str, keep_default_na=False)
                  .pipe(lambda t: (t.study_id.isin(split.study_id[split.role == "train"]) & (t.severity != "")).sum()))
    assert sum(counts) == n_train
