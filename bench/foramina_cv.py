"""Cross-validated foramen localiser + crop grader on the real Sagittal T1 slices, beside its yardsticks.

For each of F study-level folds: `train --slices` (the default recipe) on the other folds, then the held-out
fold scored on the localiser's points (the honest figure), on the true points (the oracle), without
test-time augmentation and without the temperature, beside a per-level constant and the class prior fitted
on the training folds. With every fold done, the study-level stage is fitted on the folds' out-of-fold
predictions (saved as <out>/study_stage.json) and measured fold by fold, per level, and for calibration. The two studies that also exist as DICOM are kept out of every run. Runs resume where
they stopped when started again with the same --out. Prints the table and writes <out>/foramina_cv.csv.

    nice python bench/foramina_cv.py [--out /tmp/foramina_cv] [--run-folds 0 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from spinegrade.slicemodel.bundled import HELD_OUT_DICOM
from spinegrade.slicemodel.pipeline import fit_study_stage, slice_config, train_slices

SLICES = Path(__file__).resolve().parents[2] / "shared/realdata/rsna2024_sagT1_foramina_vbs2004"


def fold_row(run: Path, k: int) -> dict:
    s = json.loads((run / "summary.json").read_text())
    h = s["heldout"]
    pp = h["predicted_points"]
    loc = pp["localisation_px250"]
    return {"fold": k, "n_rows": pp["n_rows"], "wll": pp["weighted_log_loss"],
            "wll_true_points": h["true_points"]["weighted_log_loss"],
            "wll_no_tta": h["predicted_points_no_tta"]["weighted_log_loss"],
            "wll_uncalibrated": h["predicted_points_uncalibrated"]["weighted_log_loss"],
            "level_constant": pp["level_prior_wll"], "class_prior": pp["class_prior_wll"],
            "bacc": pp["balanced_accuracy"], "loc_median_px": loc["median"], "loc_p90_px": loc["p90"],
            "loc_within5": loc["within_5px"], "loc_over20": loc["over_20px"], "train_s": s["train_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=Path, default=SLICES)
    ap.add_argument("--out", type=Path, default=Path("/tmp/foramina_cv"), help="runs go here; rerun to resume")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--run-folds", type=int, nargs="*", default=None, help="default: all")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if not a.slices.is_dir():
        raise SystemExit(f"real data not found at {a.slices} (put ../shared/realdata beside the repository)")
    torch.set_num_threads(a.threads)
    rows = []
    for k in a.run_folds if a.run_folds is not None else range(a.folds):
        run = a.out / f"fold{k}"
        if not (run / "summary.json").exists():
            t0 = time.time()
            cfg = slice_config(a.slices, folds=a.folds, val_fold=k, device=a.device, exclude_studies=HELD_OUT_DICOM)
            train_slices(cfg, run, resume=(run / "config.json").exists(),
                           log=lambda m, k=k: print(f"[fold {k}] {m}", flush=True))
            print(f"[fold {k}] done in {time.time() - t0:.0f} s", flush=True)
        rows.append(fold_row(run, k))
    df = pd.DataFrame(rows)
    table = pd.concat([df, df.mean(numeric_only=True).to_frame().T.assign(fold="mean")], ignore_index=True)
    a.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(a.out / "foramina_cv.csv", index=False)
    print(f"\n{a.slices} | {a.folds}-fold CV by study | weighted log loss on the held-out fold: wll = localiser's "
          f"points + TTA + temperature; localisation in px of a 250-px slice")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    ok = (df.wll < df.level_constant).all()
    print(f"crop grader on predicted points beats the per-level constant on every fold: {'yes' if ok else 'NO'}")
    if a.run_folds is None or sorted(a.run_folds) == list(range(a.folds)):
        print_stage(fit_study_stage(a.out, slice_config(a.slices, folds=a.folds, val_fold=0, device=a.device,
                                                        exclude_studies=HELD_OUT_DICOM), log=print))


def print_stage(st: dict) -> None:
    """The study-level stage's fold-by-fold figures, per level, and calibration (study.stage_cv)."""
    f = pd.DataFrame(st["folds"])
    f = pd.concat([f, f.mean(numeric_only=True).to_frame().T.assign(fold="mean")], ignore_index=True)
    print("\nstudy-level stage (fitted for each fold on the other folds' out-of-fold rows only): weighted log loss "
          "of the held-out fold; own = out-of-fold calibration alone (one temperature and class bias), study = the full stage")
    print(f.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    better = all(r["study"] < r["first_stage"] for r in st["folds"])
    print(f"study-level stage better than the first stage on every fold: {'yes' if better else 'NO'}; "
          f"{'kept' if st['kept'] else 'not kept'} (saved beside the folds only where its CV mean is the better)")
    print("\nper level (all folds' rows pooled):")
    print(pd.DataFrame(st["per_level"]).to_string(float_format=lambda v: f"{v:.3f}"))
    print("\ncalibration (top-label ECE, 10 bins): " + ", ".join(f"{k} {v['ece']:.3f}"
                                                               for k, v in st["calibration"].items()))
    for name in ("first_stage", "study"):
        print(f"reliability, {name}:")
        print(pd.DataFrame(st["calibration"][name]["reliability"]).to_string(index=False))


if __name__ == "__main__":
    main()
