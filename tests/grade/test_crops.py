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


def _crop_from_whole_planes(pixels, spacing, k, x, y, spec, mirror, intensity, rot, scale):
    """extract_crop as it was before it read only the window its samples touch: every slice converted whole and
    sampled in float64 the same way. The windowed crop must give these exact values (a model's inputs, and so
    its grades, must not change)."""
    lo, hi = intensity
    half = spec.size_mm * scale / 2.0
    t = (np.arange(spec.out_px) + 0.5) / spec.out_px * 2 * half - half
    u, v = np.meshgrid(t, t)
    if mirror:
        u = -u
    if rot:
        a = np.deg2rad(rot)
        u, v = u * np.cos(a) - v * np.sin(a), u * np.sin(a) + v * np.cos(a)
    cols, rows = x + u / spacing[1], y + v / spacing[0]
    n, m = pixels.shape[1:]
    out = np.zeros((spec.n_slices, spec.out_px, spec.out_px), dtype=np.float32)
    for i, o in enumerate((np.arange(spec.n_slices) - spec.n_slices // 2) * spec.slice_step):
        p = np.asarray(pixels[int(np.clip(k + o, 0, len(pixels) - 1))], dtype=np.float32).astype(np.float64)
        inside = (rows >= 0) & (rows <= n - 1) & (cols >= 0) & (cols <= m - 1)
        r0 = np.clip(np.floor(rows), 0, max(n - 2, 0)).astype(np.intp)
        c0 = np.clip(np.floor(cols), 0, max(m - 2, 0)).astype(np.intp)
        r1, c1 = np.minimum(r0 + 1, n - 1), np.minimum(c0 + 1, m - 1)
        fr, fc = np.clip(rows - r0, 0.0, 1.0), np.clip(cols - c0, 0.0, 1.0)
        top = p[r0, c0] * (1 - fc) + p[r0, c1] * fc
        bottom = p[r1, c0] * (1 - fc) + p[r1, c1] * fc
        out[i] = np.where(inside, top * (1 - fr) + bottom * fr, float(lo)).astype(np.float32)
    return ((out - lo) / (hi - lo)).astype(np.float32)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 6), rows=st.integers(1, 70), cols=st.integers(1, 70), seed=st.integers(0, 2**16),
       stored=st.booleans(), mirror=st.booleans(), rot=st.sampled_from([0.0, 7.5, -30.0]),
       scale=st.sampled_from([1.0, 0.85, 1.2]), slice_step=st.integers(1, 2))
def test_a_crop_reads_only_its_window_and_equals_the_crop_of_whole_planes(n, rows, cols, seed, stored, mirror, rot,
                                                                          scale, slice_step):
    from spinegrade.io.types import StoredPixels

    rng = np.random.default_rng(seed)
    values = rng.integers(0, 4096, size=(n, rows, cols)).astype(np.uint16)
    slope, intercept = rng.uniform(0.5, 2.0, size=n), rng.uniform(-100, 100, size=n)
    pixels = StoredPixels(values, np.nan, slope, intercept) if stored else values.astype(np.float32) * 0.5 - 3
    spec = CropSpec(vocab.SAGITTAL_T2, size_mm=float(rng.uniform(5, 60)), out_px=int(rng.integers(1, 40)),
                    n_slices=3, slice_step=slice_step)
    spacing = tuple(rng.uniform(0.3, 2.0, size=2))
    k = int(rng.integers(-1, n + 1))
    x, y = rng.uniform(-20, cols + 20), rng.uniform(-20, rows + 20)  # near, on or off the image
    intensity = (float(rng.uniform(-200, 100)), float(rng.uniform(200, 5000)))
    got = extract_crop(pixels, spacing, k, x, y, spec, mirror=mirror, intensity=intensity, rotation_deg=rot,
                       scale=scale)
    want = _crop_from_whole_planes(pixels, spacing, k, x, y, spec, mirror, intensity, rot, scale)
    np.testing.assert_array_equal(got, want)
