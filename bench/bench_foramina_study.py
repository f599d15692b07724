"""Time per study of the bundled foramen models, side by side, and the training time of a fold-ensemble recipe.

For each model (default: every bundled foramen model), on the two real RSNA DICOM studies: the time to load it,
then the time `grade_foramina` takes per study (pick each foramen's Sagittal T1 slice, place and grade all ten,
the study-level stage where the model has one), warm, best of --repeat. With --cv DIR (a `train --all-folds` or
`bench/foramina_cv.py` folder, or one assembled by `bench/foramina_ablation.py --add-graders-from`) also each
fold's training time per network (its epochs) and the study-level stage's fit. With --unshared-crops also the time
per study when every grader cuts its own crops (as grading did before graders that read the same crops shared
them), side by side in the same run.

    python bench/bench_foramina_study.py [--models foramina-sagt1-v1 foramina-sagt1-v6] [--cv DIR] [--repeat 3]
                                         [--unshared-crops]

SPINEGRADE_BACKEND=onnx|torch picks the runtime; threads: OMP_NUM_THREADS, else the machine's usable cores.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata"


def main() -> None:
    from spinegrade.io.dicom import load_study
    from spinegrade.runtime import runtime
    from spinegrade.slicemodel.bundled import HELD_OUT_DICOM, bundle_info, bundled_models
    from spinegrade.slicemodel.dicom import grade_foramina
    from spinegrade.slicemodel.model import SliceModel

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=None, help="bundled names or run folders (default: bundled)")
    ap.add_argument("--cv", type=Path, default=None, help="a folder of fold runs: print their training times")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--realdata", type=Path, default=REALDATA)
    ap.add_argument("--unshared-crops", action="store_true",
                    help="also time every grader cutting its own crops (the cost before they shared them)")
    a = ap.parse_args()
    models = a.models or [m for m in bundled_models() if bundle_info(m).get("task") == "foramina"]
    dirs = [a.realdata / "rsna2024_dicom_train_2studies" / "train_images" / s for s in HELD_OUT_DICOM]
    dirs = [d for d in dirs if d.is_dir()]
    if not dirs:
        raise SystemExit(f"the real DICOM studies are not at {a.realdata} (put ../shared/realdata beside the repository)")
    studies = [load_study(d) for d in dirs]
    rt = runtime("cpu")
    print(f"{os.cpu_count()} CPUs, backend {rt.backend}, {rt.threads} thread(s); {len(studies)} real studies; "
          f"best of {a.repeat}")
    print(f"{'model':<24}{'members':>8}{'stage':>7}{'load s':>8}{'s per study':>13}{'MB':>7}"
          + (f"{'unshared crops s':>18}" if a.unshared_crops else ""))
    for name in models:
        t = time.perf_counter()
        model = SliceModel.load(name, rt)
        load = time.perf_counter() - t
        for st in studies:
            grade_foramina(model, st)  # warm

        def grade_all(model=model):
            return [grade_foramina(model, st) for st in studies]

        best = _best_of(a.repeat, grade_all)
        root = Path(model.members[0].path).parent if len(model.members) > 1 else Path(model.members[0].path)
        mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
        line = (f"{model.name:<24}{len(model.members):>8}{'yes' if model.stage else 'no':>7}{load:>8.2f}"
                f"{best / len(studies):>13.2f}{mb:>7.1f}")
        if a.unshared_crops:
            from spinegrade.slicemodel.grader import GraderSpec

            shared_key = GraderSpec.input_key
            GraderSpec.input_key = property(lambda spec: id(spec))  # no two graders' keys equal: none shared
            try:
                line += f"{_best_of(a.repeat, grade_all) / len(studies):>18.2f}"
            finally:
                GraderSpec.input_key = shared_key
        print(line)
    if a.cv is not None:
        from spinegrade.train.engine import read_metrics

        print(f"\n{a.cv}: minutes of training epochs per fold run and network (from each network's metrics.jsonl, so "
              "also for runs assembled from networks trained elsewhere; reading the slices and scoring not counted)")
        total = 0.0
        for run in sorted(p for p in a.cv.glob("fold*") if p.is_dir()):
            nets = [n for n in sorted(p.name for p in run.iterdir()) if (run / n / "metrics.jsonl").is_file()]
            mins = {n: sum(r["seconds"] for r in read_metrics(run / n)) / 60 for n in nets}
            total += sum(mins.values())
            print(f"  {run.name}: " + ", ".join(f"{n} {m:.1f}" for n, m in mins.items())
                  + f"; {sum(mins.values()):.1f} min")
        print(f"  all folds: {total:.0f} min")
        from spinegrade import vocab
        from spinegrade.slicemodel.pipeline import out_of_fold_rows
        from spinegrade.slicemodel.study import fit_stage, grid_of

        rows = out_of_fold_rows(a.cv, a.realdata / "rsna2024_sagT1_foramina_vbs2004")
        conds = vocab.FAMILY_CONDITIONS[vocab.FORAMINAL]
        t = time.perf_counter()
        fit_stage(*grid_of(rows, conds, vocab.LEVELS)[:3], conds, vocab.LEVELS)
        print(f"study-level stage fitted on {rows['study_id'].nunique()} studies' out-of-fold rows in "
              f"{time.perf_counter() - t:.1f} s")


def _best_of(repeat: int, fn) -> float:
    return min(_timed(fn) for _ in range(repeat))


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
