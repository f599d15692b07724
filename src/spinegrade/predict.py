"""Study in, grades out: read a study, localise its levels, grade 25 targets, write the challenge files.

INPUT may be a dataset root in the RSNA layout (its `*_series_descriptions.csv` gives the roles), a folder
whose subfolders are studies (`<study_id>/<series_id>/*.dcm`, roles inferred), or one study folder (its
name is the study id). A study that cannot be read is reported and skipped; the batch goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import __version__, vocab
from .batch import Shard
from .errors import DataError, in_words
from .io.types import Study
from .results import CANAL_STENOSIS_YES_NO, SeriesUse, StudyResult

# why a grade is the prior, said with it in predictions.json, the report and the SR
PRIOR_NOTE = "prior: no model trained on real images grades this target yet (the training set's class frequencies)"
PRIOR_NOTE_RUN = "prior: the run could not place or grade this target (a series or level missing)"

if TYPE_CHECKING:
    import pandas as pd


@dataclass
class StudyJob:
    study_id: str
    path: Path
    descriptions: dict | None = None


def find_studies(input_path: Path) -> list[StudyJob]:
    """The studies under INPUT (see module doc), sorted by id.

    Symbolic links are followed only where a folder lists studies (a link per study is a common way to
    pick a subset), never when they loop back to the folder or above it; inside a study they are not
    followed at all (the reader reports them).
    """
    p = Path(input_path)
    if not p.exists():
        raise DataError(f"{p}: no such file or folder")
    if not p.is_dir():
        raise DataError(f"{p}: expected a folder (a study, a folder of studies, or an RSNA dataset root)")
    for split in ("test", "train"):
        images = p / f"{split}_images"
        if images.is_dir():
            from .data.rsna import read_series_descriptions

            desc_csv = p / f"{split}_series_descriptions.csv"
            desc = read_series_descriptions(desc_csv) if desc_csv.exists() else None
            jobs = []
            for d in _study_folders(images):
                dd = None
                if desc is not None and d.name.isdigit():
                    rows = desc[desc["study_id"] == int(d.name)]
                    dd = {str(r.series_id): r.role for r in rows.itertuples(index=False)} or None
                jobs.append(StudyJob(d.name, d, dd))
            return jobs
    # A folder of studies has studies with series folders in them; a study has only series folders (or
    # files). Real folders decide, so that `loop -> .` inside a study does not make it a folder of studies;
    # links decide only where the folder holds nothing else (a folder of links to studies: a picked subset).
    entries = [x for x in p.iterdir() if not x.name.startswith(".")]
    real = [x for x in entries if _real_dir(x)]
    folders = _study_folders(p)
    deciding = real or (folders if len(folders) == len(entries) else [])
    if any(_has_real_subfolder(d) for d in deciding):
        return [StudyJob(d.name, d) for d in folders]
    return [StudyJob(p.name, p)]


def _real_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink()


def _has_real_subfolder(d: Path) -> bool:
    try:
        return any(_real_dir(y) for y in d.iterdir())
    except OSError:  # unreadable: the reader will say so for the study
        return False


def _study_folders(parent: Path) -> list[Path]:
    """The subfolders of a folder of studies, sorted: real ones, and links to folders that are neither the
    folder itself nor above it (those would loop)."""
    here = parent.resolve()
    out = []
    for x in parent.iterdir():
        if x.name.startswith(".") or not x.is_dir():
            continue
        if x.is_symlink():
            try:
                target = x.resolve(strict=True)
            except (OSError, RuntimeError):
                continue
            if target == here or target in here.parents:
                continue
        out.append(x)
    return sorted(out)


FORAMINA_IN_RUN = "foramina"  # a study run may carry a slice-trained foramen model in this subfolder
CANAL_POINTS = ("run", "bundled")  # who places the canal points when a study run is given


def _foramina_model_path(model: Path | str) -> Path | None:
    """The foramen model that `model` is or includes (a run, a folder of runs, a bundled name), else None."""
    from .slicemodel.bundled import BUNDLED_DIR, is_member

    p = Path(model)
    if p.is_dir():
        if is_member(p) or any(is_member(c) for c in p.iterdir() if c.is_dir() and c.name != FORAMINA_IN_RUN):
            return p
        return p / FORAMINA_IN_RUN if (p / FORAMINA_IN_RUN).is_dir() else None
    return BUNDLED_DIR / str(model) if (BUNDLED_DIR / str(model)).is_dir() else None


@dataclass
class Predictor:
    """A study run's localiser and graders, and the slice models, loaded once, applied to any number of studies.

    `run_dir` is a study run (`train --data`); or a slice model alone (a `train --slices` run, a folder of them,
    or a bundled model's name): a foramen model gives the ten foraminal grades, a canal model the five canal
    points and their yes/no stenosis probabilities; or None: the bundled models (`slicemodel.model.
    default_bundled`), and the prior for every grade none of them gives. `foramina` names a foramen model to
    grade the foraminal targets with instead of the run's own grader; `canal_points` says who places the canal
    points beside a study run: its own localiser ("run", the default) or the bundled canal model ("bundled").
    """

    run_dir: Path | str | None = None
    device: str = "cpu"
    foramina: Path | str | None = None
    canal_points: str = "run"
    timings: dict = field(default_factory=lambda: {"read": 0.0, "localize": 0.0, "grade": 0.0})

    def __post_init__(self) -> None:
        from .runtime import runtime
        from .slicemodel.bundled import bundled_models, default_bundled
        from .slicemodel.model import SliceModel

        if self.canal_points not in CANAL_POINTS:
            raise DataError(f"canal points from {self.canal_points!r}: expected one of {', '.join(CANAL_POINTS)}")
        dev = runtime(self.device)  # torch, or ONNX Runtime where torch is not installed (or not wanted)
        self.device_type = dev.type
        self.foramina_model = self.canal_model = None
        self.localizer, self.grader = None, None
        bundled = default_bundled()
        if self.run_dir is None:  # out of the box: every bundled model, each for its task
            if self.foramina is None and "foramina" in bundled:
                self.foramina = bundled["foramina"]
            if "canal" in bundled:
                self.canal_model = SliceModel.load(bundled["canal"], dev, task="canal")
        fpath = _foramina_model_path(self.foramina) if self.foramina is not None else None
        if self.foramina is not None and fpath is None:
            raise DataError(f"{self.foramina}: not a foramen model (a `train --slices` run, a folder of them, or a "
                            f"bundled model: {', '.join(bundled_models()) or 'none installed'})")
        standalone = None
        if self.run_dir is not None:
            own = _foramina_model_path(self.run_dir)
            if own is not None and own.name != FORAMINA_IN_RUN:
                standalone = SliceModel.load(own, dev)
                if standalone.task.name == "canal":
                    self.canal_model = standalone
                elif fpath is None:
                    fpath = own
            elif fpath is None:
                fpath = own
        if fpath is not None:
            self.foramina_model = SliceModel.load(fpath, dev, task="foramina")
        if self.run_dir is None or standalone is not None:
            self.run_dir = None
            return
        self.run_dir = Path(self.run_dir)
        if not self.run_dir.is_dir():
            raise DataError(f"{self.run_dir}: no such run folder nor bundled model (train one with "
                            f"`spinegrade train --data` or `--slices`)")
        from .grade.grader import Grader  # here, not above: a slice model alone needs neither (nor scipy)
        from .localize.localizer import Localizer

        self.localizer = Localizer(self.run_dir, dev)
        self.grader = Grader(self.run_dir, dev)
        if not self.localizer.models and not self.grader.models:
            raise DataError(f"{self.run_dir}: holds no trained localiser or grader (localizer/*/best.pt, grader/*/best.pt)")
        if self.canal_points == "bundled":
            if "canal" not in bundled:
                raise DataError("--canal-points bundled: no bundled canal model is installed")
            self.canal_model = SliceModel.load(bundled["canal"], dev, task="canal")

    def describe(self) -> dict:
        """Which models grade what: written into predictions.json and shown by the report."""
        d: dict = {"run": str(Path(self.run_dir).resolve()) if self.run_dir else None, "spinegrade": __version__,
                   "localizer": sorted(self.localizer.models) if self.localizer else [],
                   "grader": sorted(self.grader.models) if self.grader else []}
        if self.foramina_model is not None:
            d["foramina"] = {"name": self.foramina_model.name, "members": len(self.foramina_model.members),
                             "grades": list(vocab.FAMILY_CONDITIONS[vocab.FORAMINAL])}
        if self.canal_model is not None:
            d["canal"] = {"name": self.canal_model.name, "members": len(self.canal_model.members),
                          "places": [vocab.CANAL], "observes": [CANAL_STENOSIS_YES_NO]}
        d["name"] = " + ".join(x for x in (Path(self.run_dir).name if self.run_dir else "",
                                           self.foramina_model.name if self.foramina_model else "",
                                           self.canal_model.name if self.canal_model else "") if x)
        return d

    def summary(self) -> str:
        """One line: which model graded or placed what."""
        parts = []
        if self.grader is not None:
            parts.append(f"{Path(self.run_dir).name}: the run's grades")
        if self.foramina_model is not None:
            parts.append(f"{self.foramina_model.name}: the 10 foraminal grades")
        if self.canal_model is not None:
            parts.append(f"{self.canal_model.name}: the 5 canal points and their yes/no stenosis probability")
        if self.grader is None:
            n = 25 - (10 if self.foramina_model is not None else 0)
            parts.append(f"prior: the other {n} grades")
        return "; ".join(parts)

    def _prior_findings(self) -> list:
        from .results import Finding

        prior = self.foramina_model.prior() if self.foramina_model is not None else {}
        why = PRIOR_NOTE_RUN if self.grader is not None else PRIOR_NOTE
        return [Finding(c, lv, prior.get(vocab.target(c, lv), [1 / 3] * 3), "prior", note=why)
                for c in vocab.CONDITIONS for lv in vocab.LEVELS]

    def predict_loaded(self, study: Study) -> StudyResult:
        return self.predict_many([study])[0]

    def predict_many(self, studies: list[Study]) -> list[StudyResult]:
        """Grade several loaded studies; their crops go through each grader together (see `Grader.grade_many`)."""
        t0 = time.perf_counter()
        canal = [self._place_canal(s) for s in studies]
        given = {i: pts for i, (pts, _, _) in enumerate(canal)} if self.canal_model is not None else None
        if self.localizer:
            located = self.localizer.localize_many(studies, given)
        else:
            from .localize.localizer import axial_projections

            located = [(pts + axial_projections(s, pts), []) for s, (pts, _, _) in zip(studies, canal)]
        for (_, warn), (_, _, notes) in zip(located, canal):
            warn.extend(notes)
        t1 = time.perf_counter()
        graded = (self.grader.grade_many([(s, pts) for s, (pts, _) in zip(studies, located)]) if self.grader
                  else [self._prior_findings() for _ in studies])
        out = [self._finish(s, pts, warn, f, obs) for s, (pts, warn), f, (_, obs, _)
               in zip(studies, located, graded, canal)]
        t2 = time.perf_counter()
        self.timings["localize"] += t1 - t0
        self.timings["grade"] += t2 - t1
        return out

    def _place_canal(self, study: Study) -> tuple[list, list, list[str]]:
        """The canal model's five points, its yes/no observations and notes (nothing without a canal model)."""
        if self.canal_model is None:
            return [], [], []
        from .slicemodel.dicom import place_canal

        return place_canal(self.canal_model, study)

    def _finish(self, study: Study, points: list, warnings: list[str], findings: list,
                observations: list | None = None) -> StudyResult:
        """The foramen model's grades (if any) over the grader's, and the study's result."""
        if self.foramina_model is not None:
            from .slicemodel.dicom import grade_foramina

            canal = [p.patient[0] for p in points if p.patient and vocab.CONDITION_BY_KEY[p.condition].family
                     == vocab.SPINAL]
            fpoints, ffind, notes = grade_foramina(self.foramina_model, study,
                                                   float(np.median(canal)) if canal else None)
            warnings.extend(notes)
            got = {(f.condition, f.level): f for f in ffind}
            findings = [got.get((f.condition, f.level), f) for f in findings]
            points = [p for p in points if vocab.CONDITION_BY_KEY[p.condition].family != vocab.FORAMINAL
                      or (p.condition, p.level) not in got] + fpoints
        from dataclasses import replace

        bad = {(f.condition, f.level) for f in findings if not np.all(np.isfinite(f.probs))}
        if bad:  # never a NaN in a submission: a model that answered one (inputs it never saw) gives way
            prior = {(f.condition, f.level): f.probs for f in self._prior_findings()}
            if self.grader is not None:
                prior.update({(c, lv): self.grader.prior(vocab.CONDITION_BY_KEY[c].family) for c, lv in bad})
            findings = [replace(f, probs=list(prior[(f.condition, f.level)]), source="prior", model="")
                        if (f.condition, f.level) in bad else f for f in findings]
            warnings.append(f"{len(bad)} grade(s) came out of the model as NaN or infinite: the training prior "
                            "used instead")
        if self.run_dir is not None:  # every graded finding names its model, the run's own grader too
            run_name = Path(self.run_dir).name
            findings = [replace(f, model=run_name) if f.source == "model" and not f.model else f for f in findings]
        used: dict[str, set] = {}
        for p in points:
            used.setdefault(p.series_id, set()).add(vocab.CONDITION_BY_KEY[p.condition].family)
        series = [SeriesUse(s.series_id, s.role, s.role_reason, s.n_slices, sorted(used.get(s.series_id, ())))
                  for s in study.series]
        n_prior = sum(f.source == "prior" and (f.condition, f.level) not in bad for f in findings)
        skipped = [{"path": _relative(k.path, study.path), "reason": k.reason}
                   for k in [*study.skipped, *(k for s in study.series for k in s.skipped)]]
        if n_prior:
            warnings.append(f"{n_prior} of 25 grades are the training prior (no point to grade them at)"
                            if self.grader is not None else
                            f"{n_prior} of 25 grades are the prior: no model trained on real images grades them yet")
        return StudyResult(study.study_id, study.path, series, points, findings, warnings, skipped,
                           list(observations or []))

    def read(self, path: Path, descriptions: dict | None = None, study_id: str | None = None) -> Study:
        """Read a study folder (timed as `read`)."""
        from .io.dicom import load_study

        t0 = time.perf_counter()
        # the stored integers, as the prepare cache holds them: float32 is made for the slices the models read
        study = load_study(path, descriptions=descriptions, stored=True)
        if study_id:
            study.study_id = study_id
        self.timings["read"] += time.perf_counter() - t0
        return study

    def predict_path(self, path: Path, descriptions: dict | None = None, study_id: str | None = None) -> StudyResult:
        return self.predict_loaded(self.read(path, descriptions, study_id))


def _relative(path: str, root: str) -> str:
    """A skipped file's path inside its study folder (server and user folders stay out of the outputs)."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


def predict_study(study_path: Path, run_dir: Path | None = None, device: str = "cpu",
                  descriptions: dict | None = None, foramina: Path | str | None = None) -> StudyResult:
    """One study folder -> StudyResult (loads the run's models; use `Predictor` for many studies)."""
    return Predictor(run_dir, device, foramina).predict_path(Path(study_path), descriptions)


def submission_frame(results: list[StudyResult]) -> pd.DataFrame:
    import pandas as pd  # here: predicting writes its CSV without pandas (a cold start is shorter by its import)

    rows = [r for res in results for r in res.submission_rows()]
    return pd.DataFrame(rows, columns=list(vocab.SUBMISSION_COLUMNS))


KEEP_FOR_REPORT = 20  # studies whose pixels a batch keeps in memory for its report


def predict(input_path: Path, model: Path | str | None, out: Path, device: str = "cpu", strict: bool = False,
            report: bool = False, dicom_sr: bool = False, log=print, foramina: Path | str | None = None,
            canal_points: str = "run",
            readers: int | None = None, resume: bool = False, shard: Shard | None = None,
            batch_studies: int | None = None) -> dict:
    """Predict every study under INPUT; write submission.csv, predictions.json, report.json into `out`.

    `readers` processes read the next studies while the models grade the current one (None: one per spare
    core; 0: read in this process). Each finished study is journalled at once (see `spinegrade.batch`), so
    `resume` continues a batch that was interrupted, skipping the studies it finished (a study that failed is
    tried again); the final files equal an uninterrupted run's. `batch_studies` studies are graded together,
    their crops in one forward pass per grader (default 8 on a GPU; 1 on the CPU, where batching gains nothing
    and one study at a time keeps each result independent of its neighbours). `shard` (default: torchrun's
    RANK / WORLD_SIZE) grades one slice of the studies into OUT/shards/; under torchrun rank 0 then merges
    them (`merge_shards`).

    Returns {"studies": n ok, "failed": [{study_id, error}], "skipped_files": {study_id: [{path, reason}]},
    "timings": {...}, "batch": {...}}. Raises DataError when no study could be graded (only report.json is
    written then, saying why), and with `strict` when any study failed.
    """
    from .batch import Journal, default_readers, read_ahead, shard_from_env
    from .files import check_output_folder, make_output_folder
    from .progress import bar as progress_bar

    t_start = time.perf_counter()
    jobs = find_studies(Path(input_path))
    out = Path(out)
    check_output_folder(out)
    shard = shard or shard_from_env()
    ctx = None
    if shard.torchrun:
        from .train.distributed import setup

        ctx = setup(device, backend="gloo", timeout_hours=72.0)  # the group only carries the final barrier
        device = str(ctx.device)
    # before the folder is made: a bad model leaves nothing behind
    predictor = Predictor(model, device, foramina, canal_points)
    log(f"models: {predictor.summary()}")
    load_s = time.perf_counter() - t_start
    make_output_folder(out)
    mine = shard.take(jobs)
    folder = out if shard.count == 1 else out / "shards" / shard.folder_name
    header = {"model": predictor.describe(), "input": str(Path(input_path).resolve()),
              "shard": [shard.index, shard.count], "studies": [j.study_id for _, j in mine]}
    journal = Journal(folder, header, resume, log)
    todo = [(i, j) for i, j in mine if "result" not in journal.done.get(j.study_id, {})]
    if resume and journal.done:
        log(f"resuming: {len(mine) - len(todo)} of {len(mine)} studies already done")
    n_readers = default_readers(len(todo)) if readers is None else max(0, int(readers))
    index = {id(j): i for i, j in todo}
    # kept for the report, so it draws on the pixels just read; a large batch's report reads them again instead
    studies: dict[str, Study] = {}
    keep = report and len(todo) <= KEEP_FOR_REPORT
    group = max(1, batch_studies or (8 if predictor.device_type == "cuda" else 1))

    def record(job, got, secs: dict) -> None:
        """Journal one study's result (an exception: its failure); write its SR; keep it for the report."""
        if isinstance(got, Exception):
            msg = in_words(got)
            journal.add(index[id(job)], job.study_id, error=msg, seconds=secs)
            log(f"skipped study {job.study_id}: {msg}")
            return
        res, study = got
        journal.add(index[id(job)], job.study_id, result=res.to_dict(), seconds=secs)
        if keep:
            studies[res.study_id] = study

    def grade(batch: list) -> None:
        """Grade a group of read studies together; a failure there is retried study by study."""
        before = dict(predictor.timings)
        try:
            results = predictor.predict_many([st for _, st, _ in batch])
            if dicom_sr:
                _write_srs(results, [st for _, st, _ in batch], out)
        except Exception as e:  # noqa: BLE001 - one bad study must not end a batch
            if len(batch) > 1:
                for one in batch:
                    grade([one])
                return
            record(batch[0][0], e, {"read": batch[0][2]})
            return
        share = {k: (predictor.timings[k] - before[k]) / len(batch) for k in ("localize", "grade")}
        for (job, st, read_s), res in zip(batch, results):
            record(job, (res, st), {"read": read_s, **share})

    bar = progress_bar(total=len(todo), desc="predict", unit="studies", disable=len(todo) < 2, log=log)
    waiting: list = []
    try:
        # readers from a fork server: this process already runs the models' thread pools (ONNX Runtime), and a
        # reader forked while one of their threads holds a lock waits on it for ever (seen once in the tests)
        for job, got, read_s in read_ahead([j for _, j in todo], n_readers, start="forkserver"):
            if isinstance(got, Exception):
                record(job, got, {"read": read_s})
            else:
                waiting.append((job, got, read_s))
            if len(waiting) >= group:
                grade(waiting)
                waiting = []
            bar.update()
        if waiting:
            grade(waiting)
    finally:
        bar.close()
        journal.close()
    wall = time.perf_counter() - t_start
    run = {"readers": n_readers, "shard": f"{shard.folder_name}", "graded_now": len(todo),
           "resumed": len(mine) - len(todo), "seconds": round(wall, 3), "load_seconds": round(load_s, 3),
           "studies_per_s": round(len(todo) / (wall - load_s), 4) if wall > load_s else None}
    if shard.count > 1:
        from .batch import collect

        _, records = collect([folder])
        mine_summary = {"studies": sum("result" in r for r in records),
                        "failed": [{"study_id": r["study_id"], "error": r["error"]} for r in records if "error" in r],
                        "timings": dict(predictor.timings), "warnings": {}, "skipped_files": {}, "batch": run}
        if not shard.torchrun:
            log(f"shard {shard.folder_name} done in {folder}; merge with `spinegrade predict --merge {out}`")
            return mine_summary
        from .train.distributed import barrier, teardown

        barrier(ctx)  # every shard's journal is complete before rank 0 reads them
        teardown(ctx)
        if not ctx.is_main:
            return mine_summary
        return merge_shards(out, strict=strict, report=report, log=log, batch=run, studies=studies)
    return _finish(out, [folder], strict, report, log, {"batch": run, "models": predictor.summary()}, studies,
                   n_jobs=len(jobs))


def _write_srs(results: list[StudyResult], studies: list[Study], out: Path) -> None:
    """Each study's DICOM SR; one that cannot be made (a source image without its UIDs, say) costs that SR, said
    in the study's warnings, not the study's grades."""
    from .report.sr import write_sr

    for res, st in zip(results, studies):
        try:
            write_sr(res, st, out / f"{res.study_id}_sr.dcm")
        except Exception as e:  # noqa: BLE001 - the grades stand without their SR
            res.warnings.append(f"no DICOM SR: {in_words(e)}")


def merge_shards(out: Path, strict: bool = False, report: bool = False, log=print, batch: dict | None = None,
                 studies: dict | None = None) -> dict:
    """Merge the shards of a sharded batch in OUT (`predict --shard` or torchrun) into one submission.csv,
    predictions.json and report.json in OUT; DataError when a shard is missing or unfinished."""
    from .batch import shard_folders

    folders = shard_folders(Path(out))
    return _finish(Path(out), folders, strict, report, log, {"batch": {**(batch or {}), "shards": len(folders)}},
                   studies or {})


def _finish(out: Path, folders: list[Path], strict: bool, report: bool, log, extra: dict, studies: dict,
            n_jobs: int | None = None) -> dict:
    from .batch import JOURNAL, PARTIAL, collect, write_outputs

    header, records = collect(folders)
    summary = write_outputs(out, header, records, extra)
    if len(folders) == 1 and folders[0] == out:  # the final files hold everything the journal did
        for name in (JOURNAL, PARTIAL):
            (out / name).unlink(missing_ok=True)
    n = n_jobs if n_jobs is not None else len(records)
    if not summary["studies"]:
        raise DataError(f"no study could be graded ({len(summary['failed'])} of {n} failed; "
                        f"see {out / 'report.json'})")
    if report:
        from .report.html import write_report

        write_report(out, out / "report.html", studies=studies)
    if strict and summary["failed"]:
        raise DataError(f"{len(summary['failed'])} of {n} studies could not be read (see {out / 'report.json'})")
    return summary
