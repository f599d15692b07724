"""Weight averaging (`LoopConfig.ema`): the average's arithmetic, best.pt holding it, resume, configuration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spinegrade.cli import main
from spinegrade.data.slices import SliceDataset, png_source, read_index, write_synthetic_index
from spinegrade.data.splits import read_split
from spinegrade.errors import DataError
from spinegrade.evaluate.metric import weighted_log_loss
from spinegrade.pipeline.slices import train_slices
from spinegrade.slicemodel.foramina import write_synthetic_point_slices
from spinegrade.slicemodel.pipeline import _prepare_run_dir, slice_config
from spinegrade.train.checkpoint import load_model
from spinegrade.train.config import LoopConfig, TrainConfig
from spinegrade.train.engine import ClassificationTask, WeightAverage, predict, read_metrics


def test_average_follows_the_ramped_decay():
    model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.BatchNorm1d(1))
    avg = WeightAverage(model, 0.9)
    w0 = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(5)
    avg.update(model)  # first update: decay min(0.9, 1/10) = 0.1
    torch.testing.assert_close(avg.module[0].weight, 0.1 * w0 + 0.9 * (w0 + 1))
    assert int(avg.module[1].num_batches_tracked) == 5  # integer buffers are copied, not averaged
    with torch.no_grad():
        model[0].weight.add_(1.0)
    before = avg.module[0].weight.clone()
    avg.update(model)  # second: min(0.9, 2/11)
    d = 2 / 11
    torch.testing.assert_close(avg.module[0].weight, d * before + (1 - d) * (w0 + 2))
    assert not any(p.requires_grad for p in avg.module.parameters())
    with pytest.raises(ValueError):
        WeightAverage(model, 1.0)


@pytest.fixture(scope="module")
def toy_index(tmp_path_factory):
    return write_synthetic_index(tmp_path_factory.mktemp("toy"), n_studies=10, rows_per_study=6, size=40)


def _config(index, **loop) -> TrainConfig:
    return TrainConfig(index=str(index), model="seed-cnn", model_kwargs={"widths": [8, 8, 16, 16, 16]},
                       image_size=32, folds=4, val_fold=1,
                       loop=LoopConfig(**{"epochs": 3, "batch_size": 8, "seed": 3, "ema": 0.8, **loop}))


class _Stop(Exception):
    pass


def _stop_after(epoch_line: str):
    def log(msg: str) -> None:
        if msg.startswith(epoch_line):
            raise _Stop(msg)
    return log


def test_best_checkpoint_holds_the_average_and_a_stopped_run_resumes_exactly(toy_index, tmp_path):
    straight = tmp_path / "straight"
    train_slices(_config(toy_index), straight, log=lambda s: None)
    last = torch.load(straight / "last.pt", weights_only=True)
    best = torch.load(straight / "best.pt", weights_only=True)
    assert last["weight_average"]["updates"] > 0
    # last.pt: the raw weights (to resume) and the average; best.pt: the average of its epoch
    raw, averaged = last["state_dict"], last["weight_average"]["state_dict"]
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw if raw[k].dtype.is_floating_point)
    assert best["epoch"] == last["epoch"]  # this seed's best epoch is its last: best.pt is that epoch's average
    for k in averaged:
        torch.testing.assert_close(best["state_dict"][k], averaged[k])
    # the recorded validation score is that of the saved (averaged) model
    model, ckpt = load_model(straight)
    split, idx = read_split(straight), read_index(toy_index)
    val = idx.subset(np.isin(idx.study_id, split.study_id[split.role == "val"]) & (idx.label >= 0))
    logits = predict(model, SliceDataset(val, png_source(idx.root), 32), ClassificationTask(), torch.device("cpu"))
    recorded = read_metrics(straight)[ckpt["epoch"]]["val_wll"]
    assert weighted_log_loss(val.label, torch.softmax(logits, 1).numpy()) == pytest.approx(recorded, rel=1e-5)

    # stopped after its second epoch was saved, then resumed: the same figures as the straight run
    stopped = tmp_path / "stopped"
    with pytest.raises(_Stop):
        train_slices(_config(toy_index), stopped, log=_stop_after("epoch 2/3"))
    assert torch.load(stopped / "last.pt", weights_only=True)["epoch"] == 1
    train_slices(_config(toy_index), stopped, resume=True, log=lambda s: None)
    for a, b in zip(read_metrics(stopped), read_metrics(straight), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_wll"] == pytest.approx(b["val_wll"], rel=1e-5)
    resumed = torch.load(stopped / "best.pt", weights_only=True)["state_dict"]
    for k, v in best["state_dict"].items():
        torch.testing.assert_close(resumed[k], v)


def test_average_changes_what_is_validated(toy_index, tmp_path):
    train_slices(_config(toy_index, ema=0.0), tmp_path / "plain", log=lambda s: None)
    train_slices(_config(toy_index), tmp_path / "avg", log=lambda s: None)
    plain, avg = read_metrics(tmp_path / "plain"), read_metrics(tmp_path / "avg")
    # the same training trajectory (same seed, the average does not feed back), another model validated
    assert [r["train_loss"] for r in plain] == pytest.approx([r["train_loss"] for r in avg], rel=1e-6)
    assert [r["val_wll"] for r in plain] != pytest.approx([r["val_wll"] for r in avg], rel=1e-6)
    assert "weight_average" not in torch.load(tmp_path / "plain" / "last.pt", weights_only=True)


def test_resuming_a_plain_run_with_ema_is_refused(toy_index, tmp_path):
    train_slices(_config(toy_index, ema=0.0, epochs=1), tmp_path / "run", log=lambda s: None)
    with pytest.raises(DataError, match="loop.ema"):
        train_slices(_config(toy_index, epochs=1), tmp_path / "run", resume=True, log=lambda s: None)


@pytest.mark.parametrize("bad", ["1.0", "-0.1"])
def test_cli_refuses_a_decay_outside_0_1(tmp_path, capsys, bad):
    folder = write_synthetic_point_slices(tmp_path / "slices", n_studies=4)
    rc = main(["train", "--slices", str(folder), "--out", str(tmp_path / "run"), "--ema", bad])
    assert rc != 0 and "--ema" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_slice_run_written_before_ema_still_resumes(tmp_path):
    folder = write_synthetic_point_slices(tmp_path / "slices", n_studies=4)
    cfg = slice_config(folder, device="cpu")
    old = cfg.to_dict()
    for loop in ("localizer_loop", "grader_loop"):
        del old[loop]["ema"]  # as a run of an earlier spinegrade wrote it
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(old))
    _prepare_run_dir(run, cfg, resume=True)  # no difference reported
    with pytest.raises(DataError, match="ema"):
        _prepare_run_dir(run, slice_config(folder, device="cpu", ema=0.99), resume=True)
    assert slice_config(folder, ema=0.99).grader_loop.ema == 0.99
