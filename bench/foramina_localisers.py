"""Localisation alone, over the folds of one or more cross-validations: each fold's held-out slices read by those
runs' localisers together (their mean heatmap, each refiner's look averaged, the slices of a series made to
agree: exactly how `predict` places points), without grading. Within 5 px and over 20 px per fold and pooled.

Every folder given must hold the same folds (fold<K>/, the same split); with one folder this re-measures its
localisers as the code reads them now, with several it measures their ensemble (e.g. two localisers per fold).
Writes OUT/fold<K>/heldout/predictions.csv (points only), which `bench/foramina_label_audit.py --cv OUT` reads.

    python bench/foramina_localisers.py --runs CV_A [CV_B ...] --out OUT [--folds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from spinegrade.files import write_csv_atomic
from spinegrade.slicemodel.data import load_images
from spinegrade.slicemodel.foramina import point_errors
from spinegrade.slicemodel.model import SPLIT, Member, SliceModel
from spinegrade.slicemodel.pipeline import PREDICTIONS, predict_points, split_roles
from spinegrade.slicemodel.task import task_by_name

SLICES = Path(__file__).resolve().parents[2] / "shared/realdata/rsna2024_sagT1_foramina_vbs2004"


def fold_points(k: int, runs: list[Path], ps, out: Path) -> pd.DataFrame:
    done = out / f"fold{k}" / "heldout" / PREDICTIONS
    if done.is_file():
        return pd.read_csv(done)
    dirs = [r / f"fold{k}" for r in runs]
    split = [pd.read_csv(d / SPLIT) for d in dirs]
    if any(not s.equals(split[0]) for s in split[1:]):
        raise SystemExit(f"fold {k}: the runs' splits differ ({', '.join(map(str, dirs))})")
    test = split_roles(dirs[0], ps, ("test",))["test"]
    model = SliceModel([Member.load(d) for d in dirs], f"fold {k}")
    pred = predict_points(model, test, load_images(test))
    write_csv_atomic(pred, done)
    return pred


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="cross-validation folders (fold<K>/ each)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--slices", type=Path, default=SLICES)
    a = ap.parse_args()
    if not a.slices.is_dir():
        raise SystemExit(f"real data not found at {a.slices} (put ../shared/realdata beside the repository)")
    ps = task_by_name("foramina").read(a.slices)
    rows, errs = [], []
    for k in a.folds:
        test = split_roles(a.runs[0] / f"fold{k}", ps, ("test",))["test"]
        pred = fold_points(k, a.runs, ps, a.out)
        e = point_errors(test, pred[["x_pred", "y_pred"]].to_numpy())
        errs.append(e)
        rows.append({"fold": k, "points": len(e), "within_5px_%": 100 * np.mean(e <= 5),
                     "over_20px_%": 100 * np.mean(e > 20), "median_px": np.median(e)})
        print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format=lambda v: f"{v:.2f}"), flush=True)
    e = np.concatenate(errs)
    rows.append({"fold": "all", "points": len(e), "within_5px_%": 100 * np.mean(e <= 5),
                 "over_20px_%": 100 * np.mean(e > 20), "median_px": np.median(e)})
    print(f"localisers of {', '.join(map(str, a.runs))}")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
