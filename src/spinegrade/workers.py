"""Helper processes (predict's and serve's readers, the node's graders): they end with the process that started
them, however it ends, and their pools are closed before that process exits. Torch-free, imports nothing heavy."""

from __future__ import annotations

import os
import time


def alive(pid: int) -> bool:
    """Whether process `pid` is running (a zombie, dead but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # there, but not ours
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def end_with(caller: int, kernel: bool = True) -> None:
    """In a helper process: end with the process that asked for it (`caller`). Killed with kill -9, that
    process cannot stop its helpers, and a helper waiting for work would wait forever (holding the caller's pipes
    open, and with them multiprocessing's resource tracker). A helper is the caller's child (fork, spawn) or a
    fork server's (which lives while its children do). A thread polls every 0.5 s.

    kernel: also ask Linux to SIGKILL this process at once when its parent ends. Only for a caller whose
    processes are started by a thread that lives as long as the caller: the kernel's signal comes when the thread
    that started the process ends (PR_SET_PDEATHSIG), and a thread that ends first would take the helper with it."""
    import signal
    import threading

    if kernel:
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    child = os.getppid() == caller

    def watch() -> None:  # the caller's child: until it is re-parented; else: until the caller is gone
        while os.getppid() == caller if child else alive(caller):
            time.sleep(0.5)
        os._exit(1)

    from .io.dicom import SILENT_THREAD

    threading.Thread(target=watch, name=f"{SILENT_THREAD}-parent-watch", daemon=True).start()


def close_pool(pool) -> None:
    """Shut a ProcessPoolExecutor down, its queued work cancelled, and wait until its manager thread has ended.

    Never leave a pool to end on its own (`shutdown(wait=False)`): at the interpreter's exit concurrent.futures
    wakes every pool's manager thread by writing to a pipe, outside the lock under which that thread closes the
    pipe (CPython 3.11; later releases take a lock, gh-125451). A close between the check and the write printed
    `OSError: [Errno 9] Bad file descriptor` (or "handle is closed") as a traceback after the command had ended.
    Waiting costs nothing: the exit waited for the manager thread anyway, and a pool whose work is done or
    cancelled ends at once, a broken one too (its processes are gone)."""
    pool.shutdown(wait=True, cancel_futures=True)
