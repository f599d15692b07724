"""`spinegrade listen` as a process: killed mid-study and restarted, it loses nothing and grades each study
once; SIGTERM stops it cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dicom_net import send_direct, synthetic_studies, wait_until
from launch import marked
from orthanc_pacs import free_port
from pynetdicom import AE

from spinegrade.node.spool import safe_name
from spinegrade.workers import alive

pytestmark = pytest.mark.slow


def _start(tiny_run, store, port, destination, log_path, *more, env=None):
    """The node as `python -m spinegrade listen` sending to `destination` (AE@host:port), in its own process
    group (its grader process with it); `more`: further options."""
    cmd = [sys.executable, "-m", "spinegrade", "listen", "--model", str(tiny_run), "--port", str(port),
           "--destination", destination, "--quiet-seconds", "4", "--store", str(store), *more]
    log = open(log_path, "ab")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    log.close()

    def echoes() -> bool:
        assert proc.poll() is None, log_path.read_text()
        ae = AE(ae_title="TESTSCU")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", port, ae_title="SPINEGRADE")
        ok = assoc.is_established and int(assoc.send_c_echo().Status) == 0
        if assoc.is_established:
            assoc.release()
        return ok

    assert wait_until(echoes, timeout=300, step=0.5), log_path.read_text()
    return proc


def _to(orthanc) -> str:
    return f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}"


def _state(store, uid) -> dict:
    p = store / "studies" / safe_name(uid) / "state.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _peak_rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def test_killed_mid_study_and_restarted_loses_nothing(orthanc, tiny_run, synth_cohort, tmp_path):
    store, port, log_path = tmp_path / "store", free_port(), tmp_path / "node.log"
    a, b = synthetic_studies(synth_cohort, 10)[8:]  # two studies no other test sends
    ua, ub = str(a[0].StudyInstanceUID), str(b[0].StudyInstanceUID)
    proc = _start(tiny_run, store, port, _to(orthanc), log_path)
    try:
        send_direct(b, port)  # complete, but the node dies within its quiet period
        statuses, open_assoc = send_direct(a[: len(a) // 2], port, release=False)  # half of A, still sending
        assert set(statuses) == {0}
        assert _state(store, ua)["state"] == "receiving"
        os.killpg(proc.pid, signal.SIGKILL)  # the node and its grader process, as in a crash
        proc.wait(30)
        open_assoc.abort()
        assert orthanc.srs(ua) == []

        proc = _start(tiny_run, store, port, _to(orthanc), log_path)
        # B was complete: graded after the quiet period. A was half received: held, never graded half.
        assert len(orthanc.wait_for_srs([ub], timeout=300)[ub]) == 1
        assert _state(store, ua)["state"] == "interrupted" and orthanc.srs(ua) == []
        statuses, _ = send_direct(a, port)  # the sender sends A again, whole
        assert set(statuses) == {0}
        assert len(orthanc.wait_for_srs([ua], timeout=300)[ua]) == 1
        assert wait_until(lambda: _state(store, ua).get("sr_sent"), timeout=60)
        assert _state(store, ua)["gradings"] == 1 and _state(store, ub)["gradings"] == 1
        peak = _peak_rss_mb(proc.pid)
        print(f"node process peak RSS {peak:.0f} MB (the grader process apart)")
        assert peak < 1024  # the SCP process holds no model and no pixels
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = log_path.read_text()
    assert f"study {ua} was being received when the node stopped" in text
    assert "node SPINEGRADE stopped" in text
    assert len(orthanc.srs(ua)) == 1 and len(orthanc.srs(ub)) == 1  # still one each


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
def test_killed_with_kill_9_it_leaves_no_process_behind(tiny_run, tmp_path):
    """kill -9 of `listen` alone (not its group): its grader processes and multiprocessing's resource tracker end
    within 10 s (before, they waited for work for ever, about 430 MB, and each restart added more)."""
    mark = f"{os.getpid()}-listen"
    proc = _start(tiny_run, tmp_path / "store", free_port(), "NOBODY@127.0.0.1:9", tmp_path / "node.log", "--jobs",
                  "2", env={**os.environ, "SPINEGRADE_TEST_MARK": mark, "OMP_NUM_THREADS": "1"})
    try:  # it answers C-ECHO once both graders have loaded the run
        helpers = [p for p in marked(mark) if p != proc.pid]
        commands = [Path(f"/proc/{p}/cmdline").read_bytes() for p in helpers]
        assert sum(b"spawn_main" in c for c in commands) == 2, commands  # the two graders
        assert sum(b"resource_tracker" in c for c in commands) == 1, commands
        proc.kill()
        proc.wait(30)
        t0 = time.monotonic()
        while [p for p in helpers if alive(p)] and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        left = [p for p in marked(mark) if alive(p)]
        print(f"helpers gone {time.monotonic() - t0:.1f} s after the kill")
        assert left == []
    finally:
        for p in marked(mark):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(30)
