"""Many studies in one `predict`: reader processes, a journal that survives a kill, shards that merge.

While a batch runs its output folder holds
```
OUT/batch.jsonl              the journal: a header line, then one line per finished study (its result, or why
                             it failed), flushed as each study finishes; `--resume` reads it back
OUT/submission.partial.csv   the submission's rows as studies finish (completion order; for watching a batch)
```
and at the end `submission.csv`, `predictions.json` and `report.json` are written (each atomically) from the
journal, rows in the order of the input's studies, and the two files above are removed. The final files depend
only on the journal's records, so a batch killed and resumed writes the same bytes as one that ran through.

Sharded (`torchrun` ranks, or `--shard I/N` on separate machines) each shard keeps its journal in
`OUT/shards/I-of-N/`; the merge (rank 0 after a barrier, or `spinegrade predict --merge OUT`) writes the final
files from all of them. Torch-free.
"""

from __future__ import annotations

import csv
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import vocab
from .errors import DataError
from .workers import close_pool, end_with

FORMAT = "spinegrade.batch/1"
JOURNAL = "batch.jsonl"
PARTIAL = "submission.partial.csv"
SHARDS = "shards"
STAGES = ("read", "localize", "grade")


# --- shards -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Shard:
    """Which slice of the studies this process grades: every `count`-th study from `index` (round robin, so
    shards get a similar mix of large and small studies)."""

    index: int = 0
    count: int = 1
    torchrun: bool = False  # launched by torchrun: the ranks meet at a barrier and rank 0 merges

    @property
    def folder_name(self) -> str:
        return f"{self.index}-of-{self.count}"

    def take(self, items: list) -> list[tuple[int, object]]:
        """(position in the whole batch, item) for this shard's items."""
        return [(i, x) for i, x in enumerate(items) if i % self.count == self.index]


def parse_shard(text: str) -> Shard:
    """'I/N' (0 <= I < N) -> Shard; DataError naming the option otherwise."""
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise DataError(f"--shard {text!r}: expected I/N, e.g. 0/4 for the first of four shards") from None
    if n < 1 or not 0 <= i < n:
        raise DataError(f"--shard {text}: I must be one of 0 .. N-1")
    return Shard(i, n)


def shard_from_env() -> Shard:
    """The shard torchrun's RANK / WORLD_SIZE name; one whole batch without them."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Shard()
    return Shard(int(os.environ.get("RANK", "0")), world, torchrun=True)


def default_readers(n_studies: int) -> int:
    """Reader processes for a batch: none for one study (nothing to overlap), else the cores beside the one
    that runs the models (shared between the ranks that torchrun starts on this machine), at most 8."""
    from .device import spare_cores

    return 0 if n_studies < 2 else max(1, spare_cores(8))


# --- reading ahead ------------------------------------------------------------------------------------------
def _read_job(path: str, descriptions: dict | None, study_id: str):
    """Runs in a reader process: (Study, seconds)."""
    from .io.dicom import load_study

    t0 = time.perf_counter()
    study = load_study(path, descriptions=descriptions, stored=True)  # half the bytes of float32 to send back
    study.study_id = study_id
    return study, time.perf_counter() - t0


READER_DIED = "the reader process died while reading it (a decoder crash, or out of memory)"


def read_ahead(jobs: list, readers: int, start: str | None = None) -> Iterator[tuple[object, object, float]]:
    """(job, Study or the exception reading it raised, seconds) for each job, in the jobs' order.

    With `readers` > 0, that many processes read the next studies while the caller works on the current one;
    at most `readers + 2` studies wait in memory. A reader that dies (a decoder crash, the kernel's
    out-of-memory killer) takes the pool down: it is rebuilt, the studies in flight are read again, and one that
    kills a reader of its own is reported as failed.

    start: how readers start. Default: fork where there is one (see below). "forkserver" (where there is one,
    else spawn) for a caller with threads of its own that may hold locks when it forks (a web server): readers
    are then forked from a clean process that already imported the reader.
    """
    if readers <= 0:
        for job in jobs:
            try:
                study, secs = _read_job(str(job.path), job.descriptions, job.study_id)
                yield job, study, secs
            except Exception as e:  # noqa: BLE001 - one bad study must not end a batch
                yield job, e, 0.0
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # fork where there is one, as torch's DataLoader does: spawn would re-run the caller's script in each reader
    # (a script without a `__main__` guard then kills its readers), and starts slower. The readers never touch torch.
    methods = multiprocessing.get_all_start_methods()
    if start == "forkserver":
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if ctx.get_start_method() == "forkserver":
            ctx.set_forkserver_preload([__name__, f"{__package__}.io.dicom"])
    else:
        ctx = multiprocessing.get_context(start or ("fork" if "fork" in methods else "spawn"))

    def submit(pool, i: int):
        try:
            return pool.submit(_read_job, str(jobs[i].path), jobs[i].descriptions, jobs[i].study_id)
        except BrokenProcessPool as e:  # the pool broke since the last result: that result's handler rebuilds it
            from concurrent.futures import Future

            f = Future()
            f.set_exception(e)
            return f

    pending: dict[int, object] = {}

    def new_pool(n: int):
        # each reader ends with this process, however it ends (kill -9 included)
        return ProcessPoolExecutor(n, mp_context=ctx, initializer=end_with, initargs=(os.getpid(),))

    pool = new_pool(readers)
    nxt = 0
    try:
        for k, job in enumerate(jobs):
            while nxt < len(jobs) and nxt < k + readers + 2:
                pending[nxt] = submit(pool, nxt)
                nxt += 1
            try:
                study, secs = pending.pop(k).result()
                yield job, study, secs
            except BrokenProcessPool:
                # Some study in flight killed its reader, and the pool with it. This one is read again alone, so
                # that if it is the one, it fails by itself; the others go to a new pool.
                close_pool(pool)
                pool = new_pool(readers)
                pending = {i: f if f.done() and f.exception() is None else submit(pool, i)
                           for i, f in pending.items()}
                try:
                    with new_pool(1) as solo:
                        study, secs = submit(solo, k).result()
                    yield job, study, secs
                except BrokenProcessPool:
                    yield job, DataError(READER_DIED), 0.0
                except Exception as e:  # noqa: BLE001 - the reader's error, whatever its type, is the study's
                    yield job, e, 0.0
            except Exception as e:  # noqa: BLE001 - the reader's error, whatever its type, is the study's
                yield job, e, 0.0
    finally:
        close_pool(pool)


# --- the journal --------------------------------------------------------------------------------------------
def _read_lines(path: Path) -> tuple[dict | None, list[dict]]:
    """(header, records): a line cut short by a kill ends the valid part."""
    header, records = None, []
    with open(path, "rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                break
            try:
                rec = json.loads(raw)
            except ValueError:
                break
            if header is None:
                if rec.get("format") != FORMAT:
                    break
                header = rec
            else:
                records.append(rec)
    return header, records


class Journal:
    """Append-only record of a batch's finished studies, one JSON line each, flushed per study."""

    def __init__(self, folder: Path, header: dict, resume: bool, log=print):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / JOURNAL
        self.partial = self.folder / PARTIAL
        self.done: dict[str, dict] = {}  # study id -> record (graded or failed), from an earlier run
        header = {"format": FORMAT, **header}
        if self.path.exists() and resume:
            old, records = _read_lines(self.path)
            if old is None:
                raise DataError(f"{self.path}: not a spinegrade batch journal; remove it or choose another --out")
            for key in ("model", "input", "shard"):
                if old.get(key) != header.get(key):
                    raise DataError(f"{self.path}: --resume continues the same batch, but its {key} was "
                                    f"{old.get(key)!r} and is now {header.get(key)!r}; use another --out")
            wanted = set(header.get("studies", []))
            for rec in records:
                if str(rec["study_id"]) in wanted:  # a study since removed from the input leaves the batch
                    self.done[str(rec["study_id"])] = rec
            # rewritten whole: drops a line cut short by the kill, and the header lists today's studies
            from .files import atomic_write_text

            atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in [header, *self.done.values()]))
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - open for the batch, see close()
            self.header = header
        else:
            if self.path.exists():
                log(f"{self.path}: an earlier batch's journal is replaced (pass --resume to continue it)")
            self.header = header
            self._fh = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - open for the batch, see close()
            self._write(header)
        self._rewrite_partial()

    def _write(self, rec: dict) -> None:
        # one write per line, flushed: a kill loses at most the line being written, which reading drops
        self._fh.write(json.dumps(rec) + "\n")
        self._fh.flush()

    def _rewrite_partial(self) -> None:
        from .files import write_rows_csv_atomic

        write_rows_csv_atomic(self.partial, vocab.SUBMISSION_COLUMNS,
                              (row for rec in self.done.values() if "result" in rec for row in _rows(rec)))
        self._csv = open(self.partial, "a", newline="", encoding="utf-8")  # noqa: SIM115 - see close()

    def add(self, index: int, study_id: str, result: dict | None = None, error: str | None = None,
            seconds: dict | None = None) -> None:
        """Record a finished study: its result (`StudyResult.to_dict()`) or the error that stopped it."""
        rec = {"study_id": study_id, "index": index, "seconds": seconds or {}}
        rec.update({"result": result} if error is None else {"error": error})
        self._write(rec)
        if error is None:
            csv.writer(self._csv, lineterminator="\n").writerows(_rows(rec))
            self._csv.flush()

    def close(self) -> None:
        self._fh.close()
        self._csv.close()


def _rows(rec: dict) -> list[list]:
    """A journal record's submission rows, as lists in the columns' order."""
    from .results import StudyResult

    return _row_values(StudyResult.from_dict(rec["result"]))


def _row_values(res) -> list[list]:
    return [[r[c] for c in vocab.SUBMISSION_COLUMNS] for r in res.submission_rows()]


# --- finishing: one batch or the merge of shards --------------------------------------------------------------
def shard_folders(out: Path) -> list[Path]:
    """The shard folders of a sharded batch in OUT, checked to be all N of one split; DataError otherwise."""
    root = Path(out) / SHARDS
    found = sorted(p for p in root.glob("*-of-*") if p.is_dir()) if root.is_dir() else []
    if not found:
        raise DataError(f"{out}: no shards to merge (expected {root}/I-of-N folders from `predict --shard` or "
                        f"torchrun)")
    counts = {p.name.split("-of-")[1] for p in found}
    if len(counts) != 1:
        raise DataError(f"{root}: shards of different splits ({', '.join(p.name for p in found)}); remove the "
                        f"old ones")
    n = int(counts.pop())
    missing = [f"{i}-of-{n}" for i in range(n) if not (root / f"{i}-of-{n}" / JOURNAL).exists()]
    if missing:
        raise DataError(f"{root}: shard(s) {', '.join(missing)} not written yet (run them, then merge)")
    return [root / f"{i}-of-{n}" for i in range(n)]


def collect(folders: list[Path]) -> tuple[dict, list[dict]]:
    """(header of the first journal, every study's record ordered as the input listed them) from finished
    journals; DataError naming a journal whose studies are not all done, or shards of different models."""
    header, out = None, []
    for f in folders:
        h, records = _read_lines(Path(f) / JOURNAL)
        if h is None:
            raise DataError(f"{f / JOURNAL}: not a spinegrade batch journal")
        if header is not None and h.get("model") != header.get("model"):
            raise DataError(f"{f}: graded with another model than {folders[0]}; shards must share one model")
        header = header or h
        last = {str(r["study_id"]): r for r in records}
        todo = [s for s in h.get("studies", []) if s not in last]
        if todo:
            raise DataError(f"{f / JOURNAL}: {len(todo)} of {len(h['studies'])} studies not done (first: "
                            f"{todo[0]}); run that batch or shard again with --resume")
        out += [last[s] for s in h.get("studies", [])]
    return header, sorted(out, key=lambda r: r["index"])


def write_outputs(out: Path, header: dict, records: list[dict], extra: dict | None = None) -> dict:
    """submission.csv, predictions.json (if any study was graded) and report.json from journal records;
    returns the report's summary."""
    from .files import atomic_write_text, write_rows_csv_atomic
    from .results import StudyResult, write_predictions

    results = [StudyResult.from_dict(r["result"]) for r in records if "result" in r]
    failed = [{"study_id": r["study_id"], "error": r["error"]} for r in records if "error" in r]
    timings = {k: sum(r.get("seconds", {}).get(k, 0.0) for r in records) for k in STAGES}
    summary = {"studies": len(results), "failed": failed, "timings": timings,
               "warnings": {r.study_id: r.warnings for r in results if r.warnings},
               "skipped_files": {r.study_id: r.skipped for r in results if r.skipped}, **(extra or {})}
    if results:  # an empty submission.csv would pass for a result; report.json alone says what went wrong
        write_rows_csv_atomic(Path(out) / "submission.csv", vocab.SUBMISSION_COLUMNS,
                              (row for res in results for row in _row_values(res)))
        write_predictions(Path(out) / "predictions.json", results, header.get("model", {}), failed)
    atomic_write_text(Path(out) / "report.json", json.dumps(summary, indent=1))
    return summary
