import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from spinegrade import vocab
from spinegrade.grade.crops import CropSpec, bilinear, extract_crop, mirror_for


def _disc_image(spacing_mm: float, size_mm: float = 100.0, radius_mm: float = 8.0, centre_mm=(60.0, 40.0)):
    """A bright disc of fixed physical size on a grid of the given pixel spacing (3 identical slices)."""
    n = int(round(size_mm / spacing_mm))
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) * spacing_mm
    img = ((xx - centre_mm[0]) ** 2 + (yy - centre_mm[1]) ** 2 <= radius_mm**2).astype(np.float32) * 100
    return np.stack([img] * 3)


def test_crop_has_fixed_physical_size_whatever_the_spacing():
    spec = CropSpec(vocab.AXIAL_T2, size_mm=32.0, out_px=32, n_slices=3)
    crops = []
    for sp in (0.5, 0.8):
        px = _disc_image(sp)
        x, y = 60.0 / sp - 0.5, 40.0 / sp - 0.5  # the disc centre in pixel coordinates
        crops.append(extract_crop(px, (sp, sp), 1, x, y, spec, intensity=(0.0, 100.0)))
    a, b = crops
    assert a.shape == (3, 32, 32)
    # disc of radius 8 mm in a 32 mm field: about pi*8^2/32^2 = 19.6 % of the crop, at both spacings
    for c in (a, b):
        assert abs((c[1] > 0.5).mean() - np.pi * 64 / 1024) < 0.03
    assert np.abs(a - b).mean() < 0.05


def test_mirror_flips_columns_and_only_for_right_axial():
    px = _disc_image(0.5, centre_mm=(66.0, 40.0))  # disc 6 mm to the image right of the crop centre
    spec = CropSpec(vocab.AXIAL_T2, size_mm=32.0, out_px=32)
    plain = extract_crop(px, (0.5, 0.5), 1, 119.5, 79.5, spec, intensity=(0, 100))
    mirrored = extract_crop(px, (0.5, 0.5), 1, 119.5, 79.5, spec, mirror=True, intensity=(0, 100))
    assert np.allclose(mirrored, plain[:, :, ::-1], atol=1e-5)
    assert plain[1, :, 16:].sum() > 10 * plain[1, :, :16].sum()
    assert mirror_for("right_subarticular_stenosis", vocab.AXIAL_T2)
    assert not mirror_for("left_subarticular_stenosis", vocab.AXIAL_T2)
    assert not mirror_for("right_neural_foraminal_narrowing", vocab.SAGITTAL_T1)


def test_slices_clip_at_the_stack_edges():
    px = np.stack([np.full((20, 20), v, np.float32) for v in (0, 50, 100)])
    spec = CropSpec(vocab.SAGITTAL_T2, size_mm=5.0, out_px=4, n_slices=3)
    c = extract_crop(px, (1.0, 1.0), 0, 10, 10, spec, intensity=(0, 100))
    assert np.allclose(c[:, 2, 2], [0.0, 0.0, 0.5])  # slice -1 clips to slice 0


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 30), m=st.integers(2, 30), seed=st.integers(0, 2**16), cval=st.floats(-50, 50))
def test_bilinear_equals_scipys_map_coordinates_inside_at_the_edges_and_outside(n, m, seed, cval):
    """The crops' sampler replaced scipy's (so predicting does not import scipy): same values everywhere,
    including positions exactly on the last pixel centre and just outside it."""
    from scipy.ndimage import map_coordinates

    rng = np.random.default_rng(seed)
    plane = (rng.normal(size=(n, m)) * 100).astype(np.float32)
    r = rng.uniform(-2, n + 1, size=(9, 11))
    c = rng.uniform(-2, m + 1, size=(9, 11))
    r[0, :4], c[0, :4] = [0, n - 1, n - 1 + 1e-9, -1e-9], [m - 1, 0, 0, m - 1]
    want = map_coordinates(plane, [r, c], order=1, mode="constant", cval=cval)
    np.testing.assert_allclose(bilinear(plane, r, c, cval=cval), want, rtol=1e-6, atol=1e-4)
