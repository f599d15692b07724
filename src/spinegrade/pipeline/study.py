"""Train the whole study pipeline (stage 1 localisers + stage 2 graders) from an RSNA-layout dataset.

Run folder:
```
RUN/config.json                      the PipelinePlan (also inside every checkpoint, as `config`)
RUN/splits.csv                       every study's fold and role (train | val): study-level folds
RUN/localizer/<view>/best.pt ...     one heatmap network per view (sagittal_t2, sagittal_t1, axial_t2)
RUN/grader/<family>/best.pt ...      one crop classifier per condition family
RUN/summary.json                     best validation figures per model, and the checks (`pipeline/checks.py`)
```
Each model folder is a run of the shared engine (metrics.jsonl, curves.png, last.pt for --resume).
"""

from __future__ import annotations

import json
from pathlib import Path

from .. import progress, vocab
from ..errors import DataError
from ..export import export_trained
from ..train.config import CONFIG
from .checks import check_grader, check_localizer, format_checks, run_checks
from .plan import VIEWS, PipelinePlan


def train_study_pipeline(plan: PipelinePlan, out: Path, resume: bool = False, log=print) -> dict:
    """Prepare the cache if needed, split by study, train the chosen stages; returns the summary.

    resume: continue the run in `out` (its plan must match, see `PipelinePlan.RESUMABLE`), else start.
    """
    from ..data.prepare import Cache, prepare_dataset
    from ..data.rsna import RsnaDataset, make_folds
    from ..data.splits import write_split
    from ..files import atomic_write_text
    from ..grade.grader import GRADER_DIR
    from ..grade.train import train_family
    from ..localize.localizer import LOCALIZER_DIR
    from ..localize.train import foramen_offsets, train_view
    from ..train.distributed import barrier, setup, teardown

    plan.validate()
    out = Path(out)
    if (out / CONFIG).exists() and not resume:
        raise DataError(f"{out}: already holds a run; use --resume to continue it or choose another --out")
    if resume:
        plan.check_resume(out)
    ctx = setup(plan.localizer_loop.device)
    ds = RsnaDataset(Path(plan.data), coordinates=Path(plan.coordinates) if plan.coordinates else None)
    if ds.labels is None or ds.coords is None:
        raise DataError(f"{plan.data}: training needs train.csv and train_label_coordinates.csv")
    cache_dir = Path(plan.cache) if plan.cache else out / "cache"
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        plan.save(out / CONFIG)
        r = prepare_dataset(Path(plan.data), cache_dir, workers=plan.workers, progress=True)
        for f in r["failed"]:
            log(f"skipped study {f['study_id']}: {f['error']}")
    barrier(ctx)
    cache = Cache(cache_dir)
    studies = [s for s in ds.study_ids if cache.has_study(s) and s in ds.labels.index]
    folds = make_folds(ds.labels.loc[studies], n_folds=plan.folds, seed=plan.localizer_loop.seed)
    val_ids = sorted(int(s) for s in folds.index[folds == plan.val_fold])
    train_ids = sorted(int(s) for s in folds.index[folds != plan.val_fold])
    if ctx.is_main:
        write_split(out, folds, plan.val_fold)
    log(f"{len(train_ids)} training and {len(val_ids)} validation studies (fold {plan.val_fold} of {plan.folds})")
    coords = ds.coords
    described = {"config": plan.to_dict()}
    summary: dict = {"localizer": {}, "grader": {}}
    epochs = (len(VIEWS) * plan.localizer_loop.epochs if plan.stage in ("localizer", "all") else 0) \
        + (len(vocab.FAMILIES) * plan.grader_loop.epochs if plan.stage in ("grader", "all") else 0)
    with progress.command(epochs, "epochs"):  # each epoch's line ends with the ETA of every stage of the run
        if plan.stage in ("localizer", "all"):
            offsets = foramen_offsets(cache, coords, train_ids)
            for view in VIEWS:
                extra = {**described, **({"foramen_offsets": offsets} if view == vocab.SAGITTAL_T1 else {})}
                summary["localizer"][view] = train_view(
                    plan.localizers[view], cache, coords, train_ids, val_ids, out / LOCALIZER_DIR / view,
                    plan.localizer_loop, ctx, resume=resume, log=log, extra=extra)
                if ctx.is_main:
                    log(format_checks([check_localizer(view, summary["localizer"][view])]))
        if plan.stage in ("grader", "all"):
            for fam in vocab.FAMILIES:
                summary["grader"][fam] = train_family(
                    plan.graders[fam], cache, ds, train_ids, val_ids, out / GRADER_DIR / fam, plan.grader_loop, ctx,
                    resume=resume, log=log, extra=described)
                if ctx.is_main:
                    log(format_checks([check_grader(fam, summary["grader"][fam])]))
    if ctx.is_main:
        old = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
        for k in ("localizer", "grader"):
            old.setdefault(k, {}).update(summary[k])
        export_trained(out, log)  # every network beside its checkpoint as ONNX, for installs without torch
        checks = run_checks(old)
        old["checks"] = [c.to_dict() for c in checks]
        atomic_write_text(out / "summary.json", json.dumps(old, indent=1))
        summary = old
        failed = [c for c in checks if not c.passed]
        log(("\n" + "!" * 100 + "\n" if failed else "") + format_checks(checks)
            + (f"\n{len(failed)} of {len(checks)} checks FAILED: this run's models are not to be trusted\n" + "!" * 100
               if failed else f"\nall {len(checks)} checks passed"))
    teardown(ctx)
    return summary
