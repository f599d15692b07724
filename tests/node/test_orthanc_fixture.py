"""The test PACS itself: an Orthanc started by a test process ends with it, even when that process is killed with
kill -9 (it used to outlive a killed pytest, holding its ports and storage)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import need_orthanc

from spinegrade.workers import alive

HERE = Path(__file__).resolve().parent
STARTER = """
import sys, time
sys.path.insert(0, {here!r})
from orthanc_pacs import Orthanc, free_port
pacs = Orthanc({root!r}, free_port()).start()
print(pacs.proc.pid, flush=True)
time.sleep(120)
"""


def test_orthanc_ends_when_the_process_that_started_it_is_killed(tmp_path):
    need_orthanc()
    starter = subprocess.Popen([sys.executable, "-c", STARTER.format(here=str(HERE), root=str(tmp_path))],
                               stdout=subprocess.PIPE, text=True)
    try:
        pid = int(starter.stdout.readline())
        assert alive(pid)
        os.kill(starter.pid, signal.SIGKILL)
        starter.wait(10)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(pid), f"Orthanc (pid {pid}) outlived the process that started it"
    finally:
        if starter.poll() is None:
            starter.kill()
