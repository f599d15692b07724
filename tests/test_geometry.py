import numpy as np
import pytest

from spinegrade.geometry import SeriesGeometry, nearest_slice_among, plane_of, project_point


def _sag(n=5, spacing=(0.5, 0.6), step=4.0):
    # RSNA-like sagittal: columns run anterior->posterior (+y), rows superior->inferior (-z)
    ori = [0, 1, 0, 0, 0, -1]
    pos = [[-10 + step * i, -50, 40] for i in range(n)]
    return SeriesGeometry(ori, pos, spacing, (100, 120))


def _ax(zs, spacing=(0.7, 0.7)):
    ori = [1, 0, 0, 0, 1, 0]
    return SeriesGeometry(ori, [[-40, -60, z] for z in zs], spacing, (128, 128))


def test_pixel_patient_roundtrip():
    g = _sag()
    p = g.pixel_to_patient(2, 10.0, 20.0)
    # x=10 columns * 0.6 mm along +y, y=20 rows * 0.5 mm along -z
    assert np.allclose(p, [-2, -50 + 6.0, 40 - 10.0])
    k, x, y, d = g.patient_to_pixel(p)
    assert (k, round(x, 6), round(y, 6), round(d, 6)) == (2, 10.0, 20.0, 0.0)
    assert g.plane == "sagittal" and plane_of([1, 0, 0, 0, 1, 0]) == "axial"
    assert g.slice_spacing == pytest.approx(4.0)
    assert np.allclose(g.affine(2) @ [10, 20, 0, 1], [*p, 1])


def test_nearest_slice_and_projection():
    sag, ax = _sag(), _ax([10, 14, 18, 22, 26])
    # a point 21 mm up -> the axial slice at z=22 (index 3), 1 mm off-plane
    k, x, y, d = project_point(sag, 2, 30.0, 38.0, ax)  # z = 40 - 38*0.5 = 21
    assert k == 3 and d == pytest.approx(1.0)
    p = sag.pixel_to_patient(2, 30.0, 38.0)
    assert ax.pixel_to_patient(k, x, y)[:2] == pytest.approx(p[:2])
    assert ax.fractional_slice(p) == pytest.approx(2.75)
    with pytest.raises(IndexError):
        sag.pixel_to_patient(9, 0, 0)


def test_nearest_among_stacks_skips_stacks_that_do_not_hold_the_point():
    a, b = _ax([0, 4]), _ax([20, 24])
    far = SeriesGeometry([1, 0, 0, 0, 1, 0], [[500, 500, 21]], (0.7, 0.7), (128, 128))  # right plane, wrong place
    i, k, x, y, d = nearest_slice_among([-20, -40, 21], [a, far, b])
    assert (i, k, round(d, 6)) == (2, 0, 1.0)
    assert nearest_slice_among([900, 900, 0], [a, b]) is None


def test_roundtrip_dict():
    g = _sag()
    h = SeriesGeometry.from_dict(g.to_dict())
    assert np.allclose(h.positions, g.positions) and h.shape == g.shape and h.pixel_spacing == g.pixel_spacing
