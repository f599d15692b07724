"""Helper process pools end before their caller does: no pool is left to end on its own at the interpreter's exit
(CPython 3.11's wakeup race printed `OSError: [Errno 9] Bad file descriptor` then). Ending with a caller killed with
kill -9: tests/pipeline/test_predict_batch.py (readers), tests/node/test_node_restart.py (the node's graders)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from spinegrade.batch import read_ahead
from spinegrade.errors import DataError
from spinegrade.predict import StudyJob

sys.path.insert(0, str(Path(__file__).resolve().parent / "io"))
from dicom_factory import write_series  # noqa: E402


def _pool_threads() -> list[threading.Thread]:
    """The manager threads of concurrent.futures' process pools: at exit, each is woken through its pipe."""
    return [t for t in threading.enumerate() if type(t).__module__ == "concurrent.futures.process"]


def test_no_reader_pool_outlives_read_ahead(tmp_path):
    """Stress: batches of a good and a garbage study, read to the end or left early (the caller stopped reading:
    an exception, Ctrl-C), 20 times. Each time the readers' pool has ended when read_ahead has: before, its manager
    thread was still closing its pipes (shutdown(wait=False)), and the interpreter's exit could write to them."""
    write_series(tmp_path / "good" / "1", 3)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "x.dcm").write_bytes(b"garbage" * 20)
    jobs = [StudyJob("good", tmp_path / "good"), StudyJob("junk", tmp_path / "junk")]
    assert _pool_threads() == []
    for k in range(20):
        batch = jobs * (1 + k % 3)
        if k % 4 == 3:
            reading = read_ahead(batch, readers=2)
            next(reading)
            reading.close()
        else:
            got = [(job.study_id, type(study)) for job, study, _ in read_ahead(batch, readers=2)]
            assert [s for s, _ in got] == [j.study_id for j in batch]
            assert {s: t.__name__ for s, t in got} == {"good": "Study", "junk": DataError.__name__}
        assert _pool_threads() == [], k
