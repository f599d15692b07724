"""`spinegrade listen`: a DICOM Storage SCP that grades each study it receives and sends the SR back.

Flow: a PACS C-STOREs a study's MR instances -> each is written to the spool (see `spool`) -> when no
association is delivering the study any more and nothing has arrived for `quiet_seconds`, it is complete ->
unless its images are byte for byte those graded before, one of `jobs` grader processes grades it with the
run's `Predictor`, writes the Comprehensive 3D SR (`report.sr.write_sr`) and, with `key_images`, each key
image with its points drawn as a Secondary Capture image (`report.sc`), and the node C-STOREs them to the
destination. Grading runs in worker processes, not threads: pynetdicom's association threads poll their sockets
every millisecond, and in one process their GIL traffic slowed grading twenty-fold (measured: 0.8 s -> 20 s
per study with ten associations open); a worker that crashes on a bad file also leaves the node serving.

Bounds: images go to disk as they arrive (nothing is held in memory), at most `jobs` studies are in memory at
once, and the spool holds at most `max_store_mb`: graded studies' images are dropped first (their state stays,
so an unchanged resend is still recognised), then new instances are refused with "out of resources", which
a PACS retries later. Logs name AE titles, addresses and Study Instance UIDs, never patient identifiers.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import SpinegradeError, in_words
from ..workers import close_pool
from . import spool as sp
from .send import Destination, NodeError, send_files

log = logging.getLogger("spinegrade.node")

# The MR image classes spinegrade reads; an association proposing anything else is refused for that class.
MR_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.4",  # Legacy Converted Enhanced MR Image Storage
)
# What a PACS keeps beside the MR images of a study, our own SR included: accepted so that sending a whole study
# does not fail on them, and dropped (never filed, never graded). Any other class is refused at negotiation.
COMPANION_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22", "1.2.840.10008.5.1.4.1.1.88.33",
    "1.2.840.10008.5.1.4.1.1.88.34",  # Basic Text, Enhanced, Comprehensive, Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
)
# What the readers decode: uncompressed, RLE, JPEG (baseline, extended, lossless), JPEG-LS, JPEG 2000.
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.5",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
)
VERIFICATION = "1.2.840.10008.1.1"
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110
KEY_IMAGE_PREFIX = "key_"  # out/key_<view>.dcm: the Secondary Capture key images of the last grading


@dataclass
class NodeConfig:
    """Everything `spinegrade listen` is told (see the command's help)."""

    model: Path | None  # a run or a bundled model's name; None: the bundled models
    destination: Destination
    store: Path
    port: int = 11112
    host: str = "127.0.0.1"
    ae_title: str = "SPINEGRADE"
    quiet_seconds: float = 30.0
    jobs: int = 1
    max_store_mb: float = 20_000
    discard_after: float = 24 * 3600  # seconds an interrupted study waits for its resend
    device: str = "cpu"
    keep_images: bool = True  # keep graded images (until the store is full) so a partial resend regrades in full
    key_images: bool = False  # send the annotated key images as Secondary Capture besides the SR
    # seconds an association may stay silent before the node aborts it (pynetdicom's default is 60; a modality
    # that sends images as they are acquired pauses longer, and a loaded machine can too)
    idle_timeout: float = 300.0


class Node:
    """The running node: SCP, scheduler and graders. `start()`, then `stop()` (or use `listen`)."""

    def __init__(self, cfg: NodeConfig):
        self.cfg = cfg
        self.spool = sp.Spool(cfg.store)
        self._pool = None
        self._pool_lock = threading.Lock()  # not self._lock: starting a process must not hold up the SCP
        self._lock = threading.RLock()
        self._states: dict[str, sp.StudyState] = {}
        self._last: dict[str, float] = {}  # study key -> monotonic time of its last instance or transition
        self._assoc_studies: dict[int, set[str]] = {}  # association id -> studies it delivered to
        self._released: set[int] = set()
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._server = None
        self.gradings = 0  # studies graded since start (tests and logs)
        self._active = 0
        self.peak_active = 0  # most studies graded at the same time: never above cfg.jobs

    # --- life cycle ---------------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the model, recover the spool, start the graders and the DICOM server (returns at once)."""
        from pynetdicom import AE, evt

        self._start_pool()
        self._recover()
        for i in range(max(1, self.cfg.jobs)):
            self._threads.append(threading.Thread(target=self._grade_loop, name=f"grader-{i}", daemon=True))
        self._threads.append(threading.Thread(target=self._schedule_loop, name="scheduler", daemon=True))
        for t in self._threads:
            t.start()
        ae = AE(ae_title=self.cfg.ae_title)
        for cls in MR_CLASSES + COMPANION_CLASSES:
            ae.add_supported_context(cls, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(VERIFICATION)
        ae.maximum_associations = 16
        ae.network_timeout = self.cfg.idle_timeout
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_ACCEPTED, self._on_accepted),
                    (evt.EVT_RELEASED, self._on_released), (evt.EVT_CONN_CLOSE, self._on_closed),
                    (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_ABORTED, self._on_aborted)]
        try:
            self._server = ae.start_server((self.cfg.host, self.cfg.port), block=False, evt_handlers=handlers)
        except OSError as e:
            self.stop()
            raise NodeError(f"cannot listen on {self.cfg.host}:{self.cfg.port}: {e.strerror or e}") from None
        log.info("spinegrade %s node %s listening on %s:%d; results go to %s; store %s", __version__,
                 self.cfg.ae_title, self.cfg.host, self.cfg.port, self.cfg.destination, self.cfg.store)

    def stop(self, wait: float = 60.0) -> None:
        """Stop accepting associations, let a grading in progress finish (up to `wait` s), persist state."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        self._stop.set()
        for _ in self._threads:
            self._queue.put(None)
        deadline = time.monotonic() + wait
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        self._threads = []
        if self._pool is not None:
            close_pool(self._pool)
            self._pool = None
        log.info("node %s stopped", self.cfg.ae_title)

    def grader_pids(self) -> list[int]:
        """Process ids of the grader processes (for memory checks)."""
        return list(getattr(self._pool, "_processes", None) or {})

    def state(self, study_uid: str) -> sp.StudyState | None:
        with self._lock:
            return self._states.get(sp.safe_name(study_uid))

    # --- DICOM events (pynetdicom's threads, one per association) -------------------------------------------
    def _on_accepted(self, event) -> None:
        a = event.assoc
        log.info("association %d from %s (%s:%s) accepted", a.native_id or 0, a.requestor.ae_title,
                 a.requestor.address, a.requestor.port)
        with self._lock:
            self._assoc_studies[id(a)] = set()

    def _on_rejected(self, event) -> None:
        a = event.assoc
        log.info("association from %s (%s) rejected", a.requestor.ae_title, a.requestor.address)

    def _on_released(self, event) -> None:
        with self._lock:
            self._released.add(id(event.assoc))

    def _on_aborted(self, event) -> None:
        """Say which side ended an association abnormally: the node after `idle_timeout` s of silence, or the
        peer (an A-ABORT, or the connection lost)."""
        a = event.assoc
        if a.dul.idle_timer_expired():
            log.warning("association %d from %s: silent for %.0f s; the node aborted it", a.native_id or 0,
                        a.requestor.ae_title, self.cfg.idle_timeout)
        else:
            log.warning("association %d from %s was aborted by the peer or lost", a.native_id or 0,
                        a.requestor.ae_title)

    def _on_closed(self, event) -> None:
        """The connection ended: its studies settle when it was released, else they were interrupted."""
        key_a = id(event.assoc)
        with self._lock:
            studies = self._assoc_studies.pop(key_a, None)
            released = key_a in self._released
            self._released.discard(key_a)
            if studies is None:
                return
            open_keys = set().union(*self._assoc_studies.values()) if self._assoc_studies else set()
            for key in sorted(studies):
                st = self._states.get(key)
                if st is None or key in open_keys or st.state != sp.RECEIVING:
                    continue
                self._transition(key, st, sp.SETTLING if released else sp.INTERRUPTED)
                if not released:
                    log.warning("study %s: association broke off mid-study; waiting for it to be sent again",
                                st.study_uid)
        log.info("association %s: %d studies", "released" if released else "broke off", len(studies))

    def _on_store(self, event) -> int:
        """File one instance under its study; a status code for the sender."""
        if event.context.abstract_syntax not in MR_CLASSES:
            log.info("dropped an instance of class %s (not an MR image)", event.context.abstract_syntax)
            return 0x0000
        try:
            ds = event.dataset
            study_uid = str(ds.get("StudyInstanceUID", "") or "")
            sop_uid = str(ds.get("SOPInstanceUID", "") or "") or str(event.request.AffectedSOPInstanceUID or "")
            series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        except Exception as e:  # an undecodable dataset: refuse it, keep the association
            log.warning("refused an instance that could not be parsed: %s", type(e).__name__)
            return STATUS_CANNOT_UNDERSTAND
        if not study_uid or not sop_uid or not series_uid:
            log.warning("refused an instance without Study, Series or SOP Instance UID")
            return STATUS_CANNOT_UNDERSTAND
        data = event.encoded_dataset()
        key = sp.safe_name(study_uid)
        with self._lock:
            if not self._make_room(len(data)):
                log.warning("store full (%.0f MB): refused an instance of study %s", self.cfg.max_store_mb,
                            study_uid)
                return STATUS_OUT_OF_RESOURCES
            st = self._states.get(key) or self.spool.load(key)
            if st is None:
                st = sp.StudyState(study_uid=study_uid, state="new")
                log.info("study %s: first instance", study_uid)
            self._states[key] = st
            if st.state != sp.RECEIVING:
                if st.state in (sp.GRADED, sp.FAILED):
                    log.info("study %s received again", study_uid)
                self._transition(key, st, sp.RECEIVING)
            self._assoc_studies.setdefault(id(event.assoc), set()).add(key)
            self._last[key] = time.monotonic()
        try:
            delta = self.spool.write_instance(key, sp.safe_name(series_uid), sp.safe_name(sop_uid), data)
            with self._lock:
                self.spool.bytes_used += delta
        except OSError as e:
            log.error("study %s: could not write an instance: %s", study_uid, e.strerror or e)
            return STATUS_OUT_OF_RESOURCES
        return 0x0000

    def _make_room(self, n: int) -> bool:
        """Drop graded studies' images, oldest first, until `n` more bytes fit; False when they cannot."""
        limit = self.cfg.max_store_mb * 2**20
        if self.spool.bytes_used + n <= limit:
            return True
        done = sorted((st.updated, k) for k, st in self._states.items() if st.state in (sp.GRADED, sp.FAILED)
                      and self.spool.images(k).exists())
        for _, k in done:
            self.spool.drop_images(k)
            log.info("store full: dropped the graded images of study %s", self._states[k].study_uid)
            if self.spool.bytes_used + n <= limit:
                return True
        return False

    # --- state --------------------------------------------------------------------------------------------
    def _transition(self, key: str, st: sp.StudyState, new: str, **changes) -> None:
        st.state, st.updated = new, time.time()
        for k, v in changes.items():
            setattr(st, k, v)
        self._last[key] = time.monotonic()
        self.spool.save(key, st)

    def _recover(self) -> None:
        """Take up the spool a previous node left: nothing half received is graded, nothing complete is lost."""
        for key in self.spool.keys():
            st = self.spool.load(key)
            if st is None:  # killed between its first instance and its first state write
                if not self.spool.images(key).exists():
                    continue
                st = sp.StudyState(study_uid=key, state=sp.RECEIVING)
            self._states[key] = st
            self._last[key] = time.monotonic()
            if st.state == sp.RECEIVING:
                self._transition(key, st, sp.INTERRUPTED)
                log.warning("study %s was being received when the node stopped: waiting for it to be sent "
                            "again (discarded after %.0f s)", st.study_uid, self.cfg.discard_after)
            elif st.state in (sp.QUEUED, sp.GRADING):
                self._transition(key, st, sp.QUEUED)
                self._queue.put(key)
                log.info("study %s was complete when the node stopped: queued", st.study_uid)
            elif st.state == sp.GRADED and not st.sr_sent:
                self._queue.put(key)
        if self._states:
            log.info("recovered %d studies from %s", len(self._states), self.spool.root)

    # --- scheduler ----------------------------------------------------------------------------------------
    def _schedule_loop(self) -> None:
        while not self._stop.wait(min(0.25, self.cfg.quiet_seconds / 4 or 0.25)):
            try:
                self._schedule_once()
            except Exception:  # the scheduler must outlive any one study's problem
                log.exception("scheduler error")

    def _schedule_once(self) -> None:
        now, wall = time.monotonic(), time.time()
        with self._lock:
            open_keys = set().union(*self._assoc_studies.values()) if self._assoc_studies else set()
            due = [k for k, st in self._states.items() if st.state == sp.SETTLING and k not in open_keys
                   and now - self._last.get(k, 0) >= self.cfg.quiet_seconds]
            stale = [k for k, st in self._states.items() if st.state == sp.INTERRUPTED
                     and wall - st.updated >= self.cfg.discard_after and k not in open_keys]
        for key in stale:
            with self._lock:
                st = self._states.pop(key)
                self.spool.discard(key)
            log.warning("study %s discarded: incomplete since it broke off (never graded)", st.study_uid)
        for key in due:
            fp, n = self.spool.fingerprint(key)  # outside the lock: hashing takes a moment
            with self._lock:
                st = self._states[key]
                if st.state != sp.SETTLING or now < self._last.get(key, 0):  # more arrived meanwhile
                    continue
                if fp == st.fingerprint and st.gradings:
                    self._transition(key, st, sp.GRADED if not st.error else sp.FAILED)
                    log.info("study %s complete (%d instances), unchanged since its last grading: not graded "
                             "again", st.study_uid, n)
                    continue
                self._transition(key, st, sp.QUEUED)
            log.info("study %s complete (%d instances): queued", st.study_uid, n)
            self._queue.put(key)

    # --- graders ------------------------------------------------------------------------------------------
    def _grade_loop(self) -> None:
        while True:
            key = self._queue.get()
            if key is None or self._stop.is_set():
                return
            try:
                self._grade(key)
            except Exception:
                log.exception("grader error on %s", key)

    def _grade(self, key: str) -> None:
        with self._lock:
            st = self._states.get(key)
            resend = st is not None and st.state == sp.GRADED and not st.sr_sent  # recovered: SR never arrived
            if st is None or (st.state != sp.QUEUED and not resend):
                return
            if not resend:
                self._transition(key, st, sp.GRADING)
        if resend:
            return self._send(key, st)
        fp, _ = self.spool.fingerprint(key)
        results_before = self.spool.out_bytes(key)
        t0 = time.perf_counter()
        with self._lock:
            self._active += 1
            self.peak_active = max(self.peak_active, self._active)
        try:
            sr_path = self._grade_files(key)
        except Exception as e:  # a broken study is logged and left; the node serves on
            msg = in_words(e)
            # said before the state changes: whoever sees the study failed finds the reason in the log
            log.error("study %s: grading failed, no SR sent: %s", st.study_uid, msg)
            with self._lock:
                if st.state == sp.GRADING:
                    self._transition(key, st, sp.FAILED, fingerprint=fp, gradings=st.gradings + 1, error=msg,
                                     sr_sent=False)
            return
        finally:
            with self._lock:
                self._active -= 1
                self.spool.bytes_used += self.spool.out_bytes(key) - results_before
        with self._lock:
            self.gradings += 1
            current = st.state == sp.GRADING
            if current:
                self._transition(key, st, sp.GRADED, fingerprint=fp, gradings=st.gradings + 1, error="",
                                 sr_sent=False)
        if not current:  # instances arrived while it was graded: the complete study is graded next
            log.info("study %s changed while it was graded: its SR waits for the next grading", st.study_uid)
            return
        log.info("study %s graded in %.1f s -> %s", st.study_uid, time.perf_counter() - t0, sr_path.name)
        self._send(key, st)

    def _start_pool(self) -> None:
        """Start the grader processes and wait until each has loaded the run (a bad run fails here)."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(max_workers=max(1, self.cfg.jobs),
                                         mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_worker_init,
                                         initargs=(_model_arg(self.cfg.model), self.cfg.device, os.getpid()))
        problems = {f.result() for f in [self._pool.submit(_worker_ready) for _ in range(max(1, self.cfg.jobs))]}
        problems.discard("")
        if problems:
            self._pool.shutdown()
            self._pool = None
            raise SpinegradeError(problems.pop())

    def _grade_files(self, key: str) -> Path:
        """Grade the study in a worker process; its SR path. A crashed worker is replaced."""
        from concurrent.futures.process import BrokenProcessPool

        out = self.spool.out(key)
        try:
            error, no_key_images = self._pool.submit(_grade_in_worker, str(self.spool.images(key)), key, str(out),
                                                     _model_arg(self.cfg.model), self.cfg.key_images).result()
        except BrokenProcessPool:
            with self._pool_lock:
                if self._pool is not None and getattr(self._pool, "_broken", False) and not self._stop.is_set():
                    close_pool(self._pool)
                    self._start_pool()
            raise SpinegradeError("the grader process died on this study (it was replaced)") from None
        if error:
            raise SpinegradeError(error)
        if no_key_images:
            log.warning("study %s: no key images (the SR is sent alone): %s", key, no_key_images)
        return out / "sr.dcm"

    def _send(self, key: str, st: sp.StudyState) -> None:
        out = self.spool.out(key)
        files = [out / "sr.dcm"] + (sorted(out.glob(f"{KEY_IMAGE_PREFIX}*.dcm")) if self.cfg.key_images else [])
        try:
            send_files(files, self.cfg.destination, calling_ae=self.cfg.ae_title)
        except (NodeError, OSError) as e:
            log.error("study %s: SR not delivered (kept in the store; retried at the next start): %s",
                      st.study_uid, e)
            return
        # said before the state changes: whoever sees the SR sent finds it in the log
        log.info("study %s: SR%s sent to %s", st.study_uid,
                 f" and {len(files) - 1} key images" if self.cfg.key_images else "", self.cfg.destination)
        with self._lock:
            st.sr_sent = True
            self.spool.save(key, st)
            if not self.cfg.keep_images and st.state == sp.GRADED:
                self.spool.drop_images(key)


def listen(cfg: NodeConfig) -> int:
    """Run a node until SIGINT or SIGTERM; returns 0 after a clean stop."""
    import signal

    node = Node(cfg)
    node.start()
    stop = threading.Event()

    def _handler(signum, _frame):
        log.info("signal %d: stopping", signum)
        stop.set()

    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    return 0


# --- grader processes -------------------------------------------------------------------------------------
_WORKER: dict = {}


def _model_arg(model: Path | None) -> str:
    """The model as it crosses to a grader process: its path or name, '' for the bundled models."""
    return "" if model is None else str(model)


def _worker_init(model: str, device: str, node: int | None = None) -> None:
    """In a grader process: end with the node (`node`: its pid; None in the node's own process), however it
    ends; load the run."""
    import signal

    from ..predict import Predictor
    from ..workers import end_with

    # the node's threads start graders (a crashed one's replacement): the kernel's parent-death signal, which
    # follows the starting thread, would take a grader down with a thread that ends first
    if node is not None:
        end_with(node, kernel=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the node stops its workers

    try:
        _WORKER["predictor"] = Predictor(Path(model) if model else None, device)
        _WORKER["error"] = ""
    except SpinegradeError as e:
        _WORKER["error"] = str(e)


def _worker_ready() -> str:
    return _WORKER.get("error", "the grader process did not start")


def _grade_in_worker(images: str, study_id: str, out: str, model: str,
                     with_key_images: bool = False) -> tuple[str, str]:
    """In a grader process: grade one study folder, write predictions.json, sr.dcm and (`with_key_images`)
    key_<view>.dcm into `out`. Returns (the error, why the key images were not made), each '' or in words
    (strings, so that any failure crosses the process boundary): key images that cannot be drawn cost
    themselves, not the SR."""
    from ..report.sr import write_sr
    from ..results import write_predictions

    try:
        pred = _WORKER["predictor"]
        study = pred.read(Path(images), study_id=study_id)
        result = pred.predict_loaded(study)
        out_dir = Path(out)
        write_predictions(out_dir / "predictions.json", [result],
                          pred.describe(), [])
        write_sr(result, study, out_dir / "sr.dcm")
        for old in out_dir.glob(f"{KEY_IMAGE_PREFIX}*.dcm"):  # a regrading's views can differ from the last
            old.unlink()
        if with_key_images:
            from ..report.overlays import key_images
            from ..report.sc import write_key_images_sc

            try:
                write_key_images_sc(key_images(study, result), study, out_dir, prefix=KEY_IMAGE_PREFIX)
            except Exception as e:  # noqa: BLE001 - the SR stands without its key images
                for made in out_dir.glob(f"{KEY_IMAGE_PREFIX}*.dcm"):  # none of a partial set is sent
                    made.unlink()
                return "", in_words(e)
        return "", ""
    except Exception as e:  # any failure of one study is reported, never raised into the node
        return in_words(e), ""
