"""Cross-validated Sagittal T2 canal model (disc centres, canal points, yes/no canal stenosis) on the real
mid-sagittal T2 slices of the shared `sudirman_sagT2_discs_yolospine` set, 5 folds by patient.

Each fold: `train --slices` (the canal task's default recipe) on the other folds, then the held-out fold
scored: disc-centre error (px of the 384 px slice), levels right (the predicted disc nearest its own level's
disc), canal-point error where a stenosis box marks it, stenosis AUC per level, on the localiser's points and
(AUC) on the true disc centres. Runs resume where they stopped when started again with the same --out. Prints
the table and writes <out>/canal_cv.csv; `--rescore` scores trained folds again with the current inference code.

    nice python bench/canal_cv.py [--out /tmp/canal_cv] [--run-folds 0 1] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from spinegrade import vocab
from spinegrade.slicemodel.pipeline import rescore_heldout, slice_config, train_slices

SET = Path(__file__).resolve().parents[2] / "shared/realdata/sudirman_sagT2_discs_yolospine"


def fold_row(run: Path, k: int) -> dict:
    s = json.loads((run / "summary.json").read_text())
    p = s["heldout"]["predicted_points"]
    t = s["heldout"]["true_points"]
    row = {"fold": k, "patients": p["n_patients"], "disc_median_px": p["disc_px"]["median"],
           "disc_p90_px": p["disc_px"]["p90"], "levels_right": p["levels_right"],
           "canal_median_px": p["canal_px"]["median"], "canal_p90_px": p["canal_px"]["p90"],
           "auc": p["stenosis_auc"], "auc_true_discs": t["stenosis_auc"], "log_loss": p["stenosis_log_loss"],
           "prior_log_loss": p["prior_log_loss"], "train_s": s["train_seconds"]}
    row.update({f"auc_{lv}": p["stenosis_auc_per_level"][lv] for lv in vocab.LEVELS})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", type=Path, default=SET)
    ap.add_argument("--out", type=Path, default=Path("/tmp/canal_cv"))
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--run-folds", type=int, nargs="*", default=None, help="only these folds (default: all)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--rescore", action="store_true",
                    help="score trained folds' held-out patients again with the inference code as it is now")
    a = ap.parse_args()
    if not a.set.is_dir():
        raise SystemExit(f"{a.set}: the shared Sagittal T2 set is missing (put ../shared/realdata beside the repository)")
    rows = []
    for k in a.run_folds if a.run_folds is not None else range(a.folds):
        run = a.out / f"fold{k}"
        if not (run / "summary.json").exists():
            t0 = time.time()
            cfg = slice_config(a.set, folds=a.folds, val_fold=k, device=a.device)
            train_slices(cfg, run, resume=(run / "config.json").exists(), log=lambda m, k=k: print(f"[fold {k}] {m}"))
            print(f"[fold {k}] {time.time() - t0:.0f} s")
        elif a.rescore:
            rescore_heldout(run, log=lambda m, k=k: print(f"[fold {k}] {m}"))
        rows.append(fold_row(run, k))
    df = pd.DataFrame(rows)
    mean = df.mean(numeric_only=True).to_frame().T.assign(fold="mean")
    df = pd.concat([df, mean], ignore_index=True)
    a.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(a.out / "canal_cv.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.3f}".format):
        print(df.to_string(index=False))


if __name__ == "__main__":
    main()
