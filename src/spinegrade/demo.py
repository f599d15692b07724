"""The main job on built-in data: synthesise a cohort, prepare it, train both stages, evaluate on held-out
studies, predict one study and write its report. Sized to finish in about a quarter of an hour on 2 CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path

from . import DISCLAIMER


def run_demo(out: Path, studies: int = 120, seed: int = 2024, device: str = "auto", epochs: int | None = None,
             workers: int = 2, log=print) -> dict:
    """Run the whole pipeline into `out`; returns where everything was written and the headline figures."""
    from .data.synth import synthesize_cohort
    from .evaluate.study import evaluate_study_run
    from .predict import predict
    from .data.splits import read_split, studies as split_studies
    from .pipeline.plan import build_plan
    from .pipeline.study import train_study_pipeline

    out = Path(out)
    t0 = time.time()
    data, run, ev, pred = out / "data", out / "run", out / "evaluation", out / "prediction"
    if not (data / "train.csv").exists():
        log(f"[1/5] synthesising {studies} studies -> {data}")
        synthesize_cohort(data, n_studies=studies, seed=seed, workers=workers)
    else:
        log(f"[1/5] using the cohort already in {data}")
    plan = build_plan(str(data), cache=str(out / "cache"), prepare_workers=workers, device=device, seed=seed,
                      epochs=epochs or None)
    log("[2/5] preparing the cache and [3/5] training the localisers and graders")
    train_study_pipeline(plan, run, resume=(run / "config.json").exists(), log=log)
    log(f"[4/5] evaluating on the held-out studies -> {ev}")
    metrics = evaluate_study_run(run, data, ev, cache=out / "cache", device=device, log=log)
    one = data / "train_images" / split_studies(read_split(run), "val")[0]
    log(f"[5/5] predicting one held-out study ({one.name}) -> {pred}")
    summary = predict(one, run, pred, device=device, report=True, log=log)
    where = {
        "data": str(data), "run": str(run), "evaluation": str(ev / "metrics.json"),
        "submission": str(pred / "submission.csv"), "predictions": str(pred / "predictions.json"),
        "report": str(pred / "report.html") if (pred / "report.html").exists() else None,
    }
    result = {"where": where, "score": metrics["score"]["score"], "prior": metrics["prior"]["score"],
              "localisation_median_mm": metrics["localization"]["all"]["median_mm"],
              "minutes": round((time.time() - t0) / 60, 1), "predicted_studies": summary["studies"]}
    log("")
    log(f"demo finished in {result['minutes']} min")
    log(f"  challenge score on held-out studies {result['score']:.3f} (prior {result['prior']:.3f}); "
        f"median localisation error {result['localisation_median_mm']:.2f} mm")
    for k, v in where.items():
        if v:
            log(f"  {k:<12} {v}")
    log(DISCLAIMER)
    return result
