"""How much of the foramen localiser's measured miss is the labels' own error: the within-5-px figure on every
label beside the same figure without the series whose labels fail a check.

Two checks (`spinegrade.slicemodel.audit`): left and right labels a level apart in one series (reads only the
labels), and a series whose labels all sit off the predictions by one per-axis factor (a wrong matrix size;
reads a cross-validation's out-of-fold predictions, so every series is judged by models that never saw it).
Without --cv only the first check runs. The held-out figures of a run are never changed by this bench: it only
reports them again on subsets.

    python bench/foramina_label_audit.py [--cv RUN] [--out audit.csv]

RUN holds fold<K>/heldout/predictions.csv for every study (a bench/foramina_cv.py or ablation folder).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from spinegrade.slicemodel.audit import inconsistent_series, localisation_audit
from spinegrade.slicemodel.task import task_by_name

SLICES = Path(__file__).resolve().parents[2] / "shared/realdata/rsna2024_sagT1_foramina_vbs2004"
KEYS = ["path", "condition", "level"]


def out_of_fold(cv: Path) -> pd.DataFrame:
    files = sorted(cv.glob("fold*/heldout/predictions.csv"))
    if not files:
        raise SystemExit(f"{cv}: no fold*/heldout/predictions.csv")
    return pd.concat([pd.read_csv(f, usecols=KEYS + ["x_pred", "y_pred"]) for f in files], ignore_index=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=Path, default=SLICES)
    ap.add_argument("--cv", type=Path, help="a cross-validation folder with every fold's held-out predictions")
    ap.add_argument("--out", type=Path, help="write the flagged series here (CSV)")
    a = ap.parse_args()
    if not a.slices.is_dir():
        raise SystemExit(f"real data not found at {a.slices} (put ../shared/realdata beside the repository)")
    ps = task_by_name("foramina").read(a.slices)
    sides = inconsistent_series(ps)
    print(f"{a.slices.name}: {ps.points['study_id'].nunique()} studies, {len(ps)} points")
    print(f"left and right labels a level apart: {len(sides)} series ({sides['n_apart'].sum()} levels), "
          f"{ps.points['study_id'].isin(set(sides['study_id'])).sum()} points")
    flagged = sides.assign(check="sides a level apart")[["series", "study_id", "check"]]
    if a.cv:
        pred = out_of_fold(a.cv)
        seen = ps.points.merge(pred, on=KEYS, how="left")["x_pred"].notna()
        missing = sorted(set(ps.points.loc[~seen, "study_id"]))
        if missing:  # studies kept out of the cross-validation (e.g. those held out as DICOM)
            print(f"{a.cv}: no out-of-fold prediction for {int((~seen).sum())} points of {len(missing)} studies: "
                  f"left out below")
            ps = ps.drop_studies(missing)
        audit = localisation_audit(ps, pred)
        sized = audit["rescaled"]
        print(f"labels off the predictions by one per-axis factor (a wrong matrix size?): {len(sized)} series, "
              f"{int(sized['n'].sum())} points")
        for r in sized.itertuples(index=False):
            print(f"    {r.series}: x * {r.sx:.3f}, y * {r.sy:.3f}: within 5 px {r.n_within}/{r.n} as labelled, "
                  f"{r.n_within_rescaled}/{r.n} rescaled")
        flagged = pd.concat([flagged, sized.assign(study_id=sized["series"].str.split("/").str[0],
                                                   check="one per-axis factor")[["series", "study_id", "check"]]])
        for name, f in audit["figures"].items():
            print(f"{name:30s} {f['n']:6d} points  within 5 px {f['within_5px']:6.2%}  over 20 px "
                  f"{f['over_20px']:6.2%}  median {f['median']:.2f}")
        print(f"share of the misses over 20 px in flagged series: {audit['over20_in_flagged']:.1%}")
    if a.out:
        flagged.to_csv(a.out, index=False)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
