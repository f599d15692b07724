"""A local web page to open a study and look: upload a zipped study (or pick one), wait, read the grades.

Design:
- The upload is the raw request body (`POST /api/upload`, the file name in an `X-Filename` header, URL-encoded,
  so that access logs do not show it), streamed to disk while counting, so the size limit holds before the
  whole body is in memory (a multipart form is parsed in full first).
- A zip is checked entry by entry before anything is written: absolute paths, `..`, symbolic links and
  more unpacked bytes than allowed reject the whole upload with a message naming the entry; a damaged zip
  (bad CRC, sizes that lie, an unknown method, a password) is refused the same way. The unpacked study's
  headers are read before it is queued, so a zip with no usable image (a forged size, garbage) is refused
  at once. Every refusal removes the upload and what was unpacked, and the job is not kept.
- The server holds at most `max_disk_bytes` on disk: finished jobs are removed, oldest first, to make room
  for an upload; a failed job keeps its message and no files.
- Grading runs in one background thread (one study at a time: the model and the study share the memory);
  the page polls `/api/jobs/<id>` and shows the stage. The study is read and decoded in a reader process of its
  own (`read_apart`), as batch `predict` reads: a decoder that crashes on a hostile file ends that job with a
  message, not the server, and a panicking decoder's text stays off the server's log.
- Logs name job ids and study folder names only, never a patient name or id from the files.
- With a DICOMweb server configured (`dicomweb`), the page also lists its studies (QIDO-RS: Study Instance
  UID, date, description, number of series; patient names are neither asked for nor shown); grading one
  retrieves its MR images by WADO-RS into the job's folder (in the grader thread, under the same disk bound
  as an unpacked upload), grades them like an upload, and stores the SR back by STOW-RS when `stow` is set.
- The predictor is any callable `study folder -> (StudyResult, Study)`: the trained model (`model_predictor`),
  or the study's own ground-truth labels from a dataset folder (`label_predictor`), to look at what was
  labelled. The Study it read (with pixels) draws the key images and references the SR: read once per job.
"""

from __future__ import annotations

import html
import json
import logging
import re
import shutil
import stat
import tempfile
import threading
import time
import uuid
import zipfile
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote

# module level, not inside create_app: FastAPI resolves the routes' (string) annotations in module globals
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from .. import __version__, vocab
from ..errors import DataError, SpinegradeError, in_words
from ..io.types import Study
from ..report.html import grade_table_html, observations_html, page, series_table_html, write_report
from ..report.overlays import key_images, save_key_images, why_no_key_images
from ..results import StudyResult

log = logging.getLogger("spinegrade.serve")

Predictor = Callable[[Path], tuple[StudyResult, Study]]
DEFAULT_MAX_UPLOAD = 500 * 2**20
DEFAULT_MAX_DISK = 10 * 2**30  # everything the server keeps (uploads, unpacked studies, results)
_UNPACK_FACTOR = 4  # a zip of DICOMs (already compressed pixels) unpacks to a few times its size at most
_CHUNK = 1 << 20
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
# the condition switch of the result page: view name -> (label, conditions drawn)
VIEWS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "all": ("All conditions", None),
    **{c: (vocab.CONDITION_NAMES[c], (c,)) for c in vocab.CONDITIONS},
}


class UploadRejected(SpinegradeError):
    """An upload that is refused as a whole (not a zip, too large, an entry escaping the folder)."""


@dataclass
class Job:
    id: str
    name: str  # study folder name: the only study identifier that appears in logs
    folder: Path  # the job's working folder (images, report, SR)
    study_path: Path
    status: str = "queued"  # queued | running | done | error
    stage: str = "waiting for the grader"
    progress: float = 0.0
    message: str = ""
    result: StudyResult | None = None
    images: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # view -> [(file, title)]
    has_sr: bool = False
    seconds: float = 0.0
    study_uid: str = ""  # set for a study retrieved from the DICOMweb server
    stored: str = ""  # where the SR was stored by STOW-RS ("" when it was not)
    store_error: str = ""  # why STOW-RS failed

    def public(self) -> dict:
        return {"job": self.id, "study": self.name, "status": self.status, "stage": self.stage,
                "progress": round(self.progress, 3), "message": self.message, "url": f"/jobs/{self.id}",
                "study_uid": self.study_uid, "stored": self.stored, "store_error": self.store_error}


# --- predictors ----------------------------------------------------------------------------------------

def read_apart(study_path: Path, descriptions: dict | None = None) -> Study:
    """Read a study in a reader process of its own, as batch `predict` does: a decoder that crashes (or the
    out-of-memory killer) costs this job, not the server, and a panicking decoder's message stays off the
    server's log (the reader has one working thread; the server has several). Readers come from a fork server,
    not a fork of this process: a thread of the web server may hold a lock at the moment of a fork."""
    from ..batch import read_ahead
    from ..predict import StudyJob

    ((_, study, _),) = read_ahead([StudyJob(study_path.name, study_path, descriptions)], readers=1,
                                  start="forkserver")
    if isinstance(study, BaseException):
        raise study
    return study


def model_predictor(run_dir: str | Path | None = None, device: str = "cpu",
                    foramina: str | Path | None = None) -> Predictor:
    """Grade with a trained run, a bundled model, or (None) the bundled models; the networks are loaded once, on
    the first job."""
    from ..slicemodel.bundled import BUNDLED_DIR

    if run_dir is not None and not Path(run_dir).is_dir() and not (BUNDLED_DIR / str(run_dir)).is_dir():
        raise SpinegradeError(f"{run_dir}: model run folder not found")
    loaded: list = []

    def predict(study_path: Path) -> tuple[StudyResult, Study]:
        from ..predict import Predictor as ModelPredictor

        if not loaded:
            loaded.append(ModelPredictor(run_dir, device, foramina))
        study = read_apart(Path(study_path))
        return loaded[0].predict_loaded(study), study

    return predict


def label_predictor(dataset_root: str | Path) -> Predictor:
    """Show a study's ground truth: its points and grades from a dataset folder in the RSNA layout.

    The study is found by its folder name (the study id), as in `train_images/<study_id>/`.
    """
    from ..data.rsna import RsnaDataset

    ds = RsnaDataset(dataset_root)

    def predict(study_path: Path) -> tuple[StudyResult, Study]:
        from ..results import study_result_from_labels

        name = study_path.name
        if not name.isdigit():
            raise DataError(f"study folder {name!r} is not a study id of {ds.root.name}")
        try:
            labels = dict(zip(vocab.TARGETS, ds.label_vector(name), strict=True))
        except KeyError:
            raise DataError(f"study {name} has no labels in {ds.root.name}") from None
        study = read_apart(study_path, descriptions=ds.descriptions_for(name) or None)
        return study_result_from_labels(study, ds.coords_for(name), labels), study

    return predict


# --- zip handling --------------------------------------------------------------------------------------

def _member_problem(info: zipfile.ZipInfo, dest: Path) -> str | None:
    name = info.filename
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "climbs out of the folder with '..'"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "is a symbolic link"
    target = (dest / name).resolve()
    if target != dest and dest not in target.parents:
        return "would be written outside the study folder"
    return None


def safe_extract(zip_path: Path, dest: Path, max_bytes: int) -> None:
    """Unpack a zip into `dest` after checking every entry; UploadRejected names the first bad one."""
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        raise UploadRejected("the upload is not a zip file (zip the study folder and upload that)") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            problem = _member_problem(info, dest)
            if problem:
                raise UploadRejected(f"zip entry {info.filename!r} {problem}: upload rejected")
        if sum(i.file_size for i in infos) > max_bytes:
            raise UploadRejected(f"the zip unpacks to more than {max_bytes / 2**20:.0f} MB: upload rejected")
        written = 0
        for info in infos:
            if info.filename.startswith("__MACOSX/"):
                continue
            target = dest / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)  # the sizes in the directory can lie; count what comes out
                        if written > max_bytes:
                            raise UploadRejected(f"the zip unpacks to more than {max_bytes / 2**20:.0f} MB: "
                                                 "upload rejected")
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # bad CRC, cut or lying data
                raise UploadRejected(f"zip entry {info.filename!r} is damaged ({e}): upload rejected") from None
            except (NotImplementedError, RuntimeError) as e:  # an unknown compression method, a password
                raise UploadRejected(f"zip entry {info.filename!r} cannot be unpacked ({e}): upload rejected") \
                    from None


def _study_root(folder: Path) -> Path:
    """The study folder inside an unpacked zip: its single top-level folder, or the unpacked folder itself."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def _check_study(root: Path) -> None:
    """Read the unpacked study's headers (quick, nothing decoded): UploadRejected when no file is a usable
    image, with the reasons and without the server's paths."""
    from ..io.dicom import load_study

    try:
        load_study(root, load_pixels=False)
    except DataError as e:
        raise UploadRejected(str(e).replace(str(root), root.name)) from None


def _safe_name(filename: str) -> str:
    stem = Path(filename.replace("\\", "/")).name
    stem = stem[:-4] if stem.lower().endswith(".zip") else stem
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "study"


# --- the app -------------------------------------------------------------------------------------------

class Viewer:
    """Jobs and their worker: what the routes share."""

    def __init__(self, predictor: Predictor, work_dir: Path, studies_dir: Path | None, max_upload: int,
                 model_info: dict, max_disk: int = DEFAULT_MAX_DISK, dicomweb: str | None = None,
                 stow: str | None = None, max_study: int | None = None):
        self.max_disk = max_disk
        self.dicomweb, self.stow = dicomweb, stow
        self.max_study = max_study or _UNPACK_FACTOR * max_upload  # bytes of one retrieved study
        self.predictor = predictor
        self.work_dir = work_dir
        self.studies_dir = studies_dir
        self.max_upload = max_upload
        self.model_info = model_info
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spinegrade-grader")

    def new_job(self, name: str) -> Job:
        jid = uuid.uuid4().hex[:12]
        folder = self.work_dir / jid
        folder.mkdir(parents=True)
        job = Job(id=jid, name=name, folder=folder, study_path=folder)
        with self._lock:
            self.jobs[jid] = job
        return job

    def drop(self, job: Job) -> None:
        """Forget a job and remove its files."""
        with self._lock:
            self.jobs.pop(job.id, None)
        shutil.rmtree(job.folder, ignore_errors=True)

    def disk_used(self) -> int:
        return sum(f.stat().st_size for f in self.work_dir.rglob("*") if f.is_file() and not f.is_symlink())

    def make_room(self, need: int) -> bool:
        """Remove finished jobs, oldest first, until `need` more bytes fit under the disk bound."""
        used = self.disk_used()
        with self._lock:
            finished = [j for j in self.jobs.values() if j.status in ("done", "error")]
        for job in finished:  # dicts keep insertion order: oldest first
            if used + need <= self.max_disk:
                break
            self.drop(job)
            log.info("job %s: removed to make room for an upload", job.id)
            used = self.disk_used()
        return used + need <= self.max_disk

    def start(self, job: Job, study_path: Path) -> None:
        job.study_path = study_path
        self._pool.submit(self._run, job)

    def study_names(self) -> list[str]:
        if self.studies_dir is None or not self.studies_dir.is_dir():
            return []
        return sorted(p.name for p in self.studies_dir.iterdir() if p.is_dir() and not p.name.startswith("."))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _stage(self, job: Job, stage: str, progress: float) -> None:
        job.stage, job.progress = stage, progress

    def _run(self, job: Job) -> None:
        t0 = time.time()
        job.status = "running"
        if job.study_uid and not self._retrieve(job):
            return
        log.info("job %s: grading study folder %r", job.id, job.name)
        try:
            self._stage(job, "reading and grading the study", 0.15)
            result, study = self.predictor(job.study_path)
            self._stage(job, "drawing the key images", 0.6)
            images_dir = job.folder / "images"
            drawn: dict[str, list] = {}
            try:
                for view, (_, conditions) in VIEWS.items():
                    imgs = drawn[view] = key_images(study, result, conditions)
                    paths = save_key_images(imgs, images_dir, prefix=f"{view}_")
                    job.images[view] = [(p.name, img.title) for p, img in zip(paths, imgs, strict=True)]
            except Exception as e:  # noqa: BLE001 - a drawing failure costs the key images, not the grades
                job.images.clear()
                result.warnings.append(why_no_key_images(e))
                if not isinstance(e, SpinegradeError):
                    log.exception("job %s: the key images of study folder %r failed", job.id, job.name)
            self._stage(job, "writing the report", 0.85)
            write_report([result], job.folder / "report.html", model=self.model_info, studies={result.study_id: study},
                         images={result.study_id: drawn["all"]} if "all" in drawn else None)
            self._stage(job, "writing the DICOM SR", 0.93)
            try:
                from ..report.sr import write_sr

                write_sr(result, study, job.folder / "sr.dcm")
                job.has_sr = True
            except Exception as e:  # noqa: BLE001 - the grades stand without their SR, as in `predict`
                result.warnings.append(f"no DICOM SR: {in_words(e)}")
            if job.study_uid and self.stow and job.has_sr:
                self._stage(job, "storing the SR on the DICOMweb server", 0.97)
                self._store(job)
            job.result = result
            job.seconds = time.time() - t0
            job.status, job.stage, job.progress = "done", "done", 1.0
            log.info("job %s: study folder %r done in %.1f s", job.id, job.name, job.seconds)
        except SpinegradeError as e:
            # the files go before the status says so (a page or a test may look at once); the message stays
            shutil.rmtree(job.folder, ignore_errors=True)
            job.message = "Could not read this study: " + str(e).replace(str(job.folder) + "/", "")
            job.status, job.stage = "error", "failed"
            log.warning("job %s: study folder %r could not be read (%s)", job.id, job.name, type(e).__name__)
        except Exception:  # noqa: BLE001 - a bug must end the job with a message, not hang the page
            log.exception("job %s: study folder %r failed", job.id, job.name)
            shutil.rmtree(job.folder, ignore_errors=True)
            job.message = "Internal error while grading this study (see the server log)."
            job.status, job.stage = "error", "failed"

    def _retrieve(self, job: Job) -> bool:
        """WADO-RS: the study's MR images into the job's folder; False (the job failed, with a message) if not."""
        from ..node.dicomweb import fetch_study

        self._stage(job, "retrieving the study from the DICOMweb server", 0.05)
        try:
            n = fetch_study(self.dicomweb, job.study_uid, job.study_path, max_bytes=self.max_study)
        except SpinegradeError as e:
            shutil.rmtree(job.folder, ignore_errors=True)  # before the status says so: the page may look at once
            job.message = "Could not retrieve this study: " + str(e)
            job.status, job.stage = "error", "failed"
            log.warning("job %s: study %s could not be retrieved (%s)", job.id, job.study_uid, type(e).__name__)
            return False
        log.info("job %s: retrieved %d instances of study %s", job.id, n, job.study_uid)
        return True

    def _store(self, job: Job) -> None:
        """STOW-RS the job's SR; a refusal is shown on the page (the grades stand)."""
        from ..node.dicomweb import stow

        try:
            stow(self.stow, [job.folder / "sr.dcm"])
        except SpinegradeError as e:
            job.store_error = str(e)
            log.warning("job %s: SR of study %s not stored: %s", job.id, job.study_uid, e)
            return
        job.stored = self.stow
        log.info("job %s: SR of study %s stored on %s", job.id, job.study_uid, self.stow)


def create_app(predictor: Predictor, *, studies_dir: str | Path | None = None, work_dir: str | Path | None = None,
               max_upload_bytes: int = DEFAULT_MAX_UPLOAD, max_unpacked_bytes: int | None = None,
               max_disk_bytes: int = DEFAULT_MAX_DISK, model_info: dict | None = None, dicomweb: str | None = None,
               stow: str | None = None):
    """The FastAPI app. `work_dir` holds uploads and results (a temporary folder, removed at shutdown,
    when not given); `max_unpacked_bytes` defaults to a few times the upload limit and bounds a retrieved
    study too; `max_disk_bytes` bounds all the server keeps in `work_dir`. `dicomweb` is a DICOMweb root URL
    whose studies the page lists and grades; `stow` one where their SRs are stored."""
    if stow and not dicomweb:
        raise SpinegradeError("stow goes with dicomweb: the SR of an uploaded study has no study on the server")
    tmp = None if work_dir is not None else tempfile.TemporaryDirectory(prefix="spinegrade-serve-")
    work = Path(work_dir if work_dir is not None else tmp.name).resolve()
    work.mkdir(parents=True, exist_ok=True)
    max_unpacked = int(max_unpacked_bytes or _UNPACK_FACTOR * max_upload_bytes)
    viewer = Viewer(predictor, work, Path(studies_dir).resolve() if studies_dir else None, int(max_upload_bytes),
                    dict(model_info or {}), int(max_disk_bytes), dicomweb=dicomweb, stow=stow,
                    max_study=max_unpacked)

    @asynccontextmanager
    async def lifespan(_app):
        yield
        viewer.shutdown()
        if tmp is not None:
            tmp.cleanup()

    app = FastAPI(title="spinegrade viewer", version=__version__, lifespan=lifespan, docs_url=None,
                  redoc_url=None)
    app.state.viewer = viewer

    def get_job(job_id: str) -> Job:
        job = viewer.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such job")
        return job

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return _index_page(viewer)

    @app.post("/api/upload", status_code=202)
    async def upload(request: Request) -> dict:
        filename = unquote(request.headers.get("x-filename", "")) or "study.zip"
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > viewer.max_upload:
            raise HTTPException(413, _too_large(viewer.max_upload))
        expected = int(declared) if declared and declared.isdigit() else viewer.max_upload
        if not await run_in_threadpool(viewer.make_room, expected + min(max_unpacked, _UNPACK_FACTOR * expected)):
            raise HTTPException(503, "the server has no room for another study now: try again when the studies "
                                     "being graded are done")
        job = viewer.new_job(_safe_name(filename))
        zip_path = job.folder / "upload.zip"
        size = 0
        try:
            with open(zip_path, "wb") as fh:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > viewer.max_upload:
                        raise HTTPException(413, _too_large(viewer.max_upload))
                    fh.write(chunk)
            if size == 0:
                raise UploadRejected("the upload is empty")
            dest = job.folder / "upload" / job.name
            await run_in_threadpool(safe_extract, zip_path, dest, max_unpacked)
            zip_path.unlink()
            root = _study_root(dest)
            await run_in_threadpool(_check_study, root)
        except BaseException as e:  # every way out of here but success leaves no files and no job
            viewer.drop(job)
            log.info("upload refused (%s)", type(e).__name__)
            if isinstance(e, UploadRejected):
                raise HTTPException(400, str(e)) from None
            if isinstance(e, OSError):
                raise HTTPException(507, "the server could not store this upload") from None
            raise
        job.name = root.name
        log.info("job %s: received %.1f MB for study folder %r", job.id, size / 2**20, job.name)
        viewer.start(job, root)
        return job.public()

    @app.post("/api/open", status_code=202)
    def open_study(name: str) -> dict:
        if name not in viewer.study_names():
            raise HTTPException(404, f"no study folder {name!r} in the configured studies folder")
        job = viewer.new_job(name)
        log.info("job %s: opening study folder %r", job.id, name)
        viewer.start(job, viewer.studies_dir / name)
        return job.public()

    def need_dicomweb() -> str:
        if not viewer.dicomweb:
            raise HTTPException(404, "no DICOMweb server is configured (spinegrade serve --dicomweb URL)")
        return viewer.dicomweb

    @app.get("/api/dicomweb/studies")
    def dicomweb_studies() -> dict:
        from ..node.dicomweb import list_studies

        url = need_dicomweb()
        try:
            studies = list_studies(url)
        except SpinegradeError as e:
            raise HTTPException(502, str(e)) from None
        return {"server": url, "stow": viewer.stow or "", "studies": studies}

    @app.post("/api/dicomweb/grade", status_code=202)
    def dicomweb_grade(study: str) -> dict:
        from ..node.spool import safe_name

        need_dicomweb()
        if len(study) > 64 or not _UID.fullmatch(study):
            raise HTTPException(400, "not a Study Instance UID (digits and dots, at most 64)")
        if not viewer.make_room(viewer.max_study):
            raise HTTPException(503, "the server has no room for another study now: try again when the studies "
                                     "being graded are done")
        job = viewer.new_job(safe_name(study))
        job.study_uid = study
        log.info("job %s: grading study %s of the DICOMweb server", job.id, study)
        viewer.start(job, job.folder / "study" / job.name)
        return job.public()

    @app.get("/api/jobs/{job_id}")
    def job_status(job_id: str) -> dict:
        return get_job(job_id).public()

    @app.get("/api/jobs/{job_id}/result")
    def job_result(job_id: str) -> JSONResponse:
        job = get_job(job_id)
        if job.result is None:
            raise HTTPException(409, f"job is {job.status}")
        return JSONResponse(json.loads(json.dumps(job.result.to_dict())))

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    def job_page(job_id: str) -> str:
        return _job_page(viewer, get_job(job_id))

    @app.get("/jobs/{job_id}/images/{name}")
    def job_image(job_id: str, name: str) -> FileResponse:
        job = get_job(job_id)
        known = {f for files in job.images.values() for f, _ in files}
        if name not in known:
            raise HTTPException(404, "no such image")
        return FileResponse(job.folder / "images" / name, media_type="image/png")

    @app.get("/jobs/{job_id}/report.html")
    def job_report(job_id: str) -> FileResponse:
        job = get_job(job_id)
        if job.status != "done":
            raise HTTPException(409, f"job is {job.status}")
        return FileResponse(job.folder / "report.html", media_type="text/html",
                            filename=f"spinegrade-{job.name}.html")

    @app.get("/jobs/{job_id}/sr.dcm")
    def job_sr(job_id: str) -> FileResponse:
        job = get_job(job_id)
        if not job.has_sr:
            raise HTTPException(404, "no DICOM SR for this job")
        return FileResponse(job.folder / "sr.dcm", media_type="application/dicom",
                            filename=f"spinegrade-{job.name}-sr.dcm")

    return app


def serve(predictor: Predictor, *, host: str = "127.0.0.1", port: int = 8000, **app_kwargs) -> None:
    """Run the viewer with uvicorn until interrupted (bound to this machine only unless `host` says otherwise)."""
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    uvicorn.run(create_app(predictor, **app_kwargs), host=host, port=port, log_level="info")


def _too_large(limit: int) -> str:
    return f"the upload is larger than the limit of {limit / 2**20:.0f} MB"


# --- pages ---------------------------------------------------------------------------------------------

_VIEWER_CSS = """
.card{background:#fff;border-radius:8px;padding:16px 20px;margin:16px 0;box-shadow:0 1px 3px rgba(0,0,0,.12)}
button{font-size:14px;padding:6px 14px;margin-left:6px}
#status{margin-top:12px;font-size:14px}
#status.error{color:#a10000;font-weight:600}
progress{width:320px}
.tabs input{position:absolute;opacity:0}
.tabs label{display:inline-block;padding:6px 12px;margin:0 4px 6px 0;border:1px solid #c9ccd4;border-radius:5px;
 cursor:pointer;background:#f7f8fa;font-size:13px}
.tabs input:checked+label{background:#1d2330;color:#fff;border-color:#1d2330}
.view{display:none}
"""


def _tab_css() -> str:
    return "".join(f"#v-{v}:checked~.views .view-{v}{{display:flex}}" for v in VIEWS)


_INDEX_JS = """
const statusBox = document.getElementById('status');
const bar = document.getElementById('bar');
function show(text, isError) {
  statusBox.textContent = text; statusBox.className = isError ? 'error' : '';
}
async function started(responsePromise) {
  const r = await responsePromise;
  let body = {};
  try { body = await r.json(); } catch (e) { body = {detail: 'server answered ' + r.status}; }
  if (!r.ok) { show(body.detail || ('server answered ' + r.status), true); return; }
  bar.hidden = false; poll(body.job);
}
async function poll(id) {
  const j = await (await fetch('/api/jobs/' + id)).json();
  bar.value = j.progress;
  if (j.status === 'done') { show('done', false); location.href = j.url; return; }
  if (j.status === 'error') { bar.hidden = true; show(j.message, true); return; }
  show(j.stage + '...', false);
  setTimeout(() => poll(id), 400);
}
document.getElementById('upload').addEventListener('click', () => {
  const f = document.getElementById('file').files[0];
  if (!f) { show('choose a zipped study first', true); return; }
  if (f.size > MAX_UPLOAD) {
    show('the file is larger than the limit of ' + Math.round(MAX_UPLOAD / 1048576) + ' MB', true);
    return;
  }
  show('uploading ' + f.name + '...', false);
  const headers = {'Content-Type': 'application/zip', 'X-Filename': encodeURIComponent(f.name)};
  started(fetch('/api/upload', {method: 'POST', body: f, headers: headers}));
});
document.querySelectorAll('button.grade-web').forEach(b => b.addEventListener('click', () => {
  show('retrieving study ' + b.dataset.study + '...', false);
  started(fetch('/api/dicomweb/grade?study=' + encodeURIComponent(b.dataset.study), {method: 'POST'}));
}));
const pick = document.getElementById('open');
if (pick) pick.addEventListener('click', () => {
  const name = document.getElementById('study').value;
  show('opening ' + name + '...', false);
  started(fetch('/api/open?name=' + encodeURIComponent(name), {method: 'POST'}));
});
"""


def _header(title: str, meta: str) -> str:
    return f'<header><h1>{html.escape(title)}</h1><div class="meta">{meta}</div></header>'


def _model_line(viewer: Viewer) -> str:
    m = viewer.model_info
    name = html.escape(f"{m.get('name', 'model')} {m.get('version', '')}".strip())
    return f"{name} &middot; spinegrade {__version__}"


def _index_page(viewer: Viewer) -> str:
    names = viewer.study_names()
    pick = ""
    if names:
        options = "".join(f'<option value="{html.escape(n)}">{html.escape(n)}</option>' for n in names)
        pick = (f'<div class="card"><h2>Or open a study from the server</h2><select id="study">{options}</select>'
                '<button id="open">Open</button></div>')
    body = (
        f'{_header("spinegrade viewer", _model_line(viewer))}<main>'
        '<div class="card"><h2>Upload a zipped study</h2>'
        '<p>A zip of one study folder (its series folders of DICOM files). '
        f'Limit {viewer.max_upload / 2**20:.0f} MB.</p>'
        '<input type="file" id="file" accept=".zip,application/zip"><button id="upload">Upload and grade</button>'
        '<div id="status"></div><progress id="bar" max="1" value="0" hidden></progress></div>'
        f'{pick}{_dicomweb_card(viewer)}</main><script>const MAX_UPLOAD = {viewer.max_upload};{_INDEX_JS}</script>'
    )
    return page("spinegrade viewer", body, head_extra=f"<style>{_VIEWER_CSS}</style>")


def _dicomweb_card(viewer: Viewer) -> str:
    """The DICOMweb server's studies, each with a button that grades it ('' without a server)."""
    from ..node.dicomweb import list_studies

    if not viewer.dicomweb:
        return ""
    where = html.escape(viewer.dicomweb)
    stow = (f"; the SR goes back to <code>{html.escape(viewer.stow)}</code>" if viewer.stow
            else "; the SR is not stored back (no --stow)")
    try:
        studies = list_studies(viewer.dicomweb)
    except SpinegradeError as e:
        return (f'<div class="card"><h2>Studies on the DICOMweb server</h2><p class="warn" id="dicomweb-error">'
                f'{html.escape(str(e))}</p></div>')
    rows = "".join(
        f'<tr><td>{html.escape(_date(s["date"]))}</td><td>{html.escape(s["description"])}</td>'
        f'<td>{s["series"]}</td><td><code>{html.escape(s["study_uid"])}</code></td>'
        f'<td><button class="grade-web" data-study="{html.escape(s["study_uid"])}">Grade</button></td></tr>'
        for s in studies)
    table = (f'<table id="dicomweb-studies"><tr><th>Date</th><th>Description</th><th>Series</th>'
             f'<th>Study Instance UID</th><th></th></tr>{rows}</table>' if studies else "<p>No studies.</p>")
    return (f'<div class="card"><h2>Studies on the DICOMweb server</h2><p><code>{where}</code>{stow}.</p>'
            f'{table}</div>')


def _date(d: str) -> str:
    return f"{d[:4]}-{d[4:6]}-{d[6:8]}" if len(d) == 8 and d.isdigit() else d


def _job_page(viewer: Viewer, job: Job) -> str:
    title = f"Study {job.name}"
    if job.status == "error":
        body = (f'{_header(title, _model_line(viewer))}<main><div class="card"><p id="error" class="warn">'
                f'{html.escape(job.message)}</p><p><a href="/">Open another study</a></p></div></main>')
        return page(title, body, head_extra=f"<style>{_VIEWER_CSS}</style>")
    if job.status != "done" or job.result is None:
        body = (f'{_header(title, _model_line(viewer))}<main><div class="card"><p id="working">'
                f'{html.escape(job.stage)}...</p></div></main>')
        return page(title, body, head_extra=f'<meta http-equiv="refresh" content="1"><style>{_VIEWER_CSS}</style>')
    r = job.result
    tabs, views = [], []
    for i, (view, (label, _)) in enumerate(VIEWS.items()):
        checked = " checked" if i == 0 else ""
        tabs.append(f'<input type="radio" name="view" id="v-{view}"{checked}><label for="v-{view}">'
                    f'{html.escape(label)}</label>')
        figs = "".join(
            f'<figure><img loading="lazy" src="/jobs/{job.id}/images/{html.escape(f)}" alt="{html.escape(t)}">'
            f'<figcaption>{html.escape(t)}</figcaption></figure>' for f, t in job.images.get(view, []))
        views.append(f'<div class="images view view-{view}" data-view="{view}">'
                     f'{figs or "<p>No points for this condition.</p>"}</div>')
    warn = "".join(f'<p class="warn">{html.escape(w)}</p>' for w in r.warnings)
    sr = f' &middot; <a href="/jobs/{job.id}/sr.dcm">DICOM SR</a>' if job.has_sr else ""
    if job.stored:
        warn += f'<p id="stored">SR stored on <code>{html.escape(job.stored)}</code> in study ' \
                f'<code>{html.escape(job.study_uid)}</code>.</p>'
    elif job.store_error:
        warn += f'<p class="warn" id="stored">SR not stored: {html.escape(job.store_error)}</p>'
    body = (
        f'{_header(title, _model_line(viewer) + f" &middot; graded in {job.seconds:.1f} s")}<main>'
        f'<div class="card"><h2>Grades</h2>{grade_table_html(r)}{observations_html(r)}{warn}'
        f'<p><a href="/jobs/{job.id}/report.html">Report (one HTML file)</a>{sr} &middot; '
        '<a href="/">Open another study</a></p></div>'
        f'<div class="card tabs"><h2>Key images</h2>{"".join(tabs)}<div class="views">{"".join(views)}</div></div>'
        f'<div class="card"><h2>Series used</h2>{series_table_html(r)}</div></main>'
    )
    return page(title, body, head_extra=f"<style>{_VIEWER_CSS}{_tab_css()}</style>")
