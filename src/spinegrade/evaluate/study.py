"""Score a study-pipeline run on held-out studies: the challenge score and its terms, per condition and
level, localisation error in mm, and the prior baseline beside every figure.

Held-out means the run's validation studies (splits.csv) when the dataset is the one it trained on; on any
other dataset every labelled study is scored.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .. import DISCLAIMER, vocab
from ..errors import DataError
from ..metric import TERMS, challenge_score, weighted_log_loss
from ..pipeline.checks import MAX_WRONG_LANDMARK, Check, format_checks, run_checks


def prior_table(labels: pd.DataFrame) -> dict[str, list[float]]:
    """The weight-optimal constant per target (class frequency x metric weight, normalised), smoothed."""
    from ..metric import prior_probs

    return {t: prior_probs(labels[t].to_numpy(dtype="float64", na_value=np.nan), weighted=True).tolist()
            for t in vocab.TARGETS}


def _long_labels(labels: pd.DataFrame, study_ids) -> pd.DataFrame:
    rows = []
    for sid in study_ids:
        for t in vocab.TARGETS:
            v = labels.at[sid, t]
            rows.append({"row_id": f"{sid}_{t}", "severity": np.nan if pd.isna(v) else int(v)})
    return pd.DataFrame(rows)


def _per_target(lab: pd.DataFrame, sub: pd.DataFrame) -> dict:
    """Weighted log loss per condition and per level."""
    m = lab.dropna(subset=["severity"]).merge(sub, on="row_id")
    parsed = [vocab.parse_row_id(r) for r in m["row_id"]]
    m["condition"] = [c for _, c, _ in parsed]
    m["level"] = [lv for _, _, lv in parsed]
    probs = m[list(vocab.SEVERITY_KEYS)].to_numpy()
    y = m["severity"].to_numpy().astype(int)
    out = {"condition": {}, "level": {}}
    for c in vocab.CONDITIONS:
        k = (m["condition"] == c).to_numpy()
        out["condition"][c] = weighted_log_loss(y[k], probs[k]) if k.any() else float("nan")
    for lv in vocab.LEVELS:
        k = (m["level"] == lv).to_numpy()
        out["level"][lv] = weighted_log_loss(y[k], probs[k]) if k.any() else float("nan")
    return out


def point_offsets(p, loc) -> dict:
    """How far a predicted point lies from a labelled one (`Study.locate_row`'s answer): in mm (3D and in the
    labelled slice's plane) and in slices (signed; on the labelled series)."""
    d = np.asarray(p.patient) - loc.patient
    off_plane = float(d @ loc.series.geometry.normal)
    return {"error_mm": float(np.linalg.norm(d)), "in_plane_mm": float(np.sqrt(max(0.0, d @ d - off_plane**2))),
            "slice_off": int(p.slice_index - loc.slice_index)}


def canal_point_table(result, study, coords: pd.DataFrame) -> list[dict]:
    """Per level: the prediction's spinal canal point on the Sagittal T2 against the labelled one (rows of
    `coords` with series_id, instance_number, condition, level, x, y): mm in plane, instances off, its source."""
    out = []
    for r in coords.itertuples(index=False):
        cond, lv = vocab.parse_condition(r.condition), vocab.parse_level(r.level)
        loc = study.locate_row(r)
        if cond != vocab.CANAL or loc is None or loc.series.role != vocab.SAGITTAL_T2:
            continue
        cands = [p for p in result.points if p.condition == cond and p.level == lv and p.role == vocab.SAGITTAL_T2]
        if not cands:
            out.append({"study_id": result.study_id, "level": lv, "in_plane_mm": np.nan, "instances_off": np.nan,
                        "source": ""})
            continue
        off = point_offsets(cands[0], loc)
        out.append({"study_id": result.study_id, "level": lv, "in_plane_mm": off["in_plane_mm"],
                    "instances_off": int(cands[0].instance_number) - int(r.instance_number),
                    "source": cands[0].source})
    return out


def localisation_errors(results, study_coords: dict, cache) -> dict:
    """Distance (mm, patient space) between each labelled point and the prediction for the same condition,
    level and view; summarised per family and per level, with the share of predictions on the wrong level
    (nearer another level's labelled point of the same condition than their own)."""
    rows = []
    for res in results:
        c = study_coords.get(int(res.study_id))
        if c is None or c.empty:
            continue
        study = cache.load_study(res.study_id)
        located = [(r, study.locate_row(r)) for r in c.itertuples(index=False)]
        located = [(r, loc) for r, loc in located if loc is not None]
        for r, loc in located:
            s = loc.series
            cands = [p for p in res.points if p.condition == r.condition and p.level == r.level and p.role == s.role]
            fam = vocab.CONDITION_BY_KEY[r.condition].family
            if not cands:
                rows.append({"family": fam, "level": r.level, "error_mm": np.nan, "in_plane_mm": np.nan,
                             "slice_off": np.nan, "wrong_level": np.nan})
                continue
            p = cands[0]
            off = point_offsets(p, loc)
            others = [float(np.linalg.norm(np.asarray(p.patient) - o.patient)) for r2, o in located
                      if r2.condition == r.condition and r2.level != r.level and o.series.role == s.role]
            rows.append({"family": fam, "level": r.level, "error_mm": off["error_mm"],
                         "in_plane_mm": off["in_plane_mm"],
                         "slice_off": abs(off["slice_off"]) if p.series_id == s.series_id else np.nan,
                         "wrong_level": float(bool(others) and min(others) < off["error_mm"])})
    df = pd.DataFrame(rows, columns=["family", "level", "error_mm", "in_plane_mm", "slice_off", "wrong_level"])

    def summ(d: pd.DataFrame) -> dict:
        e = d["error_mm"]
        found = e.notna().any()
        return {"n": int(len(d)), "found": int(e.notna().sum()),
                "median_mm": float(e.median()) if found else float("nan"),
                "mean_mm": float(e.mean()) if found else float("nan"),
                "p90_mm": float(e.quantile(0.9)) if found else float("nan"),
                "within_5mm": float((e < 5).mean()) if len(e) else float("nan"),
                "wrong_level": float(d["wrong_level"].mean()) if found else float("nan"),
                "in_plane_median_mm": float(d["in_plane_mm"].median()) if found else float("nan"),
                "same_slice": float((d["slice_off"] == 0).mean()) if len(d) else float("nan")}

    return {"all": summ(df), "family": {f: summ(g) for f, g in df.groupby("family")},
            "level": {lv: summ(g) for lv, g in df.groupby("level")}}


def _confusions(lab: pd.DataFrame, sub: pd.DataFrame, out: Path) -> dict:
    from sklearn.metrics import confusion_matrix

    from ..plots import plot_confusion

    m = lab.dropna(subset=["severity"]).merge(sub, on="row_id")
    fam = np.array([vocab.CONDITION_BY_KEY[vocab.parse_row_id(r)[1]].family for r in m["row_id"]])
    y = m["severity"].to_numpy().astype(int)
    pred = m[list(vocab.SEVERITY_KEYS)].to_numpy().argmax(1)
    cms = {}
    for f in vocab.FAMILIES:
        k = fam == f
        cm = confusion_matrix(y[k], pred[k], labels=list(range(vocab.N_CLASSES)))
        cms[f] = cm.tolist()
        plot_confusion(cm, list(vocab.SEVERITIES), out / f"confusion_{f}.png", title=f"{f} (rows: truth)")
    return cms


def evaluate_study_run(run: Path, data: Path, out: Path, cache: Path | None = None, device: str = "cpu",
                       all_studies: bool = False, log=print) -> dict:
    """Predict the held-out studies of `data` with the run and write metrics.json, submission.csv,
    predictions.json and confusion matrices into `out`; returns the metrics."""
    from ..files import atomic_write_text, write_csv_atomic
    from ..data.prepare import Cache, prepare_dataset
    from ..data.rsna import RsnaDataset
    from ..predict import Predictor, submission_frame
    from ..results import write_predictions
    from ..data.splits import read_split, studies
    from ..pipeline.plan import PipelinePlan

    run, out = Path(run), Path(out)
    split = read_split(run)
    cfg = PipelinePlan.load(run)
    ds = RsnaDataset(Path(data))
    if ds.labels is None:
        raise DataError(f"{data}: evaluation needs labels (train.csv)")
    same_data = Path(cfg.data).resolve() == Path(data).resolve()
    cache_dir = Path(cache) if cache else (Path(cfg.cache) if cfg.cache and same_data else
                                           (run / "cache" if same_data else out / "cache"))
    r = prepare_dataset(Path(data), cache_dir, workers=cfg.workers, progress=False)
    failed = list(r["failed"])
    c = Cache(cache_dir)
    ids = [s for s in ds.study_ids if s in ds.labels.index and c.has_study(s)]
    if same_data and not all_studies:
        held = {int(s) for s in studies(split, "val")}
        ids = [s for s in ids if s in held]
    if not ids:
        raise DataError(f"{data}: no labelled held-out study to evaluate")
    train_ids = [int(s) for s in studies(split, "train") if int(s) in ds.labels.index] if same_data else list(ds.labels.index)
    priors = prior_table(ds.labels.loc[train_ids]) if same_data else prior_table(ds.labels)

    predictor = Predictor(run, device)
    results = []
    for sid in ids:
        try:
            results.append(predictor.predict_loaded(c.load_study(sid)))
        except Exception as e:  # report and go on: one study must not end an evaluation
            failed.append({"study_id": str(sid), "error": f"{type(e).__name__}: {e}"})
            log(f"skipped study {sid}: {e}")
    ok_ids = [int(res.study_id) for res in results]
    sub = submission_frame(results)
    lab = _long_labels(ds.labels, ok_ids)
    prior_sub = pd.DataFrame([{"row_id": f"{sid}_{t}", **dict(zip(vocab.SEVERITY_KEYS, priors[t]))}
                              for sid in ok_ids for t in vocab.TARGETS])
    model_score = challenge_score(lab, sub)
    prior_score = challenge_score(lab, prior_sub)
    out.mkdir(parents=True, exist_ok=True)
    coords = {int(s): ds.coords_for(s) for s in ok_ids} if ds.coords is not None else {}
    metrics = {
        "disclaimer": DISCLAIMER,
        "run": str(run), "data": str(data), "n_studies": len(ok_ids), "held_out": same_data and not all_studies,
        "score": model_score, "prior": prior_score,
        "score_over_prior": model_score["score"] / prior_score["score"],
        "per_target": {"model": _per_target(lab, sub), "prior": _per_target(lab, prior_sub)},
        "localization": localisation_errors(results, coords, c),
        "confusion": _confusions(lab, sub, out),
        "prior_sources": int(sum(f.source == "prior" for res in results for f in res.findings)),
        "failed": failed,
    }
    metrics["checks"] = [c.to_dict() for c in held_out_checks(run, metrics)]
    write_csv_atomic(sub, out / "submission.csv")
    write_predictions(out / "predictions.json", results, {"run": str(run)}, failed)
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1, default=float))
    log(format_study_metrics(metrics))
    return metrics


def held_out_checks(run: Path, metrics: dict) -> list[Check]:
    """The run's own training checks (from its summary.json) and two on the evaluated studies: the model
    beats the prior's challenge score, and few localised points sit on the wrong level."""
    summary = Path(run) / "summary.json"
    checks = run_checks(json.loads(summary.read_text())) if summary.exists() else []
    ratio = metrics["score_over_prior"]
    checks.append(Check("evaluate", "score", bool(np.isfinite(ratio) and ratio < 1.0),
                        f"held-out challenge score {metrics['score']['score']:.4f} vs the prior's "
                        f"{metrics['prior']['score']:.4f} (ratio {ratio:.3f}; must be below 1)"))
    wrong = metrics["localization"]["all"]["wrong_level"]
    if np.isfinite(wrong):
        checks.append(Check("evaluate", "localisation", bool(wrong <= MAX_WRONG_LANDMARK),
                            f"{wrong:.1%} of the evaluated points on the wrong level (at most "
                            f"{MAX_WRONG_LANDMARK:.0%})"))
    return checks


def format_study_metrics(m: dict) -> str:
    lines = [f"{m['n_studies']} studies{' (held out)' if m['held_out'] else ''}",
             f"{'':<28}{'model':>9}{'prior':>9}"]
    for t in ("score",) + TERMS:
        lines.append(f"  {t:<26}{m['score'][t]:>9.4f}{m['prior'][t]:>9.4f}")
    lines.append(f"  score / prior = {m['score_over_prior']:.3f}")
    loc = m["localization"]
    a = loc["all"]
    lines.append(f"  localisation error: median {a['median_mm']:.2f} mm, mean {a['mean_mm']:.2f} mm, 90th percentile "
                 f"{a['p90_mm']:.2f} mm, wrong level {a['wrong_level']:.1%} ({a['found']}/{a['n']} points found)")
    for f, v in loc["family"].items():
        lines.append(f"    {f:<14} median {v['median_mm']:.2f} mm (in-plane {v['in_plane_median_mm']:.2f} mm)  "
                     f"within 5 mm {v['within_5mm']:.0%}  on the labelled slice {v['same_slice']:.0%}  "
                     f"wrong level {v['wrong_level']:.1%}")
    if m.get("checks"):
        lines.append(format_checks([Check(**c) for c in m["checks"]]))
    lines.append(DISCLAIMER)
    return "\n".join(lines)



