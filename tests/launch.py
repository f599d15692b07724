"""Launching in tests: the command line under torchrun (two CPU processes, gloo); finding what a launched process
started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def torchrun(args: list[str], nproc: int = 2, timeout: float = 300) -> tuple[int, str, str]:
    """`torchrun --standalone --nproc_per_node=nproc -m spinegrade ARGS` on the CPU: (exit code, stdout, stderr)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "spinegrade", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # Own process group: on a hang, the workers are killed with the launcher instead of lingering.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    return proc.returncode, stdout, stderr


def marked(mark: str) -> list[int]:
    """Processes whose environment holds SPINEGRADE_TEST_MARK=mark (a process launched with it and every process
    it started, whoever their parent is now)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/environ", "rb") as f:
                    if f"SPINEGRADE_TEST_MARK={mark}".encode() in f.read().split(b"\0"):
                        pids.append(int(d))
            except OSError:
                pass
    return pids
