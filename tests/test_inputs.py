"""Model-input conventions: the intensity range from a subsample is the full one's within a small tolerance."""

from __future__ import annotations

import numpy as np

from spinegrade.inputs import intensity_of, series_intensity_range
from spinegrade.io.dicom import load_study


def test_subsampled_intensity_range_matches_every_pixel_on_real_studies(two_studies):
    n = 0
    for study_dir in sorted((two_studies / "train_images").iterdir()):
        study = load_study(study_dir, stored=True)
        for s in study.series:
            full = np.percentile(np.asarray(s.pixels), [1.0, 99.5])
            lo, hi = series_intensity_range(s.pixels)
            assert (lo, hi) == series_intensity_range(np.asarray(s.pixels))  # stored and float pixels agree
            span = full[1] - full[0]
            assert abs(lo - full[0]) <= 0.01 * span and abs(hi - full[1]) <= 0.01 * span, (s.series_id, full, lo, hi)
            assert intensity_of(s) == (lo, hi) and s.intensity == (lo, hi)
            n += 1
    assert n >= 6


def test_subsample_stride_crosses_every_column():
    # an image whose right half is bright: a stride that is a multiple of the row length would see one column
    px = np.zeros((40, 512, 512), dtype=np.float32)
    px[:, :, 256:] = 1000.0
    lo, hi = series_intensity_range(px)
    assert (lo, hi) == (0.0, 1000.0)
