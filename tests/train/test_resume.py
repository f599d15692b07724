"""Kill a training process after its first epoch, run it again with --resume: it continues where it was."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from spinegrade.cli import main
from spinegrade.data.slices import write_synthetic_index
from spinegrade.train.engine import read_metrics

EPOCHS = 4  # slack: the kill may land an epoch or two late on a busy machine


def _train_args(index, out):
    return ["train", "--index", str(index), "--out", str(out), "--image-size", "40", "--epochs", str(EPOCHS),
            "--batch-size", "4", "--folds", "4", "--seed", "7", "--device", "cpu",
            "--model-kwargs", '{"widths": [8, 8, 16, 16, 16]}']


@pytest.mark.slow
def test_killed_run_resumes_from_the_next_epoch(tmp_path, capsys):
    index = write_synthetic_index(tmp_path / "data", n_studies=12, rows_per_study=6, size=48)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "spinegrade", *_train_args(index, out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (out / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training ended before it could be interrupted"
    done = torch.load(out / "last.pt", weights_only=True)["epoch"]
    assert done < EPOCHS - 1

    assert main([*_train_args(index, out), "--resume"]) == 0
    assert f"resuming from epoch {done + 2}" in capsys.readouterr().out
    assert [r["epoch"] for r in read_metrics(out)] == list(range(EPOCHS))
    assert torch.load(out / "last.pt", weights_only=True)["early_stop"]["done"]

    # exactly what an uninterrupted run computes
    main(_train_args(index, tmp_path / "straight"))
    for a, b in zip(read_metrics(out), read_metrics(tmp_path / "straight"), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_wll"] == pytest.approx(b["val_wll"], rel=1e-5)

    assert main(["evaluate", "--run", str(out), "--index", str(index), "--out", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / "metrics.json").exists()
