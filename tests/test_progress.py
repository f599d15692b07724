"""Progress: plain lines with elapsed time and an ETA for the whole command where the output is a log (no
carriage returns), the arithmetic of that ETA, and a real `train` with its output redirected to a file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import spinegrade
from spinegrade import progress
from spinegrade.progress import Tracker, duration


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_eta_is_the_pace_so_far_times_the_work_left():
    clock = Clock()
    t = Tracker(10, "epochs", clock)
    assert t.eta() is None and t.status() == "0/10 epochs, 0s elapsed, ETA unknown"
    clock.t += 30
    t.advance(3)
    assert t.eta() == pytest.approx(70.0)
    assert t.status() == "3/10 epochs, 30s elapsed, ETA 1m10s"
    t.advance(7)
    assert t.status() == "10/10 epochs, 30s elapsed, done"


def test_work_found_done_counts_but_does_not_speed_the_pace():
    clock = Clock()
    t = Tracker(10, "epochs", clock)
    t.skip(4)  # four epochs of a resumed run: done before this process started
    clock.t += 60
    t.advance(2)  # two epochs in 60 s: 30 s each, four left
    assert t.eta() == pytest.approx(120.0)


def test_durations_read_well():
    assert [duration(s) for s in (0, 44.6, 65, 3599, 7620)] == ["0s", "45s", "1m05s", "59m59s", "2h07m"]


def test_a_nested_command_counts_into_the_outer_one():
    assert progress.advance() == ""  # no command: nothing to add to a line
    with progress.command(6, "epochs") as outer:
        with progress.command(3, "epochs") as inner:  # e.g. one fold of a cross-validation
            assert inner is outer
            line = progress.advance(2)
        assert line.startswith("  [2/6 epochs, ") and "ETA" in line
    assert progress.advance() == ""


def test_a_loop_in_a_log_prints_a_line_every_tenth_and_at_the_end(capsys):
    lines = []
    for _ in progress.bar(range(25), desc="prepare", unit="studies", log=lines.append):
        pass
    # pytest's captured stdout is no terminal: lines, not a bar
    assert [ln.split(",")[0] for ln in lines] == [f"prepare: {n}/25 studies" for n in (3, 6, 9, 12, 15, 18, 21, 24, 25)]
    assert lines[-1].endswith("done")
    quiet = progress.bar(range(5), log=None)
    assert list(quiet) == list(range(5))
    assert list(progress.bar(range(3), disable=True)) == [0, 1, 2]
    assert capsys.readouterr().out == ""


def test_train_into_a_log_file_has_eta_lines_and_no_carriage_returns(tmp_path):
    from spinegrade.data.slices import write_synthetic_index

    index = write_synthetic_index(tmp_path / "toy", n_studies=8, rows_per_study=4, size=32)
    src = Path(spinegrade.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")]))
    log = tmp_path / "train.log"
    with open(log, "wb") as fh:
        p = subprocess.run([sys.executable, "-m", "spinegrade", "train", "--index", str(index), "--out",
                            str(tmp_path / "run"), "--model", "seed-cnn", "--model-kwargs",
                            '{"widths": [4, 4, 8, 8, 8]}', "--image-size", "32", "--epochs", "3", "--batch-size",
                            "8", "--folds", "4", "--val-fold", "1", "--device", "cpu"],
                           stdout=fh, stderr=subprocess.STDOUT, env=env, timeout=300)
    text = log.read_bytes().decode()
    assert p.returncode == 0, text
    assert "\r" not in text
    epochs = [ln for ln in text.splitlines() if ln.startswith("epoch ")]
    assert len(epochs) == 3
    for k, ln in enumerate(epochs, 1):
        assert re.search(rf"\[{k}/3 epochs, \d+(m\d\ds)?s? elapsed, (ETA \d+(m\d\d)?s|done)\]$", ln), ln
    assert epochs[-1].endswith("done]") and "ETA" in epochs[0]
