"""Model-input conventions: the intensity range from a subsample is the full one's within a small tolerance."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from spinegrade.inputs import intensity_of, series_intensity_range
from spinegrade.io.types import StoredPixels
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


@settings(max_examples=400, deadline=None)
@given(data=st.data(), kind=st.sampled_from(["u1", "u2", "i1", "i2"]), size=st.integers(1, 3000),
       transform=st.tuples(st.sampled_from([None, "mono1"]), st.sampled_from([1.0, 2.5, -0.75, 0.0, 1e-3, 4e28]),
                           st.sampled_from([0.0, -1024.0, 3.25, 1e30])))
def test_the_histogram_range_of_stored_integers_equals_numpys_percentile_bit_for_bit(data, kind, size, transform):
    """series_intensity_range takes 8/16-bit stored values' order statistics from a histogram instead of sorting
    them: the result must be np.percentile's of the converted values exactly, whatever the transform (inverting,
    negative or zero slope), the size (from one value) or how many values repeat."""
    info = np.iinfo(np.dtype(kind))
    lo_v = data.draw(st.integers(info.min, info.max))
    hi_v = data.draw(st.integers(lo_v, info.max))
    values = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1))).integers(
        lo_v, hi_v, size=(1, 1, size), endpoint=True).astype(kind)
    invert, slope, intercept = transform
    inv = np.nan if invert is None else float(info.min + info.max)
    stored = StoredPixels(values, [inv], [slope], [intercept])
    flat = stored.convert(values.reshape(-1), 0)
    want = np.percentile(flat, [1.0, 99.5])
    want = (float(want[0]), float(want[1] if want[1] > want[0] else want[0] + 1.0))
    got = series_intensity_range(stored)
    assert got == want or (np.isnan(want).any() and str(got) == str(want))
