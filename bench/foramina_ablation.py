"""One first-stage change measured alone on the 5 folds of a `bench/foramina_cv.py` folder, and ensembles of them.

The crop grader learns on the true points (jittered), never on the localiser's, so the two networks can be
changed one at a time: for each fold, the changed network is trained on that fold's training studies (same
split and seed as the CV), the unchanged one is copied from the CV's fold (or from another ablation folder with
--localizer-from / --grader-from), and the held-out fold is scored on the localiser's points (TTA + temperature,
as the CV does): weighted log loss, localisation, and for a grader change the oracle (true points). Then the
study-level stage on the new out-of-fold rows. Runs resume where they stopped when started again.

    nice python bench/foramina_ablation.py --cv /tmp/foramina_cv --out /tmp/loc8 --localizer-epochs 8
    nice python bench/foramina_ablation.py --cv /tmp/foramina_cv --out /tmp/ema --grader-ema 0.995
    nice python bench/foramina_ablation.py --cv /tmp/foramina_cv --out /tmp/both --localizer-from /tmp/loc8 \\
        --grader-from /tmp/ema

`--ensemble A B ...` instead averages the held-out probabilities of ablation (or CV) folders that share their
points (the same localisers), fold by fold: the cross-validated figure of a first stage with several graders.
`--add-graders-from A B` builds that model (the CV's fold runs with A's and B's graders as `grader-<A>/`...) and
scores it as `predict` runs it; its study-level stage then takes the graders' mean temperature.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from spinegrade import vocab
from spinegrade.files import atomic_write_text, write_csv_atomic
from spinegrade.slicemodel.bundled import HELD_OUT_DICOM
from spinegrade.slicemodel.data import load_images
from spinegrade.slicemodel.model import CALIBRATION, GRADER, LOCALIZER, REFINER, SPLIT, SliceModel
from spinegrade.slicemodel.pipeline import (
    CONFIG,
    PREDICTIONS,
    SliceConfig,
    _calibrate,
    _train_grader,
    _train_localizer,
    _train_refiner,
    assemble_graders,
    fit_study_stage,
    predict_rows,
    rescore_heldout,
    slice_config,
    split_roles,
)
from spinegrade.slicemodel.refiner import RefinerSpec
from spinegrade.slicemodel.task import task_by_name
from spinegrade.train.engine import read_metrics

READ_ONLY = ("tta_zooms", "second_peak_power", "second_peak_gap")  # LocalizerSpec fields used at inference only
SLICES = Path(__file__).resolve().parents[2] / "shared/realdata/rsna2024_sagT1_foramina_vbs2004"


def _config(path: Path) -> SliceConfig:
    return SliceConfig.from_dict(json.loads((path / CONFIG).read_text()))


def changed_config(base: SliceConfig, a) -> SliceConfig:
    """The CV fold's configuration with this ablation's changes (and the networks taken from elsewhere)."""
    cfg = SliceConfig.from_dict(base.to_dict())
    if a.localizer_from:
        src = _config(a.localizer_from / f"fold{base.val_fold}")
        cfg.localizer, cfg.localizer_loop = src.localizer, src.localizer_loop
    if a.grader_from:
        src = _config(a.grader_from / f"fold{base.val_fold}")
        cfg.grader, cfg.grader_loop = src.grader, src.grader_loop
    if a.refiner_from:
        src = _config(a.refiner_from / f"fold{base.val_fold}")
        cfg.refiner, cfg.refiner_loop = src.refiner, src.refiner_loop
    elif a.refine:
        cfg.refiner = RefinerSpec()
        if a.refiner_epochs:
            cfg.refiner_loop.epochs = a.refiner_epochs
    lchange = {k: v for k, v in (("input_size", a.localizer_size),) if v}
    if a.localizer_tta is not None:
        lchange["tta_zooms"] = tuple(a.localizer_tta)
    if a.second_peak_power is not None:
        lchange["second_peak_power"] = a.second_peak_power
    gchange = {k: v for k, v in (("crop_frac", a.crop_frac), ("crop_px", a.crop_px), ("jitter", a.jitter),
                                 ("label_smoothing", a.label_smoothing), ("context_frac", a.context_frac),
                                 ("neighbour_slices", a.neighbour_slices)) if v}
    if a.grader_model:
        gchange.update(network=a.grader_model, network_kwargs=tuple(sorted(json.loads(a.grader_kwargs).items())))
    if a.pretrained:
        gchange["pretrained"] = True
    cfg.localizer = dataclasses.replace(cfg.localizer, **lchange)
    cfg.grader = dataclasses.replace(cfg.grader, **gchange)
    for loop, epochs, ema in ((cfg.localizer_loop, a.localizer_epochs, a.localizer_ema),
                              (cfg.grader_loop, a.grader_epochs, a.grader_ema)):
        if epochs:
            loop.epochs = epochs
        if ema is not None:
            loop.ema = ema
    return cfg.validate()


def run_fold(k: int, a, log) -> dict:
    from spinegrade.train.distributed import setup, teardown

    cv_run, out = a.cv / f"fold{k}", a.out / f"fold{k}"
    done = out / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    base = _config(cv_run)
    cfg = changed_config(base, a)
    # how a localiser is read (TTA views, second peak), not how it is trained: a change of these alone trains nothing
    trained_as = dataclasses.replace(cfg.localizer, **{f: getattr(base.localizer, f) for f in READ_ONLY})
    new_loc = (trained_as, cfg.localizer_loop) != (base.localizer, base.localizer_loop)
    new_grader = (cfg.grader, cfg.grader_loop) != (base.grader, base.grader_loop)
    loc_src = a.localizer_from / f"fold{k}" if a.localizer_from else cv_run
    grader_src = a.grader_from / f"fold{k}" if a.grader_from else cv_run
    train_loc = new_loc and not a.localizer_from
    train_grader = new_grader and not a.grader_from
    new_refiner = (cfg.refiner, cfg.refiner_loop) != (base.refiner, base.refiner_loop)
    train_refiner = cfg.refiner is not None and new_refiner and not a.refiner_from
    ref_src = a.refiner_from / f"fold{k}" if a.refiner_from else cv_run  # an unchanged refiner: the CV's own
    task = task_by_name(cfg.task)
    ps = task.read(cfg.slices)
    by_role = split_roles(cv_run, ps)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG, json.dumps(cfg.to_dict(), indent=1))
    shutil.copy(cv_run / SPLIT, out / SPLIT)
    skip = shutil.ignore_patterns("last.pt", "*.onnx")
    if not train_loc and not (out / LOCALIZER).is_dir():
        shutil.copytree(loc_src / LOCALIZER, out / LOCALIZER, ignore=skip)
        _set_spec(out / LOCALIZER / "best.pt", cfg.localizer.to_dict())  # the TTA views this folder reads it with
    if cfg.refiner is not None and not train_refiner and not (out / REFINER).is_dir():
        shutil.copytree(ref_src / REFINER, out / REFINER, ignore=skip)
    if not train_grader:
        if not (out / GRADER).is_dir():
            shutil.copytree(grader_src / GRADER, out / GRADER, ignore=skip)
        shutil.copy(grader_src / CALIBRATION, out / CALIBRATION)
    images = {p: im for b in by_role.values() for p, im in load_images(b, log=log).items()}
    seconds = {}
    ctx = setup("cpu")
    try:
        for name, train, fn in (("localizer", train_loc, _train_localizer), ("refiner", train_refiner, _train_refiner),
                                ("grader", train_grader, _train_grader)):
            if train:
                t0 = time.time()
                fn(cfg, by_role["train"], by_role["inner_val"], images, out, ctx, resume=True, log=log)
                seconds[name] = round(time.time() - t0, 1)
    finally:
        teardown(ctx)
    if train_grader:
        _calibrate(out, by_role["inner_val"], images, log)
    model = SliceModel.load(out, "cpu")
    pred = predict_rows(model, by_role["test"], images)
    write_csv_atomic(pred, out / "heldout" / PREDICTIONS)
    heldout = {"predicted_points": task.score(by_role["test"], pred, by_role["train"])}
    if train_grader and not a.no_oracle:
        graded = by_role["test"].labelled()
        heldout["true_points"] = task.score(graded, predict_rows(model, graded, images, true_points=True),
                                            by_role["train"])
    elif not train_grader:  # the oracle grades the true points alone: the grader's own figure, wherever measured
        src = json.loads((grader_src / "summary.json").read_text())["heldout"]
        if "true_points" in src:
            heldout["true_points"] = src["true_points"]
    # every network's epochs as their runs logged them (trained here or copied with their metrics.jsonl)
    epochs = {n: sum(r["seconds"] for r in read_metrics(out / n)) for n in (LOCALIZER, REFINER, GRADER)
              if (out / n / "metrics.jsonl").is_file()}
    summary = {"task": task.name, "trained_here": sorted(seconds), "train_seconds": round(sum(epochs.values()), 1),
               "epoch_seconds": epochs, "split": {r: int(b.points["study_id"].nunique()) for r, b in by_role.items()},
               "heldout": heldout}
    atomic_write_text(done, json.dumps(summary, indent=1))
    return summary


def assemble_fold(k: int, a, log) -> dict:
    """The CV's fold run with the graders of other folders of the same folds added (`assemble_graders`: one
    localiser, several graders averaged), its held-out fold predicted by that model as `predict` would run it."""
    out = a.out / f"fold{k}"
    done = out / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    assemble_graders(a.cv / f"fold{k}", out, {src.name: src / f"fold{k}" for src in a.add_graders_from})
    t0 = time.time()
    res = rescore_heldout(out, log=log, oracle=False)
    summary = json.loads(done.read_text())
    summary.update(task="foramina", trained_here=[], graders=1 + len(a.add_graders_from),
                   predict_seconds=round(time.time() - t0, 1))
    atomic_write_text(done, json.dumps(summary, indent=1))
    log(f"{summary['graders']} graders: weighted log loss {res['predicted_points']['weighted_log_loss']:.4f}")
    return summary


def _set_spec(ckpt: Path, spec: dict) -> None:
    import torch

    ck = torch.load(ckpt, map_location="cpu", weights_only=True)
    if ck.get("spec") != spec:
        ck["spec"] = spec
        torch.save(ck, ckpt)


def _figures(run: Path) -> dict:
    h = json.loads((run / "summary.json").read_text())["heldout"]
    p, loc = h["predicted_points"], h["predicted_points"]["localisation_px250"]
    return {"wll": p["weighted_log_loss"], "true_points": h.get("true_points", {}).get("weighted_log_loss"),
            "within5": loc["within_5px"], "over20": loc["over_20px"], "median_px": loc["median"],
            **{lv: p["per_level_wll"][lv] for lv in vocab.LEVELS}}


def _minutes(summary: dict) -> float:
    t = summary.get("train_seconds", summary.get("localizer_seconds", 0.0))
    return (sum(t.values()) if isinstance(t, dict) else float(t or 0.0)) / 60


def _with_mean(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    return pd.concat([df, df.mean(numeric_only=True).to_frame().T.assign(fold="mean")], ignore_index=True)


def compare(a) -> None:
    rows = []
    for k in range(5):
        out = a.out / f"fold{k}"
        if not (out / "summary.json").is_file():
            continue
        b, n = _figures(a.cv / f"fold{k}"), _figures(out)
        s = json.loads((out / "summary.json").read_text())
        rows.append({"fold": k, "wll_cv": b["wll"], "wll_new": n["wll"], "true_pts_cv": b["true_points"],
                     "true_pts_new": n["true_points"], "within5_cv": b["within5"], "within5_new": n["within5"],
                     "over20_cv": b["over20"], "over20_new": n["over20"],
                     "train_min": _minutes(s)})
    df = _with_mean(rows)
    print(f"\n{a.out} against the CV {a.cv} (held-out folds; *_cv = the CV's own figures)")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    per_level = _with_mean([{"fold": k, **{lv: _figures(a.out / f"fold{k}")[lv] for lv in vocab.LEVELS}}
                            for k in df["fold"][:-1]])
    print("per level (new):")
    print(per_level.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if len(rows) == 5:
        st = fit_study_stage(a.out, slice_config(a.slices, folds=5, val_fold=0, device="cpu",
                                                 exclude_studies=HELD_OUT_DICOM), log=print)
        print(pd.DataFrame(st["folds"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def ensemble(a) -> None:
    """Average the held-out probabilities of folders with the same localisers, fold by fold, and score them."""
    task = task_by_name("foramina")
    ps = task.read(a.slices)
    keys = ["path", "condition", "level"]
    rows, level_rows = [], []
    for k in range(5):
        preds = [pd.read_csv(d / f"fold{k}" / "heldout" / PREDICTIONS) for d in a.ensemble]
        first = preds[0]
        for d, p in zip(a.ensemble[1:], preds[1:]):
            if not p[keys].equals(first[keys]):
                raise SystemExit(f"{d}/fold{k}: other held-out rows than {a.ensemble[0]}/fold{k}")
            moved = np.hypot(p["x_pred"] - first["x_pred"], p["y_pred"] - first["y_pred"]).max()
            if moved > 1e-3:
                raise SystemExit(f"{d}/fold{k}: other points than {a.ensemble[0]} (by up to {moved:.2f} px): "
                                 "an ensemble of graders needs the same localisers")
        mean = first.copy()
        cols = list(vocab.SEVERITY_KEYS)
        mean[cols] = np.mean([p[cols].to_numpy() for p in preds], axis=0)
        roles = split_roles(a.cv / f"fold{k}", ps, ("train", "test"))
        test, train = roles["test"], roles["train"]
        order = test.points[keys].reset_index(drop=True)
        if not order.equals(first[keys]):
            raise SystemExit(f"fold {k}: the held-out rows are not in the split's order")
        res = task.score(test, mean, train)
        singles = [task.score(test, p, train)["weighted_log_loss"] for p in preds]
        rows.append({"fold": k, **{f"wll_{i}": s for i, s in enumerate(singles)}, "wll_ensemble": res["weighted_log_loss"]})
        level_rows.append({"fold": k, **res["per_level_wll"]})
    print("ensemble of " + ", ".join(f"{i}: {d}" for i, d in enumerate(a.ensemble)))
    print(_with_mean(rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print("per level (ensemble):")
    print(_with_mean(level_rows).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cv", type=Path, required=True, help="a bench/foramina_cv.py folder (its splits and networks)")
    ap.add_argument("--out", type=Path, help="this ablation's folder")
    ap.add_argument("--slices", type=Path, default=SLICES)
    ap.add_argument("--localizer-from", type=Path, help="take each fold's localiser from this ablation folder")
    ap.add_argument("--grader-from", type=Path, help="take each fold's grader from this ablation folder")
    ap.add_argument("--refiner-from", type=Path, help="take each fold's refiner from this ablation folder")
    ap.add_argument("--refine", action="store_true", help="train a refiner (a second look at each point)")
    ap.add_argument("--refiner-epochs", type=int)
    ap.add_argument("--localizer-tta", type=float, nargs="*", help="the localiser's TTA zooms (none: one view)")
    ap.add_argument("--second-peak-power", type=float, help="grade each channel's second peak too (0: off)")
    ap.add_argument("--localizer-size", type=int)
    ap.add_argument("--localizer-epochs", type=int)
    ap.add_argument("--localizer-ema", type=float)
    ap.add_argument("--grader-epochs", type=int)
    ap.add_argument("--grader-ema", type=float)
    ap.add_argument("--grader-model")
    ap.add_argument("--grader-kwargs", default="{}", help="JSON options of --grader-model")
    ap.add_argument("--pretrained", action="store_true")
    ap.add_argument("--crop-frac", type=float)
    ap.add_argument("--crop-px", type=int)
    ap.add_argument("--jitter", type=float)
    ap.add_argument("--label-smoothing", type=float, help="the grader's label smoothing (share of each target)")
    ap.add_argument("--context-frac", type=float, help="the grader's second channel: the same centre over this "
                    "fraction of the slice (two scales)")
    ap.add_argument("--neighbour-slices", type=int, help="the grader's further channel: the same crop on the "
                    "series' nearest other slice at most this many slices away")
    ap.add_argument("--no-oracle", action="store_true", help="do not grade the true points of a new grader (saves time)")
    ap.add_argument("--run-folds", type=int, nargs="*", default=None, help="train these folds only (no table)")
    ap.add_argument("--ensemble", type=Path, nargs="+", help="score the average of these folders' folds instead")
    ap.add_argument("--add-graders-from", type=Path, nargs="+",
                    help="the CV's folds with these folders' graders added (one member, several graders), scored")
    a = ap.parse_args()
    if a.ensemble:
        ensemble(a)
        return
    if a.out is None:
        ap.error("--out is required unless --ensemble")
    if a.add_graders_from:
        for k in a.run_folds if a.run_folds is not None else range(5):
            assemble_fold(k, a, log=lambda m, k=k: print(f"[fold {k}] {m}", flush=True))
        if a.run_folds is None:
            compare(a)
        return
    if a.localizer_from and any(v is not None for v in (a.localizer_size, a.localizer_epochs, a.localizer_ema)):
        ap.error("--localizer-from takes the localisers as they are: no localiser change beside it")
    grader_changes = (a.grader_epochs, a.grader_ema, a.grader_model, a.crop_frac, a.crop_px, a.jitter,
                      a.label_smoothing, a.context_frac, a.neighbour_slices)
    if a.grader_from and (any(v is not None for v in grader_changes) or a.pretrained):
        ap.error("--grader-from takes the graders as they are: no grader change beside it")
    for k in a.run_folds if a.run_folds is not None else range(5):
        run_fold(k, a, log=lambda m, k=k: print(f"[fold {k}] {m}", flush=True))
    if a.run_folds is None:
        compare(a)


if __name__ == "__main__":
    main()
