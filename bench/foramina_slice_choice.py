"""How well a foramen model chooses the slice to grade a foramen on, measured on the shared slice set.

On a DICOM study `predict` grades each foramen on the Sagittal T1 slice where the localiser's peak for that level
is highest (one view, no refiner; `slicemodel/dicom.py`), and `bench/foramina_dicom_slices.py` shows that choice is
where the loss on a DICOM study comes from. The slice set holds, for most foramina, other slices of the same side
of the same series: those the reader labelled other levels on (one or two slices away, mostly). Over the held-out
fold of every fold model (out-of-fold: no model sees its own training studies), for each foramen whose side has
two or more slices in the set: how often the highest peak is on the reader's slice, and the weighted log loss of
grading it on the reader's slice (the oracle), on the highest-peak slice (what `predict` does), and on every one
of those slices mixed by peak height h^p (p = the localiser's `second_peak_power`, the rule already used between
two peaks of one slice), or by equal weights.

    python bench/foramina_slice_choice.py --cv CV_FOLDER [--folds 0 1 2 3 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from spinegrade import vocab
from spinegrade.metric import weighted_log_loss
from spinegrade.slicemodel.data import load_images
from spinegrade.slicemodel.dicom import MIN_SLICE_WEIGHT, SLICE_POWER, SLICES_MIXED
from spinegrade.slicemodel.model import SliceModel
from spinegrade.slicemodel.pipeline import split_roles
from spinegrade.slicemodel.task import task_by_name

SLICES = Path(__file__).resolve().parents[2] / "shared/realdata/rsna2024_sagT1_foramina_vbs2004"


def fold_rows(model: SliceModel, test, log) -> list[dict]:
    """One record per foramen with two or more same-side slices of its series in the set."""
    images = load_images(test)
    task = model.task
    pts = test.points.reset_index(drop=True)
    side = pts["condition"].map(lambda c: vocab.CONDITION_BY_KEY[c].side)
    series = test.row_series().reset_index(drop=True)
    out, looks = [], {}

    def look(path):
        if path not in looks:
            img = images[path]
            f = test.frame(path, 0, img.shape)
            looks[path] = (img, f, model.localize(img, f.rows, f.cols, tta=False, refine=False)[:, 2],
                           model.candidates(img, f.rows, f.cols))
        return looks[path]

    groups = {k: sorted(set(g["path"])) for k, g in pts.assign(series=series, side=side).groupby(["series", "side"])}
    for i, r in enumerate(pts.itertuples(index=False)):
        paths = groups[(series[i], side[i])]
        if len(paths) < 2:
            continue
        ch = task.row_channels(r.level)[0]
        probs, heights, looked = [], [], []
        for p in paths:
            img, f, h, cand = look(p)
            probs.append(model.grade(img, f.rows, f.cols, [(r.condition, r.level, cand[ch, 0, 0], cand[ch, 0, 1])],
                                     seconds=[tuple(cand[ch, 1])])[0])
            heights.append(h[ch])
            looked.append(cand[ch, 0, 2])  # the height after the three views and the refiner
        out.append({"y": int(test.labels[i]), "reader": paths.index(r.path), "heights": np.array(heights),
                    "looked": np.array(looked), "probs": np.array(probs), "n": len(paths)})
        if log and len(out) % 500 == 0:
            log(f"{len(out)} foramina")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cv", type=Path, required=True, help="a folder of fold runs (fold<K>/, each with its split)")
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--slices", type=Path, default=SLICES)
    ap.add_argument("--records", type=Path, help="keep each fold's records here (fold<K>.pkl) and read them back")
    a = ap.parse_args()
    if not a.slices.is_dir():
        raise SystemExit(f"real data not found at {a.slices} (put ../shared/realdata beside the repository)")
    ps = task_by_name("foramina").read(a.slices)
    recs = []
    for k in a.folds:
        run = a.cv / f"fold{k}"
        test = split_roles(run, ps, ("test",))["test"].labelled()
        model = SliceModel.load(run)
        power = model.members[0].lspec.second_peak_power or 4.0
        kept = a.records / f"fold{k}.pkl" if a.records else None
        if kept is not None and kept.is_file():
            got = pd.read_pickle(kept)
        else:
            got = fold_rows(model, test, lambda m, k=k: print(f"[fold {k}] {m}", flush=True))
            if kept is not None:
                kept.parent.mkdir(parents=True, exist_ok=True)
                pd.to_pickle(got, kept)
        recs += [dict(g, fold=k) for g in got]
        print(f"[fold {k}] {len(got)} foramina with two or more slices of their side", flush=True)
    y = np.array([r["y"] for r in recs])
    pick = np.array([int(np.argmax(r["heights"])) for r in recs])
    reader = np.array([r["reader"] for r in recs])

    def mixed(w_of, key: str = "heights") -> np.ndarray:
        out = []
        for r in recs:
            w = w_of(r[key])
            out.append((w[:, None] * r["probs"]).sum(0) / w.sum())
        return np.array(out)

    looked = np.array([int(np.argmax(r["looked"])) for r in recs])
    ways = {"the reader's slice (oracle)": np.array([r["probs"][r["reader"]] for r in recs]),
            "the highest peak (predict until now)": np.array([r["probs"][p] for r, p in zip(recs, pick)]),
            "the highest peak after 3 views + refiner": np.array([r["probs"][p] for r, p in zip(recs, looked)]),
            "every slice, equal weights": mixed(lambda h: np.ones_like(h))}
    for p in sorted({1.0, 2.0, power, 8.0, 16.0, 32.0, 64.0, 128.0}):
        ways[f"every slice, weights h^{p:g}"] = mixed(lambda h, p=p: np.maximum(h, 1e-6) ** p)
    top = SLICES_MIXED

    def top_weights(h):
        w = np.zeros_like(h)
        best = np.argsort(-h, kind="stable")[:top]
        w[best] = np.maximum(h[best], 1e-6) ** SLICE_POWER
        return np.where(w / w.sum() >= MIN_SLICE_WEIGHT, w, 0.0)

    ways[f"the {top} highest, weights h^{SLICE_POWER:g} (predict on DICOM)"] = mixed(top_weights)
    ways[f"every slice, weights h^{power:g} after 3 views + refiner"] = mixed(
        lambda h: np.maximum(h, 1e-6) ** power, "looked")
    print(f"after 3 views + refiner the highest peak is on the reader's slice for {np.mean(looked == reader):.1%}")
    n = pd.Series([r["n"] for r in recs]).value_counts().sort_index()
    print(f"\n{len(recs)} foramina ({', '.join(f'{c} with {s} slices' for s, c in n.items())}); the highest peak is on "
          f"the reader's slice for {np.mean(pick == reader):.1%}")
    res = pd.DataFrame([{"graded on": name, "weighted log loss": weighted_log_loss(y, p),
                         **{f"fold {k}": weighted_log_loss(y[f], p[f]) for k in a.folds
                            for f in [np.array([r['fold'] == k for r in recs])]}} for name, p in ways.items()])
    print(res.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
