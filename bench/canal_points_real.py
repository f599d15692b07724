"""Where the spinal canal points land on the two real RSNA DICOM studies, against the radiologists' points.

Predicts the two studies with the bundled models (no --model: the bundled Sagittal T2 canal model places the
points) and, given --run, with a study run's own Sagittal T2 localiser (e.g. the demo's synthetic-trained
run), and prints per study and level the in-plane distance (mm) and the instances off between each predicted
canal point and the labelled one, then a summary (within 5 mm and 1 instance).

    python bench/canal_points_real.py [--run spinegrade_demo/run] [--realdata ../shared/realdata]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pandas as pd

from spinegrade.evaluate.study import canal_point_table
from spinegrade.predict import Predictor, find_studies

REPO = Path(__file__).resolve().parents[1]


def table(predictor: Predictor, dataset: Path, coords: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for job in find_studies(dataset):
        study = predictor.read(job.path, job.descriptions, job.study_id)
        res = predictor.predict_loaded(study)
        rows += canal_point_table(res, study, coords[coords["study_id"].astype(str) == job.study_id])
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", type=Path, default=REPO.parent / "shared" / "realdata")
    ap.add_argument("--run", type=Path, default=None, help="a study run whose own Sagittal T2 localiser to compare")
    a = ap.parse_args()
    src = a.realdata / "rsna2024_dicom_train_2studies"
    if not src.is_dir():
        raise SystemExit(f"{src}: the two real studies are missing (put ../shared/realdata beside the repository)")
    import sys

    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_real_dataset  # the tests' RSNA-layout view of the two studies

    coords = pd.read_csv(src / "DERIVED_coords_these_studies.csv")
    with tempfile.TemporaryDirectory() as tmp:
        ds = build_real_dataset(a.realdata, Path(tmp) / "ds")
        models = {"bundled canal model": Predictor(None)}
        if a.run is not None:
            models[f"run {a.run.name} (own Sagittal T2 localiser)"] = Predictor(a.run, canal_points="run")
        out = []
        for name, pr in models.items():
            t = table(pr, ds, coords).assign(model=name)
            out.append(t)
        df = pd.concat(out, ignore_index=True)
    with pd.option_context("display.width", 160, "display.float_format", "{:.1f}".format):
        wide = df.pivot_table(index=["study_id", "level"], columns="model", values=["in_plane_mm", "instances_off"])
        print(wide.to_string())
    for name, g in df.groupby("model"):
        ok = (g["in_plane_mm"] <= 5) & (g["instances_off"].abs() <= 1)
        print(f"{name}: {int(ok.sum())} of {len(g)} within 5 mm in plane and 1 instance; median "
              f"{g['in_plane_mm'].median():.1f} mm, max {g['in_plane_mm'].max():.1f} mm, "
              f"instances off {sorted(g['instances_off'].astype(int).tolist())}")


if __name__ == "__main__":
    main()
