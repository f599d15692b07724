import numpy as np

from spinegrade.localize.heatmap import decode_heatmaps, gaussian_heatmaps


def test_decode_recovers_subpixel_points():
    pts = np.array([[10.3, 20.7, 1.0], [40.0, 5.5, 0.4], [np.nan, np.nan, np.nan]])
    hm = gaussian_heatmaps(pts, 64, sigma=2.0)
    assert hm.shape == (3, 64, 64) and hm[2].max() == 0
    dec = decode_heatmaps(hm)
    assert np.allclose(dec[:2, :2], pts[:2, :2], atol=0.15)
    assert dec[0, 2] > 0.9 and 0.3 < dec[1, 2] < 0.45
