"""What more training studies are worth: a learning curve of the foramen grader on cross-validation folds.

For each fold run of a cross-validation (`spinegrade train --slices SET --all-folds --out CV`, or one built by the
bundled model's script) and each fraction, the fold's first grader is trained again on that fraction of the
fold's training studies (chosen by study; the same optimiser steps: epochs / fraction), behind the fold's own
localiser and refiner, calibrated on the fold's inner-validation studies and scored on its held-out fold at the
localiser's points (`rescore_heldout`, the honest figure). Fraction 1 retrains on every training study with
today's code. Prints the weighted log loss per fraction, fold and level, the change per doubling of the
training studies (a straight line in log2 of their number) and a power law's extrapolation to more studies.

Each (fold, fraction) run lives in OUT/f<fraction>/fold<K>/ and is resumed or kept; several processes may work
on different folds of the same OUT (`--folds`), and a last call with every fold prints the whole table.

    python bench/foramina_learning_curve.py --cv CV --out OUT [--folds 0 1] [--fractions 0.25 0.5 0.75 1]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from spinegrade import vocab
from spinegrade.files import atomic_write_text
from spinegrade.slicemodel.model import SPLIT
from spinegrade.slicemodel.pipeline import rescore_heldout, subsample_run, train_run_grader


def one(cv: Path, out: Path, k: int, fraction: float, seed: int) -> dict:
    run = subsample_run(cv / f"fold{k}", out / f"f{fraction:g}" / f"fold{k}", fraction, seed)

    def say(s):
        print(f"[fold {k}, {fraction:g}] {s}", flush=True)

    path = run / "summary.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    if "heldout" not in summary:
        t0 = time.time()
        train_run_grader(run, log=say)
        summary["train_seconds"] = round(time.time() - t0, 1)
        atomic_write_text(path, json.dumps(summary))
        summary["heldout"] = rescore_heldout(run, log=say, oracle=False)  # keeps train_seconds in the file
    res = summary["heldout"]
    split = pd.read_csv(run / SPLIT)  # the studies the grader trained on: no need to read the slice set again
    r = res["predicted_points"]
    return {"fold": k, "fraction": fraction, "train_studies": int((split["role"] == "train").sum()),
            "rows": r["n_rows"], "wll": r["weighted_log_loss"], **r["per_level_wll"],
            "train_minutes": round(summary.get("train_seconds", 0) / 60, 1)}


def doubling(n: np.ndarray, loss: np.ndarray) -> float:
    """The change in loss per doubling of the training studies (least squares, loss against log2 n)."""
    return float(np.polyfit(np.log2(n), loss, 1)[0])


def power_law(n: np.ndarray, loss: np.ndarray):
    """loss = a + b * n**-c fitted to the points (None where it does not fit: fewer than four, or no decrease)."""
    if len(n) < 4:
        return None
    from scipy.optimize import curve_fit

    x = n / n.max()
    try:
        (a, b, c), _ = curve_fit(lambda x, a, b, c: a + b * x ** -c, x, loss, p0=(loss.min() - 0.02, 0.02, 0.5),
                                 bounds=([0, 0, 0.05], [2, 2, 3]), maxfev=20000)
    except (RuntimeError, ValueError):
        return None
    return lambda m: float(a + b * (m / n.max()) ** -c), (a, b, c)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cv", type=Path, required=True, help="a folder of fold runs (fold<K>/)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 0.75, 1.0])
    ap.add_argument("--seed", type=int, default=0, help="which training studies a fraction keeps")
    a = ap.parse_args(argv)
    rows = [one(a.cv, a.out, k, f, a.seed) for f in sorted(a.fractions) for k in a.folds]
    df = pd.DataFrame(rows)
    df.to_csv(a.out / "learning_curve.csv", index=False)
    levels = list(vocab.LEVELS)
    print(f"\nthe first grader alone, held-out folds {a.folds} at the localiser's points (weighted log loss):")
    per = df.pivot(index="fraction", columns="fold", values="wll")
    mean = df.groupby("fraction")[["train_studies", "wll", *levels]].mean()
    print("| fraction | training studies (mean) | " + " | ".join(f"fold {k}" for k in per.columns)
          + " | **mean** | " + " | ".join(levels) + " |")
    print("|---" * (3 + len(per.columns) + len(levels)) + "|")
    for f, m in mean.iterrows():
        print(f"| {f:g} | {m['train_studies']:.0f} | " + " | ".join(f"{per.loc[f, k]:.4f}" for k in per.columns)
              + f" | **{m['wll']:.4f}** | " + " | ".join(f"{m[lv]:.3f}" for lv in levels) + " |")
    n, loss = mean["train_studies"].to_numpy(float), mean["wll"].to_numpy(float)
    if len(n) >= 2:
        print(f"\nper doubling of the training studies: {doubling(n, loss):+.4f} (all levels); "
              + ", ".join(f"{lv} {doubling(n, mean[lv].to_numpy(float)):+.4f}" for lv in levels))
        half = n >= n.max() / 2
        if half.sum() >= 2 and half.sum() < len(n):
            print(f"  over the upper half only ({', '.join(f'{f:g}' for f in mean.index[half])}): "
                  f"{doubling(n[half], loss[half]):+.4f}")
    fit = power_law(n, loss)
    if fit is not None:
        at, (pa, pb, pc) = fit
        print(f"power law loss = {pa:.4f} + {pb:.4f} * (n / {n.max():.0f})^-{pc:.2f}: at 2x the studies "
              f"{at(2 * n.max()):.4f}, 4x {at(4 * n.max()):.4f}, without limit {pa:.4f}")
    print(f"\ntraining minutes per run (this machine): {df['train_minutes'].min()}-{df['train_minutes'].max()}; "
          f"table in {a.out / 'learning_curve.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
