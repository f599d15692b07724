"""Reproduce the bundled Sagittal T2 canal model `canal-sagt2-v1` from the shared real data.

Trains the default `train --slices` recipe of the canal task on every patient of the shared
`sudirman_sagT2_discs_yolospine` set (real mid-sagittal T2 slices, CC BY 4.0), then packs the two networks
(weights as float16), the temperature and the split into `src/spinegrade/bundled/canal-sagt2-v1/`. The model
card and bundle.json there are written by hand from `bench/canal_cv.py`'s table.

    python scripts/build_bundled_canal.py [--realdata ../shared/realdata] [--work /tmp/canal_bundle_run] [--device cpu]

About 8 minutes on 2 idle CPU cores.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spinegrade.slicemodel.bundled import BUNDLED_DIR, pack_run
from spinegrade.slicemodel.pipeline import slice_config, train_slices

NAME = "canal-sagt2-v1"
REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realdata", type=Path, default=REPO.parent / "shared" / "realdata")
    ap.add_argument("--work", type=Path, default=Path("/tmp/canal_bundle_run"), help="training run folder (resumable)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=BUNDLED_DIR / NAME)
    a = ap.parse_args()
    cfg = slice_config(a.realdata / "sudirman_sagT2_discs_yolospine", val_fold=None, device=a.device)
    summary = train_slices(cfg, a.work, resume=(a.work / "config.json").exists())
    pack_run(a.work, a.out)
    print(json.dumps(summary, indent=1))
    print(f"bundled model written to {a.out}; its MODEL_CARD.md and bundle.json carry the cross-validated figures")


if __name__ == "__main__":
    main()
