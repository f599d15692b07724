"""predict over many studies: reader processes, the journal, --resume after kill -9, shards and their merge."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from launch import marked, torchrun

from spinegrade.batch import JOURNAL, PARTIAL, Shard, parse_shard, shard_folders
from spinegrade.cli import main
from spinegrade.errors import DataError
from spinegrade.predict import merge_shards, predict

QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def batch_folder(synth_cohort, tmp_path_factory):
    """Three synthetic studies and one that cannot be read (in the middle of the order)."""
    folder = tmp_path_factory.mktemp("batch") / "studies"
    for s in sorted((synth_cohort / "train_images").iterdir())[:3]:
        shutil.copytree(s, folder / s.name)
    broken = folder / "1000" / "7"
    broken.mkdir(parents=True)
    (broken / "1.dcm").write_text("not a DICOM file")
    return folder


@pytest.fixture(scope="module")
def uninterrupted(batch_folder, tiny_run, tmp_path_factory):
    """The reference: the batch in one process, reading in the main process."""
    out = tmp_path_factory.mktemp("ref") / "pred"
    r = predict(batch_folder, tiny_run, out, device="cpu", readers=0, **QUIET)
    assert r["studies"] == 3 and [f["study_id"] for f in r["failed"]] == ["1000"]
    return out


def _same_predictions(a, b):
    da, db = (json.loads((p / "predictions.json").read_text()) for p in (a, b))
    assert da["studies"] == db["studies"] and da["failed"] == db["failed"] and da["model"] == db["model"]


def test_readers_give_the_same_files_and_the_journal_is_gone(batch_folder, tiny_run, uninterrupted, tmp_path):
    out = tmp_path / "pred"
    r = predict(batch_folder, tiny_run, out, device="cpu", readers=2, **QUIET)
    assert r["batch"]["readers"] == 2 and r["batch"]["graded_now"] == 4
    assert (out / "submission.csv").read_bytes() == (uninterrupted / "submission.csv").read_bytes()
    _same_predictions(out, uninterrupted)
    assert not (out / JOURNAL).exists() and not (out / PARTIAL).exists()
    report = json.loads((out / "report.json").read_text())
    assert report["failed"][0]["study_id"] == "1000" and report["timings"]["read"] > 0


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_submission(batch_folder, tiny_run, uninterrupted, tmp_path):
    out = tmp_path / "pred"
    cmd = [sys.executable, "-m", "spinegrade", "predict", str(batch_folder), "--model", str(tiny_run),
           "--out", str(out), "--device", "cpu", "--readers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    partial = out / PARTIAL
    deadline = time.monotonic() + 240
    try:
        # kill as soon as the first study's rows are in the partial submission
        while not (partial.exists() and len(partial.read_text().splitlines()) > 1):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no study finished in time"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the batch and its reader processes, as kill -9 would
        proc.wait()
    assert not (out / "submission.csv").exists()  # it was interrupted before the end
    lines = (out / JOURNAL).read_text().splitlines()
    assert 2 <= len(lines) < 5  # header, then some but not all of the four studies
    with open(out / JOURNAL, "a") as fh:  # as if the kill had cut a line short
        fh.write('{"study_id": "9", "index": 3, "res')

    r = predict(batch_folder, tiny_run, out, device="cpu", readers=1, resume=True, **QUIET)
    assert r["batch"]["resumed"] >= 1 and r["batch"]["resumed"] + r["batch"]["graded_now"] == 4
    assert (out / "submission.csv").read_bytes() == (uninterrupted / "submission.csv").read_bytes()
    _same_predictions(out, uninterrupted)


def test_resume_refuses_another_model(batch_folder, tiny_run, tmp_path):
    out = tmp_path / "pred"
    predict(batch_folder, tiny_run, out, device="cpu", readers=0, shard=Shard(0, 4), **QUIET)  # the broken one
    assert json.loads((out / "shards" / "0-of-4" / JOURNAL).read_text().splitlines()[1])["study_id"] == "1000"
    with pytest.raises(DataError, match="model was .* and is now .*foramina-sagt1-v1"):
        predict(batch_folder, "foramina-sagt1-v1", out, device="cpu", readers=0, resume=True,
                shard=Shard(0, 4), **QUIET)


def test_shards_merge_into_the_single_process_submission(batch_folder, tiny_run, uninterrupted, tmp_path, capsys):
    out = tmp_path / "pred"
    predict(batch_folder, tiny_run, out, device="cpu", readers=0, shard=Shard(1, 2), **QUIET)
    with pytest.raises(DataError, match="0-of-2 not written"):
        merge_shards(out)
    assert main(["predict", str(batch_folder), "--model", str(tiny_run), "--out", str(out), "--device", "cpu",
                 "--readers", "0", "--shard", "0/2"]) == 0
    assert "shard 0-of-2" in capsys.readouterr().out
    assert not (out / "submission.csv").exists()
    assert [p.name for p in shard_folders(out)] == ["0-of-2", "1-of-2"]
    assert main(["predict", "--out", str(out), "--merge"]) == 0
    assert (out / "submission.csv").read_bytes() == (uninterrupted / "submission.csv").read_bytes()
    _same_predictions(out, uninterrupted)

    journal = out / "shards" / "1-of-2" / JOURNAL
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:-1]))  # its last study undone
    with pytest.raises(DataError, match="1 of 2 studies not done"):
        merge_shards(out)


def test_parse_shard():
    assert parse_shard("2/4") == Shard(2, 4)
    for bad in ("4/4", "1", "a/b", "-1/2"):
        with pytest.raises(DataError, match="--shard"):
            parse_shard(bad)


@pytest.mark.slow
def test_torchrun_ranks_shard_and_rank_0_merges(batch_folder, tiny_run, uninterrupted, tmp_path):
    out = tmp_path / "pred"
    rc, stdout, stderr = torchrun(["predict", str(batch_folder), "--model", str(tiny_run), "--out", str(out),
                                   "--device", "cpu", "--readers", "0"])
    assert rc == 0, stdout[-2000:] + stderr[-4000:]
    assert stdout.count("predicted 3 studies (1 skipped)") == 1  # rank 0 merged; rank 1 reported its shard
    assert [p.name for p in shard_folders(out)] == ["0-of-2", "1-of-2"]
    assert (out / "submission.csv").read_bytes() == (uninterrupted / "submission.csv").read_bytes()
    _same_predictions(out, uninterrupted)


def test_studies_graded_together_give_the_same_grades(batch_folder, tiny_run, uninterrupted, tmp_path):
    """What a GPU does by default (crops of several studies in one forward pass), checked on the CPU."""
    import numpy as np
    import pandas as pd

    out = tmp_path / "pred"
    predict(batch_folder, tiny_run, out, device="cpu", readers=0, batch_studies=4, **QUIET)
    a, b = (pd.read_csv(p / "submission.csv", dtype={"row_id": str}) for p in (out, uninterrupted))
    assert list(a.row_id) == list(b.row_id)
    assert np.allclose(a.iloc[:, 1:].to_numpy(), b.iloc[:, 1:].to_numpy(), atol=1e-6)
    doc = json.loads((out / "predictions.json").read_text())  # the graders ran, not only the prior
    assert all(any(f["source"] == "model" for f in st["findings"]) for st in doc["studies"])


_READ_AND_WAIT = """
import sys, time
from pathlib import Path

if __name__ == "__main__":
    from spinegrade.batch import read_ahead
    from spinegrade.predict import StudyJob

    study = Path(sys.argv[1])
    reading = read_ahead([StudyJob(study.name, study)] * 8, readers=2, start=sys.argv[2])
    next(reading)
    print("reading", flush=True)
    time.sleep(120)
"""


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("start", ["fork", "forkserver"])
def test_readers_end_with_a_caller_killed_with_kill_9(start, synth_cohort, tmp_path):
    """Forked readers are the caller's children; a fork server's (serve's readers) are not, and the fork server
    lives while they do: both kinds must still end once the caller is killed (before, a fork server's readers and
    the server itself waited for work for ever)."""
    mark = f"{os.getpid()}-{start}"
    study = min((synth_cohort / "train_images").iterdir())
    proc = subprocess.Popen([sys.executable, "-c", _READ_AND_WAIT, str(study), start], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "SPINEGRADE_TEST_MARK": mark})
    assert proc.stdout.readline().strip() == "reading"
    started = marked(mark)
    assert len(started) >= 3  # the caller and its two readers (and a fork server, a resource tracker)
    proc.kill()
    proc.wait()
    end = time.monotonic() + 20
    while [p for p in marked(mark) if p != proc.pid] and time.monotonic() < end:
        time.sleep(0.2)
    assert [p for p in marked(mark) if p != proc.pid] == []
