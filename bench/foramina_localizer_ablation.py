"""One localiser change measured alone on the 5 folds: a new foramen localiser per fold beside the CV's grader.

The crop grader never sees the localiser in training (it learns on the true points, jittered), so a localiser
change can be measured without retraining it: for each fold of a `bench/foramina_cv.py` folder, train the
localiser with the change on that fold's training studies (same split, seed, epochs), put it beside the fold's
own grader and temperature, and score the held-out fold on its points (TTA + temperature, as the CV does):
localisation and weighted log loss, fold by fold, against the CV's own figures; then the study-level stage on
the new out-of-fold rows. Runs resume where they stopped when started again with the same --out.

    nice python bench/foramina_localizer_ablation.py --cv /tmp/foramina_cv --out /tmp/loc128 --localizer-size 128
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import pandas as pd

from spinegrade.files import atomic_write_text, write_csv_atomic
from spinegrade.slicemodel.bundled import HELD_OUT_DICOM
from spinegrade.slicemodel.data import load_images
from spinegrade.slicemodel.model import CALIBRATION, GRADER, SPLIT, SliceModel
from spinegrade.slicemodel.pipeline import (
    CONFIG,
    PREDICTIONS,
    _train_localizer,
    fit_study_stage,
    predict_rows,
    slice_config,
)
from spinegrade.slicemodel.task import task_by_name

SLICES = Path(__file__).resolve().parents[2] / "shared/realdata/rsna2024_sagT1_foramina_vbs2004"


def run_fold(k: int, a, log) -> dict:
    from spinegrade.train.distributed import setup, teardown

    cv_run, out = a.cv / f"fold{k}", a.out / f"fold{k}"
    done = out / "summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = slice_config(a.slices, folds=5, val_fold=k, device="cpu", exclude_studies=HELD_OUT_DICOM,
                       localizer_size=a.localizer_size, localizer_epochs=a.localizer_epochs)
    task = task_by_name(cfg.task)
    ps = task.read(cfg.slices)
    split = pd.read_csv(cv_run / SPLIT, dtype={"study_id": str})
    role = dict(zip(split["study_id"], split["role"]))
    by_role = {r: ps.subset_studies([s for s, v in role.items() if v == r]) for r in ("train", "inner_val", "test")}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG, json.dumps(cfg.to_dict(), indent=1))
    for name in (SPLIT, CALIBRATION):
        shutil.copy(cv_run / name, out / name)
    if not (out / GRADER).is_dir():
        shutil.copytree(cv_run / GRADER, out / GRADER, ignore=shutil.ignore_patterns("last.pt", "*.onnx"))
    images = load_images(ps.subset_studies(list(role)), log=log)
    t0 = time.time()
    ctx = setup("cpu")
    try:
        _train_localizer(cfg, by_role["train"], by_role["inner_val"], images, out, ctx, resume=True, log=log)
    finally:
        teardown(ctx)
    train_s = time.time() - t0
    model = SliceModel.load(out, "cpu")
    pred = predict_rows(model, by_role["test"], images)
    write_csv_atomic(pred, out / "heldout" / PREDICTIONS)
    res = task.score(by_role["test"], pred, by_role["train"])
    summary = {"localizer_seconds": round(train_s, 1), "heldout": {"predicted_points": res}}
    atomic_write_text(done, json.dumps(summary, indent=1))
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cv", type=Path, required=True, help="a bench/foramina_cv.py folder (its graders and splits)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--slices", type=Path, default=SLICES)
    ap.add_argument("--localizer-size", type=int, default=None)
    ap.add_argument("--localizer-epochs", type=int, default=None)
    ap.add_argument("--run-folds", type=int, nargs="*", default=None)
    a = ap.parse_args()
    rows = []
    for k in a.run_folds if a.run_folds is not None else range(5):
        s = run_fold(k, a, log=lambda m, k=k: print(f"[fold {k}] {m}", flush=True))
        base = json.loads((a.cv / f"fold{k}" / "summary.json").read_text())["heldout"]["predicted_points"]
        new = s["heldout"]["predicted_points"]
        rows.append({"fold": k, "wll_cv": base["weighted_log_loss"], "wll_new": new["weighted_log_loss"],
                     "within5_cv": base["localisation_px250"]["within_5px"],
                     "within5_new": new["localisation_px250"]["within_5px"],
                     "over20_cv": base["localisation_px250"]["over_20px"],
                     "over20_new": new["localisation_px250"]["over_20px"],
                     "median_cv": base["localisation_px250"]["median"], "median_new": new["localisation_px250"]["median"],
                     "localizer_min": s["localizer_seconds"] / 60})
    df = pd.DataFrame(rows)
    df = pd.concat([df, df.mean(numeric_only=True).to_frame().T.assign(fold="mean")], ignore_index=True)
    print(f"\nlocaliser change: input {a.localizer_size or 'default'} px, epochs {a.localizer_epochs or 'default'}; "
          "the CV's grader and temperature; held-out folds (cv = the CV's own localiser)")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if a.run_folds is None:
        st = fit_study_stage(a.out, slice_config(a.slices, folds=5, val_fold=0, device="cpu",
                                                 exclude_studies=HELD_OUT_DICOM), log=print)
        print(pd.DataFrame(st["folds"]).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
