"""The numpy resampling that inference uses without torch gives what the torch resampling of training gives:
bilinear sampling through affines (letterbox, rotated and zoomed crops, crops over the image's edge) and the
per-sample z-score."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from spinegrade.slicemodel.data import Frame
from spinegrade.slicemodel.warp import (
    crop_affine,
    letterbox_affine,
    warp,
    warp_numpy,
    zscore,
    zscore_numpy,
)


def _image(seed: int, h: int, w: int) -> np.ndarray:
    return np.random.default_rng(seed).random((h, w)).astype(np.float32)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**16), h=st.integers(2, 90), w=st.integers(2, 90), out=st.integers(1, 40),
       angle=st.floats(-180, 180), zoom=st.floats(0.3, 3.0), cu=st.floats(-0.3, 1.3), cv=st.floats(-0.3, 1.3),
       frac=st.floats(0.05, 1.5))
def test_crops_through_any_affine_match_grid_sample(seed, h, w, out, angle, zoom, cu, cv, frac):
    rows, cols = h * 3, w * 2  # a stretched stored image, as the stored JPEGs are
    frame = Frame(rows, cols, (h, w), out)
    img = _image(seed, h, w)
    affs = [crop_affine(frame, (cu * cols, cv * rows), frac * max(rows, cols), out, angle, zoom),
            letterbox_affine(frame)]
    want = warp(torch.from_numpy(img), affs, out).numpy()
    got = warp_numpy(img, affs, out)
    assert got.dtype == np.float32 and got.shape == want.shape == (2, 1, out, out)
    assert np.abs(got - want).max() < 2e-6


def test_sample_on_a_pixel_centre_reads_that_pixel_and_outside_reads_zero():
    img = _image(1, 5, 7)
    frame = Frame(5, 7, (5, 7), 1)
    on = warp_numpy(img, [crop_affine(frame, (3.5, 2.5), 1.0, 1)], 1)  # the centre of pixel (row 2, col 3)
    off = warp_numpy(img, [crop_affine(frame, (-3.0, 2.5), 1.0, 1)], 1)
    assert on[0, 0, 0, 0] == pytest.approx(img[2, 3], abs=1e-6) and off[0, 0, 0, 0] == 0


@pytest.mark.parametrize("shape", [(3, 1, 8, 8), (2, 1, 64, 64), (1, 1, 2, 3)])
def test_zscore_matches_torch_unbiased(shape):
    x = np.random.default_rng(0).normal(3, 2, shape).astype(np.float32)
    x[0, 0, 0, 0] = 40.0
    assert np.abs(zscore_numpy(x) - zscore(torch.from_numpy(x)).numpy()).max() < 1e-5
    flat = np.full(shape, 0.25, np.float32)  # a constant input: std clamped, zeros out
    assert np.abs(zscore_numpy(flat)).max() == 0 and np.abs(zscore(torch.from_numpy(flat)).numpy()).max() == 0
