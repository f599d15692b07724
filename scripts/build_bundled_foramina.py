"""Reproduce the bundled foramen model `foramina-sagt1-v1` from the shared real data.

Trains the default `train --slices` recipe on every study of the shared foramina set except the two that also
exist as DICOM (they are kept out so the bundled model can be checked on them honestly), then packs the two
networks (weights as float16), the temperature, the split, a per-target prior from the challenge's train.csv
(same studies left out) and the model card into `src/spinegrade/bundled/foramina-sagt1-v1/`.

    python scripts/build_bundled_foramina.py [--realdata ../shared/realdata] [--work /tmp/bundle_run] [--device cpu]

About 35 minutes on 2 CPU cores. RSNA data: non-commercial research use; see the model card.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spinegrade.files import atomic_write_text
from spinegrade.slicemodel.bundled import HELD_OUT_DICOM, pack_run, target_prior
from spinegrade.slicemodel.model import BUNDLED_DIR, CALIBRATION, PRIOR, SPLIT
from spinegrade.slicemodel.pipeline import slice_config, train_slices

NAME = "foramina-sagt1-v1"
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", type=Path, default=REPO.parent / "shared" / "realdata")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bundle_run"), help="training run folder (resumable)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=BUNDLED_DIR / NAME)
    a = ap.parse_args()
    slices = a.realdata / "rsna2024_sagT1_foramina_vbs2004"
    cfg = slice_config(slices, val_fold=None, device=a.device, exclude_studies=HELD_OUT_DICOM)
    summary = train_slices(cfg, a.work, resume=(a.work / "config.json").exists())
    out = a.out
    pack_run(a.work, out, (CALIBRATION, SPLIT))
    prior = target_prior(a.realdata / "rsna2024_labels" / "train.csv", HELD_OUT_DICOM)
    atomic_write_text(out / PRIOR, json.dumps({"source": "RSNA 2024 train.csv, weight-optimal constant per target, "
                                                         "studies 100206310 and 1002894806 left out",
                                               "targets": prior}, indent=1))
    print(json.dumps(summary, indent=1))
    print(f"bundled model written to {out}; update MODEL_CARD.md with the cross-validated figures")


if __name__ == "__main__":
    main()
