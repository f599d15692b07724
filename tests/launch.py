"""Launching the command line under torchrun in tests (two CPU processes, gloo)."""

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
