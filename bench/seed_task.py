"""The seed project's own task, rebuilt honestly: grade spinal canal stenosis from the Axial T2 slice at each
disc level with the seed's 5-block CNN, split by study, next to the class prior.

    python bench/seed_task.py [--studies 120] [--epochs 15] [--image-size 128] [--folds 5] [--val-fold 0]

Synthesises a cohort, exports the seed's dataset (`prepare --export-png --png-task seed-axial`: the axial
slice from the level's coordinates, else by sagittal->axial projection, labelled with that level's canal
grade), trains `seed-cnn` and evaluates it on the held-out studies. Prints the figures.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--studies", type=int, default=120)
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--val-fold", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="keep everything here (default: a temporary folder)")
    a = ap.parse_args()

    from spinegrade.data.prepare import prepare_dataset
    from spinegrade.data.synth import synthesize_cohort
    from spinegrade.evaluate.slices import evaluate_slices
    from spinegrade.train.config import LoopConfig, TrainConfig
    from spinegrade.pipeline.slices import train_slices

    with tempfile.TemporaryDirectory() as tmp:
        root = a.out or Path(tmp)
        synthesize_cohort(root / "data", n_studies=a.studies, seed=a.seed, workers=2)
        r = prepare_dataset(root / "data", root / "cache", workers=2, export_png=root / "seed_png",
                            png_task="seed-axial", progress=False)
        print(f"exported {r['png_rows']} axial level slices -> {root / 'seed_png' / 'index.csv'}")
        cfg = TrainConfig(index=str(root / "seed_png" / "index.csv"), model="seed-cnn", image_size=a.image_size,
                          folds=a.folds, val_fold=a.val_fold,
                          loop=LoopConfig(epochs=a.epochs, batch_size=32, lr=1e-3, patience=6, device="cpu", seed=0))
        train_slices(cfg, root / "run", log=lambda *_: None)
        m = evaluate_slices(root / "run", root / "seed_png" / "index.csv", root / "eval", device="cpu",
                            log=lambda *_: None)
    print(f"\nseed task (axial slice per level -> spinal canal grade), seed-cnn at {a.image_size} px, "
          f"{m['n_labelled']} held-out slices (fold {a.val_fold} of {a.folds}, split by study)")
    print(f"{'':<16}{'weighted log loss':>18}{'balanced acc':>14}{'accuracy':>10}")
    for name in ("model", "class_prior", "weighted_prior"):
        r = m[name]
        print(f"{name:<16}{r['weighted_log_loss']['all']:>18.4f}{r['balanced_accuracy']:>14.3f}{r['accuracy']:>10.3f}")
    print("chance balanced accuracy is 0.333; the prior always answers one class.")


if __name__ == "__main__":
    main()
