"""Atomic file writes: every output of the package appears complete or not at all.

A run interrupted mid-write (Ctrl-C, a killed job, a full disk) must not leave a truncated CSV, NPY or JSON
that a later run would trust, so writers write a temporary sibling and rename it onto the target
(`os.replace` is atomic within one file system). This guards against interrupted processes, not power loss:
there is no fsync, which would slow the many small writes of a cache for little gain here.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def _temp_sibling(path: Path) -> Path:
    # Hidden, unique per writer, and ending in the target's suffix: writers such as PIL pick the format from
    # the suffix, np.save appends ".npy" when it is missing, and pandas infers compression from ".gz".
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write; on success it is renamed onto `path`, on error deleted.

    The parent folder is created if needed. The body must create the temporary file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{path}: nothing was written to the temporary file {tmp.name}")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (newlines written as given); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding=encoding, newline="") as fh:
            fh.write(text)
    return path


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike, *, index: bool = False, **to_csv) -> Path:
    """Write a DataFrame as CSV atomically (no index unless asked); extra keywords go to `DataFrame.to_csv`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=index, **to_csv)
    return path


def write_rows_csv_atomic(path: str | os.PathLike, columns, rows) -> Path:
    """Write a header and rows as CSV atomically with the csv module (numbers as `str` gives them: the
    shortest text that reads back to the same float), for writers that should not import pandas."""
    import csv

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(list(columns))
        w.writerows(rows)
    return path


def _nearest_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p
    return Path(".")


def check_output_folder(path: str | os.PathLike) -> None:
    """Raise DataError, in one line naming the path, when `path` cannot become an output folder: it is a
    file, or the nearest folder that exists cannot be written. Creates nothing."""
    from .errors import DataError

    p = Path(path)
    there = _nearest_existing(p)
    if there == p and not p.is_dir():
        raise DataError(f"{p}: exists and is not a folder (give a new or existing folder for the outputs)")
    if not there.is_dir():
        raise DataError(f"{p}: cannot be created, {there} is a file")
    if not os.access(there, os.W_OK | os.X_OK):
        raise DataError(f"{p}: cannot write in {there} (permission denied)")


def check_output_file(path: str | os.PathLike) -> None:
    """Like `check_output_folder` for a file to write: not a folder, and its folder writable or creatable."""
    from .errors import DataError

    p = Path(path)
    if p.is_dir():
        raise DataError(f"{p}: is a folder (give a file name to write)")
    check_output_folder(p.parent)


def make_output_folder(path: str | os.PathLike) -> Path:
    """Create an output folder (and its parents); an OS refusal becomes one DataError line naming it."""
    from .errors import DataError

    p = Path(path)
    check_output_folder(p)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{p}: cannot create the output folder ({e.strerror or e})") from None
    return p
