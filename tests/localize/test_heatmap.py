import numpy as np

from spinegrade.localize.heatmap import decode_heatmaps, disc_sums, gaussian_heatmaps


def test_decode_recovers_subpixel_points():
    pts = np.array([[10.3, 20.7, 1.0], [40.0, 5.5, 0.4], [np.nan, np.nan, np.nan]])
    hm = gaussian_heatmaps(pts, 64, sigma=2.0)
    assert hm.shape == (3, 64, 64) and hm[2].max() == 0
    dec = decode_heatmaps(hm)
    assert np.allclose(dec[:2, :2], pts[:2, :2], atol=0.15)
    assert dec[0, 2] > 0.9 and 0.3 < dec[1, 2] < 0.45


def test_disc_sums_count_each_pixel_within_the_radius():
    hm = np.zeros((9, 9))
    hm[4, 4] = 1.0
    sums = disc_sums(hm, 2.0)
    yy, xx = np.mgrid[0:9, 0:9]
    assert np.array_equal(sums, ((yy - 4) ** 2 + (xx - 4) ** 2 <= 4).astype(float))  # 13 pixels see it
    assert disc_sums(np.ones((5, 5)), 1.0)[0, 0] == 3 and disc_sums(np.ones((5, 5)), 1.0)[2, 2] == 5


def test_decoding_within_a_radius_follows_a_trailing_map_and_keeps_a_symmetric_peak():
    pts = np.array([[20.3, 18.6, 1.0]])
    blob = gaussian_heatmaps(pts, 48, sigma=1.5)
    assert np.allclose(decode_heatmaps(blob, 3.2)[0, :2], pts[0, :2], atol=0.15)  # symmetric: the same point
    # a map that trails off downwards (some readers click lower): the peak stays, the point within 3.2 px of
    # most of the map lies lower, between the peak and the trail
    trail = np.maximum(blob, gaussian_heatmaps(np.array([[20.3, 22.6, 0.6]]), 48, sigma=1.5))
    plain, within = decode_heatmaps(trail[None][0], 0.0)[0], decode_heatmaps(trail, 3.2)[0]
    assert abs(plain[1] - 18.6) < 0.3
    assert 19.2 < within[1] < 22.6 and abs(within[0] - 20.3) < 0.15
    assert within[2] == trail[0, int(round(within[1])), int(round(within[0]))]  # the height is the map's there


def test_the_spatial_loss_prefers_the_right_landmark_over_a_look_alike():
    """Two channels, two identical-looking blobs: the per-pixel loss barely tells a swapped prediction from
    the right one; the spatial cross-entropy does, and only counts channels whose landmark is on the slice."""
    import torch

    from spinegrade.localize.train import HeatmapTask

    size = 32
    target = torch.from_numpy(gaussian_heatmaps(np.array([[8, 8, 1.0], [24, 24, 1.0]]), size, 2.0))[None]
    right = (target * 12 - 6).clone()
    swapped = right.flip(1)  # each channel peaks at the other landmark
    batch = {"target": target}
    plain, spatial = HeatmapTask(spatial_weight=0.0), HeatmapTask(spatial_weight=0.1)
    gap_plain = plain.loss(swapped, batch) - plain.loss(right, batch)
    gap_spatial = spatial.loss(swapped, batch) - spatial.loss(right, batch)
    assert gap_spatial > gap_plain + 0.1 * 5  # the swap costs each channel several nats of cross-entropy
    off = {"target": torch.zeros_like(target)}  # no landmark on the slice: the spatial term adds nothing
    assert torch.isclose(spatial.loss(right, off), plain.loss(right, off))


def test_a_window_that_picks_the_peak_does_not_move_it():
    """The foramen search weights each heatmap towards the canal to pick which peak is the level's, then climbs
    back to the unweighted peak: the window's slope must not drag the point (it did, by 3-4 mm at 96 px)."""
    from spinegrade.localize.localizer import _climb

    size = 48
    hm = gaussian_heatmaps(np.array([[20.3, 30.6, 1.0], [20.0, 5.0, 0.9]]), size, 3.0).max(axis=0)
    yy, xx = np.mgrid[0:size, 0:size]
    window = np.exp(-((yy - 24.0) ** 2) / (2 * 4.0**2))  # centred between the two blobs, nearer the lower one
    py, px = divmod(int(np.argmax(hm * window)), size)
    assert (px, py) != (20, 31)  # the weighted maximum sits off the peak
    assert _climb(hm, px, py) == (20, 31)  # the lower blob's own peak, not the other blob's
    assert _climb(hm, 20, 5) == (20, 5)  # a peak stays where it is
