"""Where the foramen model's loss on a DICOM study comes from: the slice it chooses, or the rest.

On the real RSNA studies that exist as DICOM (`../shared/realdata/rsna2024_dicom_train_2studies`, which no bundled
foramen model trained on), each foramen is graded three ways: on the DICOM series as `predict` does (the model
chooses the Sagittal T1 slice), on the DICOM series at the slice the reader labelled (`grade_foramina(...,
instances=)`: the same code, only the slice forced), and on the stored slice of the shared slice set. Per
foramen: the reader's and the chosen instance, the point's distance to the reader's (series pixels; on the
reader's slice), each way's log loss; then the weighted log loss of each way, and of the chosen-slice way split
by whether the choice was the reader's slice.

    python bench/foramina_dicom_slices.py [--model foramina-sagt1-v6] [--realdata ../shared/realdata]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from spinegrade import vocab
from spinegrade.io.dicom import load_study
from spinegrade.metric import weighted_log_loss
from spinegrade.slicemodel.bundled import HELD_OUT_DICOM
from spinegrade.slicemodel.dicom import SLICES_MIXED, grade_foramina
from spinegrade.slicemodel.foramina import read_point_slices
from spinegrade.slicemodel.model import SliceModel
from spinegrade.slicemodel.pipeline import predict_rows

REALDATA = Path(__file__).resolve().parents[2] / "shared/realdata"
COORDS = "rsna2024_coords_fix01b_hengck23/DATA_PROCESSED_DIR/train_label_coordinates.fix01b.csv"
CLASSES = list(vocab.SEVERITY_KEYS)


def _graded(model, study, instances=None, slices: int | None = None) -> dict:
    points, findings, _ = grade_foramina(model, study, instances=instances, slices=slices)
    at = {(p.condition, p.level): p for p in points}
    return {(f.condition, f.level): (np.asarray(f.probs), at[f.condition, f.level]) for f in findings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="foramina-sagt1-v6")
    ap.add_argument("--realdata", type=Path, default=REALDATA)
    ap.add_argument("--slices", type=int, default=SLICES_MIXED, help="slices each foramen is graded on (mixed by "
                    f"peak height; default {SLICES_MIXED})")
    a = ap.parse_args()
    dicom = a.realdata / "rsna2024_dicom_train_2studies" / "train_images"
    if not dicom.is_dir() or not (a.realdata / COORDS).is_file():
        raise SystemExit(f"real data not found under {a.realdata} (put ../shared/realdata beside the repository)")
    train = pd.read_csv(a.realdata / "rsna2024_labels" / "train.csv", dtype={"study_id": str}).set_index("study_id")
    coords = pd.read_csv(a.realdata / COORDS, dtype={"study_id": str})
    model = SliceModel.load(a.model)
    ps = read_point_slices(a.realdata / "rsna2024_sagT1_foramina_vbs2004").subset_studies(HELD_OUT_DICOM)
    stored = pd.concat([ps.points[["study_id", "condition", "level"]].reset_index(drop=True),
                        predict_rows(model, ps)[CLASSES]], axis=1).set_index(["study_id", "condition", "level"])
    rows = []
    for sid in HELD_OUT_DICOM:
        study = load_study(dicom / sid)
        lab = coords[(coords["study_id"] == sid) & coords["condition"].str.contains("foraminal")]
        reader = {(r.condition, r.level): int(r.instance_number) for r in lab.itertuples()}
        chosen, forced = _graded(model, study, slices=a.slices), _graded(model, study, reader)
        for key, (p, pt) in chosen.items():
            y = vocab.parse_severity(train.loc[sid, vocab.target(*key)])
            r = lab[(lab["condition"] == key[0]) & (lab["level"] == key[1])]
            pf, ptf = forced.get(key, (None, None))
            row = {"study": sid, "foramen": f"{key[0].split('_')[0]} {key[1]}", "grade": CLASSES[y],
                   "reader_slice": reader.get(key, -1), "chosen_slice": pt.instance_number,
                   "ll_chosen": -np.log(max(p[y] / p.sum(), 1e-15)),
                   "ll_reader_slice": -np.log(max(pf[y] / pf.sum(), 1e-15)) if pf is not None else np.nan,
                   "y": y}
            if len(r) and ptf is not None:
                row["px_off_on_reader_slice"] = float(np.hypot(ptf.x - r["x"].iloc[0], ptf.y - r["y"].iloc[0]))
            q = stored.loc[(sid, *key)].to_numpy(float) if (sid, *key) in stored.index else None
            row["ll_stored"] = -np.log(max(q[y] / q.sum(), 1e-15)) if q is not None else np.nan
            row["p_chosen"], row["p_reader"], row["p_stored"] = p, pf, q
            rows.append(row)
    d = pd.DataFrame(rows)
    show = [c for c in d.columns if not c.startswith("p_") and c != "y"]
    print(f"{model.name}, each foramen graded on {a.slices} slice(s), on the {len(d)} foramina of {len(HELD_OUT_DICOM)} real DICOM studies no bundled model saw")
    print(d[show].to_string(index=False, float_format=lambda v: f"{v:.2f}"))

    def wll(sub: pd.DataFrame, col: str) -> float:
        ok = sub[col].notna() if col != "p_chosen" else np.ones(len(sub), bool)
        return weighted_log_loss(sub["y"].to_numpy()[ok], np.stack(sub.loc[ok, col].to_numpy())) if ok.any() else np.nan

    same = d["reader_slice"] == d["chosen_slice"]
    print(f"\nweighted log loss: DICOM, the model's slice {wll(d, 'p_chosen'):.3f}; DICOM, the reader's slice "
          f"{wll(d, 'p_reader'):.3f}; the stored slices {wll(d, 'p_stored'):.3f}")
    print(f"the model chose the reader's slice for {int(same.sum())} of {len(d)} foramina "
          f"(off by 1: {int(((d['reader_slice'] - d['chosen_slice']).abs() == 1).sum())}, by 2 or more: "
          f"{int(((d['reader_slice'] - d['chosen_slice']).abs() >= 2).sum())}); DICOM loss where it did "
          f"{wll(d[same], 'p_chosen'):.3f}, where it did not {wll(d[~same], 'p_chosen'):.3f} "
          f"(the same foramina on the reader's slice: {wll(d[~same], 'p_reader'):.3f})")


if __name__ == "__main__":
    main()
