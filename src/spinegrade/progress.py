"""Progress that reads well where it lands: bars on a terminal, plain lines with elapsed time and an ETA in a log.

On a terminal (stdout and stderr both TTYs) a loop shows a tqdm bar. Anywhere else (a log file, a pipe, CI)
a bar would write carriage-return redraws into the file; there a loop prints one plain line now and then
instead (`prepare: 30/80 studies, 1m05s elapsed, ETA 1m48s`), and the training engine's line per epoch
carries the ETA of the whole command (`command`/`advance`). No torch here: every command may use it.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

# In a log, a loop's line comes at most this often (and at every tenth of the work, and at the end).
LINE_EVERY_S = 30.0


def interactive() -> bool:
    """True on a terminal (stdout and stderr TTYs, where tqdm's redraws belong), False in a log or a pipe."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def duration(seconds: float) -> str:
    """`45s`, `3m05s`, `2h07m`: short and unambiguous in a log line."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Tracker:
    """Units of work done out of a known total, and the time they took: elapsed and ETA at the pace so far.

    Units counted with `skip` (work found done, e.g. epochs of a resumed run) count as done but not in the
    pace, so a resumed command does not promise to finish in no time.
    """

    def __init__(self, total: float, unit: str, clock: Callable[[], float] = time.monotonic):
        self.total, self.unit, self.clock = float(total), unit, clock
        self.start = clock()
        self.done = self.skipped = 0.0

    def advance(self, units: float = 1) -> None:
        self.done += units

    def skip(self, units: float) -> None:
        self.done += units
        self.skipped += units

    def eta(self) -> float | None:
        """Seconds left at the pace so far; None before any work was timed."""
        worked = self.done - self.skipped
        if worked <= 0:
            return None
        return max(self.total - self.done, 0.0) * (self.clock() - self.start) / worked

    def status(self) -> str:
        eta = self.eta()
        done = f"{self.done:g}/{self.total:g} {self.unit}"
        left = "done" if self.done >= self.total else ("ETA unknown" if eta is None else f"ETA {duration(eta)}")
        return f"{done}, {duration(self.clock() - self.start)} elapsed, {left}"


_commands: list[Tracker] = []


@contextmanager
def command(total: float, unit: str = "epochs") -> Iterator[Tracker]:
    """The whole command's work, e.g. the epochs of every stage a `train` will run; `advance` counts them.

    Inside another `command` this is part of that one's total (five folds of a run each declare their
    epochs; the folds' command declared them all), so the outer tracker goes on counting.
    """
    if _commands:
        yield _commands[-1]
        return
    t = Tracker(total, unit)
    _commands.append(t)
    try:
        yield t
    finally:
        _commands.remove(t)


def advance(units: float = 1, skipped: bool = False) -> str:
    """Count units of the current command done; returns `  [3/18 epochs, 1m20s elapsed, ETA 6m40s]` to end a
    log line with, or "" when no command declared its total."""
    if not _commands:
        return ""
    t = _commands[-1]
    (t.skip if skipped else t.advance)(units)
    return f"  [{t.status()}]"


class _Lines:
    """A loop's progress as occasional plain lines (the stand-in for a bar in a log)."""

    def __init__(self, iterable: Iterable | None, total: int | None, desc: str, unit: str, log: Callable | None):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.tracker = Tracker(total or 0, unit)
        self.desc, self.log = desc, log
        self.last_t, self.last_n = self.tracker.start, 0.0

    def __iter__(self):
        for x in self.iterable:
            yield x
            self.update(1)

    def update(self, n: float = 1) -> None:
        t = self.tracker
        t.advance(n)
        if self.log is None:
            return
        now = t.clock()
        step = max(t.total / 10, 1)
        if t.done >= t.total or now - self.last_t >= LINE_EVERY_S or t.done - self.last_n >= step:
            self.log(f"{self.desc}: {t.status()}")
            self.last_t, self.last_n = now, t.done

    def set_postfix(self, *args, **kwargs) -> None:  # tqdm's API; the caller's own line says it in a log
        pass

    def close(self) -> None:
        pass


def bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "", unit: str = "it",
        log: Callable | None = print, leave: bool = True, disable: bool = False):
    """A tqdm bar on a terminal; in a log, a line at every tenth of `total` (or LINE_EVERY_S) through `log`,
    or nothing with `log=None` (for an inner loop whose caller prints its own line). Iterate over it, or call
    `update(n)`; `close()` when done with a bar not iterated."""
    if disable:
        log = None
    if interactive() and not disable:
        from tqdm import tqdm

        # no monitor thread (it only tunes how often a stalled bar redraws): a process with one thread may
        # quiet a native decoder's stderr (`io.dicom._native_stderr_quiet`)
        tqdm.monitor_interval = 0
        return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, dynamic_ncols=True)
    return _Lines(iterable, total, desc, unit, log)
