"""The node's study spool: received instances on disk, one folder per study, and each study's state.

```
STORE/studies/<study key>/state.json       what the node knows of the study (see `StudyState`)
                         /images/<series>/<sop>.dcm  the instances as received, each written to a temporary
                                            name first (a SOP Instance UID is unique only within its series
                                            in the RSNA files, as in the wild)
                         /out/              the last grading: predictions.json, sr.dcm
```
The files are the truth: a study's fingerprint is a hash over its images' names and bytes, so "received again,
unchanged" is decided from the disk, across restarts. States (persisted on each transition):

- receiving:   an association is delivering instances of it;
- settling:    every association that delivered to it ended normally; complete after the quiet period;
- interrupted: an association delivering it broke off (aborted, or the node stopped): it waits for the sender
               to send it again and is discarded after `discard_after` seconds; never graded as it stands;
- queued, grading: complete, waiting for or held by a grader (a node restarted mid-grading grades it again);
- graded:      graded and its SR written (`sr_sent` says whether the destination took it);
- failed:      grading failed (logged); only a changed resend is tried again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..data.io_utils import atomic_path, atomic_write_text

RECEIVING, SETTLING, INTERRUPTED = "receiving", "settling", "interrupted"
QUEUED, GRADING, GRADED, FAILED = "queued", "grading", "graded", "failed"
_UID = re.compile(r"[0-9][0-9.]{0,63}")


def safe_name(uid: str) -> str:
    """A file name for a UID: the UID itself when it is one (digits and dots), else a hash of it."""
    uid = str(uid).strip().rstrip("\x00")
    return uid if _UID.fullmatch(uid) and ".." not in uid else "h" + hashlib.sha1(uid.encode()).hexdigest()[:20]


@dataclass
class StudyState:
    """What the node remembers of one study (state.json)."""

    study_uid: str
    state: str = RECEIVING
    updated: float = field(default_factory=time.time)  # wall clock of the last instance or transition
    fingerprint: str = ""  # of the images last graded (or that failed)
    gradings: int = 0
    sr_sent: bool = False
    error: str = ""


class Spool:
    """The studies under STORE/studies, with a running count of the bytes their images and results hold
    (`bytes_used`; the small state.json files are left out)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.studies_dir = self.root / "studies"
        self.studies_dir.mkdir(parents=True, exist_ok=True)
        self.clean_temporaries()
        self.bytes_used = sum(self.held_bytes(k) for k in self.keys())

    def folder(self, key: str) -> Path:
        return self.studies_dir / key

    def images(self, key: str) -> Path:
        return self.folder(key) / "images"

    def out(self, key: str) -> Path:
        return self.folder(key) / "out"

    def write_instance(self, key: str, series_name: str, sop_name: str, data: bytes) -> int:
        """Store one instance atomically; returns the change in bytes held (a replaced file counts once).

        The caller adds it to `bytes_used` (under its own lock: several associations write at once)."""
        path = self.images(key) / series_name / f"{sop_name}.dcm"
        before = path.stat().st_size if path.exists() else 0
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        return len(data) - before

    def load(self, key: str) -> StudyState | None:
        p = self.folder(key) / "state.json"
        try:
            return StudyState(**json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None

    def save(self, key: str, st: StudyState) -> None:
        atomic_write_text(self.folder(key) / "state.json", json.dumps(asdict(st), indent=1))

    def keys(self) -> list[str]:
        return sorted(p.name for p in self.studies_dir.iterdir() if p.is_dir())

    def fingerprint(self, key: str) -> tuple[str, int]:
        """(hash over the images' names and bytes, number of images)."""
        h = hashlib.sha256()
        root = self.images(key)
        files = sorted(f for f in root.glob("*/*.dcm") if not f.name.startswith("."))
        for f in files:
            h.update(f.relative_to(root).as_posix().encode())
            h.update(hashlib.sha256(f.read_bytes()).digest())
        return h.hexdigest(), len(files)

    def held_bytes(self, key: str) -> int:
        """Bytes of a study's images and results: what `bytes_used` counts of it."""
        return sum(f.stat().st_size for d in (self.images(key), self.out(key)) for f in d.rglob("*") if f.is_file())

    def out_bytes(self, key: str) -> int:
        """Bytes of a study's results (SR, key images): counted in the store's bound like its images."""
        return sum(f.stat().st_size for f in self.out(key).rglob("*") if f.is_file())

    def drop_images(self, key: str) -> int:
        """Delete a study's images (its state and results stay, so an unchanged resend is still recognised)."""
        freed = sum(f.stat().st_size for f in self.images(key).rglob("*") if f.is_file())
        shutil.rmtree(self.images(key), ignore_errors=True)
        self.bytes_used -= freed
        return freed

    def discard(self, key: str) -> None:
        freed = self.held_bytes(key)
        shutil.rmtree(self.folder(key), ignore_errors=True)
        self.bytes_used -= freed

    def clean_temporaries(self) -> int:
        """Remove half-written files a killed node left (temporary names start with a dot)."""
        n = 0
        for f in self.studies_dir.rglob(".*.tmp*"):
            with contextlib.suppress(OSError):
                f.unlink()
                n += 1
        return n
