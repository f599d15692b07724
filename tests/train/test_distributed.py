"""The same `train` command under torchrun: two CPU processes (gloo), rank 0 writes, evaluate reads it."""

from __future__ import annotations

import json

import pytest
import torch
from launch import torchrun

from spinegrade.data.slices import write_synthetic_index
from spinegrade.evaluate.slices import evaluate_slices
from spinegrade.train.engine import read_metrics


@pytest.mark.slow
def test_two_process_ddp_run_gives_a_checkpoint_evaluate_reads(tmp_path):
    index = write_synthetic_index(tmp_path / "data", n_studies=10, rows_per_study=6, size=40)
    out = tmp_path / "run"
    rc, stdout, stderr = torchrun(["train", "--index", str(index), "--out", str(out), "--image-size", "32",
                                   "--epochs", "2", "--batch-size", "4", "--folds", "4", "--device", "cpu",
                                   "--model-kwargs", '{"widths": [8, 8, 16, 16, 16]}'], timeout=180)
    assert rc == 0, stdout[-2000:] + stderr[-4000:]
    assert "x 2 processes" in stdout
    assert stdout.count("best epoch") == 1  # one writer
    assert [m["epoch"] for m in read_metrics(out)] == [0, 1]
    assert torch.load(out / "best.pt", weights_only=True)["model"]["name"] == "seed-cnn"

    m = evaluate_slices(out, index, tmp_path / "eval", log=lambda s: None)
    assert m["n_rows_from_training_studies"] == 0 and m["n_labelled"] > 0
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["model"]["accuracy"] >= 0
