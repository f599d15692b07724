"""Cross-validated whole-slice grading on the real Sagittal T1 slices (points.csv as a slice index), against priors.

For each model and each of F study-level folds: `train_slices` on the other folds, then `evaluate_slices`
on the held-out fold's studies. The headline figures use the LAST epoch's weights (a fixed budget, no
choice made on the held-out fold); the epoch that `train` keeps as best.pt was chosen on that same fold,
so its figures are shown separately as optimistic. Runs resume where they stopped when started again
with the same --out. Prints the table and writes it to <out>/cv_png.csv. Usage:

    nice python bench/cv_png.py [--out /tmp/cv_png] [--models resnet10 seed-cnn] [--epochs 6]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from spinegrade.data.slices import read_index
from spinegrade.evaluate.metric import prior_probs, weighted_log_loss
from spinegrade.evaluate.slices import evaluate_slices
from spinegrade.train.config import LoopConfig, TrainConfig
from spinegrade.train.engine import read_metrics
from spinegrade.data.splits import read_split
from spinegrade.pipeline.slices import train_slices

INDEX = Path(__file__).resolve().parents[2] / "shared/realdata/rsna2024_sagT1_foramina_vbs2004/points.csv"
# Small enough for a shared 2-core CPU: a narrower seed CNN, a quarter-width ResNet-10.
MODEL_KWARGS = {"seed-cnn": {"widths": [16, 32, 64, 128, 128]}, "resnet10": {"widen_factor": 0.25},
                "resnet18": {"widen_factor": 0.25}}


def _figures(m: dict, who: str) -> dict:
    return {"wll": m[who]["weighted_log_loss"]["all"], "bacc": m[who]["balanced_accuracy"],
            "acc": m[who]["accuracy"]}


def _level_prior_wll(index: Path, run_dir: Path) -> float:
    """Weighted log loss of the best constant per disc level (fitted on the run's training rows).

    A yardstick for what the level input alone is worth: a model that reads nothing from the image but
    the level it is asked about can reach this.
    """
    idx = read_index(index, check_files=False)
    split = read_split(run_dir)
    train = np.isin(idx.study_id, split.study_id[split.role == "train"])
    probs = np.zeros((len(idx), 3))
    for lv in np.unique(idx.level):
        at = idx.level == lv
        probs[at] = prior_probs(idx.label[at & train], weighted=True)
    return weighted_log_loss(idx.label[~train], probs[~train])


def run_fold(model: str, fold: int, a) -> dict:
    out = a.out / model / f"fold{fold}"
    cfg = TrainConfig(index=str(a.index), model=model, model_kwargs=MODEL_KWARGS.get(model, {}),
                      image_size=a.image_size, folds=a.folds, val_fold=fold,
                      loop=LoopConfig(epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, patience=0, seed=a.seed,
                                      workers=a.workers, device="cpu"))
    train_slices(cfg, out, resume=True, log=lambda s: print(f"  [{model} fold {fold}] {s}", flush=True))
    seconds = sum(r["seconds"] for r in read_metrics(out))  # over every start of the run
    last = evaluate_slices(out / "last.pt", a.index, out / "eval_last", log=lambda s: None)
    best = evaluate_slices(out / "best.pt", a.index, out / "eval_best", log=lambda s: None)
    row = {"model": model, "fold": fold, "n_val": last["n_labelled"], **_figures(last, "model"),
           "wll_best_epoch": best["model"]["weighted_log_loss"]["all"],
           **{f"prior_{k}": v for k, v in _figures(last, "class_prior").items()},
           "wprior_wll": last["weighted_prior"]["weighted_log_loss"]["all"],
           "level_prior_wll": _level_prior_wll(a.index, out), "train_s": round(seconds)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=INDEX)
    ap.add_argument("--out", type=Path, default=Path("/tmp/cv_png"), help="runs go here; rerun to resume")
    ap.add_argument("--models", nargs="+", default=["resnet10", "seed-cnn"])
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--run-folds", type=int, nargs="*", default=None, help="default: all")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1, help="data loader processes")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads; on a CPU shared with other jobs one thread wastes least on spin-waits")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = [run_fold(m, k, a) for m in a.models for k in (a.run_folds or range(a.folds))]
    df = pd.DataFrame(rows)
    means = df.groupby("model", sort=False).mean(numeric_only=True).reset_index().assign(fold="mean")
    table = pd.concat([df, means], ignore_index=True)
    table.to_csv(a.out / "cv_png.csv", index=False)
    print(f"\n{a.index} | {a.folds}-fold CV by study | {a.image_size}px, {a.epochs} epochs, metric class weights, "
          f"level/side input | wll = weighted log loss (last epoch); wll_best_epoch chosen on the fold itself;\n"
          f"prior = class frequencies, wprior = weight-optimal constant, level_prior = weight-optimal constant per "
          f"level (all fitted on the training folds)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    beats = df.assign(ok=df.wll < df.prior_wll).groupby("model")["ok"].all()
    for model, ok in beats.items():
        print(f"{model}: beats the class prior's weighted log loss on every fold: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
