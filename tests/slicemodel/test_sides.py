"""The slices of a series read together: a point a level away from where the series' other slices place its level
takes its second candidate where that agrees; the grade mixture is unchanged by a swap."""

from __future__ import annotations

import numpy as np

from spinegrade.slicemodel.sides import APART, MIN_WEIGHT, agree_series, level_spacing, swapped

HEIGHTS = np.array([50.0, 80.0, 110.0, 140.0, 170.0])  # five levels, 30 px apart


def _picks(first_y, second_y, weight, x=120.0):
    p = np.zeros((len(first_y), 2, 3))
    p[:, 0] = np.column_stack([np.full(len(first_y), x), first_y, np.full(len(first_y), 0.8)])
    p[:, 1] = np.column_stack([np.full(len(first_y), x + 2), second_y, np.broadcast_to(weight, len(first_y))])
    return p


def _series(*columns):
    """Each slice's five rows (levels 0-4); its heights are its first candidates'."""
    slices = [f"s{k}" for k, c in enumerate(columns) for _ in range(len(c))]
    channels = [ch for c in columns for ch in range(len(c))]
    heights = {f"s{k}": c[:, 0, 1] for k, c in enumerate(columns)}
    return slices, channels, np.concatenate(columns), heights


def test_spacing_is_the_median_step_between_neighbouring_levels():
    assert level_spacing([HEIGHTS, HEIGHTS[:3] + 2]) == 30.0
    assert level_spacing([np.array([50.0, np.nan, 110.0, 140.0])]) == 30.0  # a missing level: no step across it
    assert np.isnan(level_spacing([np.zeros(1)])) and np.isnan(level_spacing([np.array([1.0, np.nan, 3.0])]))


def test_a_slice_placed_a_level_off_takes_its_second_candidate():
    left = _picks(HEIGHTS, HEIGHTS + 60, 0.05)
    # the right column sits one level low; its second peaks lie where the left ones are
    right = _picks(HEIGHTS + 30, HEIGHTS + 1.5, 0.3)
    swap = agree_series(*_series(left, right))
    assert swap.tolist() == [False] * 5 + [True] * 5


def test_nothing_moves_where_the_slices_agree_or_no_second_candidate_can():
    left = _picks(HEIGHTS, HEIGHTS + 30, 0.4)
    close = _picks(HEIGHTS + (APART * 30 - 2), HEIGHTS, 0.4)  # apart, but less than APART of a spacing
    assert not agree_series(*_series(left, close)).any()
    far = _picks(HEIGHTS + 30, HEIGHTS + 15, 0.4)  # the second peaks are not level with the other slice
    assert not agree_series(*_series(_picks(HEIGHTS, HEIGHTS + 70, 0.4), far)).any()
    weak = _picks(HEIGHTS + 30, HEIGHTS, MIN_WEIGHT / 2)  # level with it, too weak to take
    assert not agree_series(*_series(_picks(HEIGHTS, HEIGHTS + 70, 0.4), weak)).any()
    one = _picks(HEIGHTS, HEIGHTS + 30, 0.9)
    assert not agree_series(*_series(one)).any()  # a slice alone: its own heights never vote
    flat = _picks(np.full(5, 50.0), np.full(5, 80.0), 0.9)  # no spacing between levels to measure by
    assert not agree_series(*_series(flat, _picks(np.full(5, 80.0), np.full(5, 50.0), 0.9))).any()


def test_where_two_slices_disagree_the_stronger_second_candidate_moves_not_both():
    left = _picks(HEIGHTS, HEIGHTS + 30, 0.2)  # its second peaks level with the right's points
    right = _picks(HEIGHTS + 30, HEIGHTS, 0.5)  # its second peaks level with the left's points
    swap = agree_series(*_series(left, right))
    assert swap.tolist() == [False] * 5 + [True] * 5
    swap = agree_series(*_series(_picks(HEIGHTS, HEIGHTS + 30, 0.6), right))
    assert swap.tolist() == [True] * 5 + [False] * 5


def test_the_other_slices_median_decides():
    a = _picks(HEIGHTS, HEIGHTS + 30, 0.5)  # a strong second candidate, but a and b agree
    b = _picks(HEIGHTS + 1, HEIGHTS + 60, 0.0)
    c = _picks(HEIGHTS + 30, HEIGHTS + 2, 0.3)  # a level low against a and b
    swap = agree_series(*_series(a, b, c))
    assert swap.tolist() == [False] * 10 + [True] * 5
    # one level of one slice off alone moves alone
    d = _picks(HEIGHTS, HEIGHTS + 30, 0.0)
    d[3, 0, 1], d[3, 1] = HEIGHTS[3] - 30, (120.0, HEIGHTS[3] + 1, 0.4)
    swap = agree_series(*_series(a, b, d))
    assert np.flatnonzero(swap).tolist() == [13]


def test_a_swap_moves_the_point_and_keeps_the_grade_mixture():
    pick = np.array([[10.0, 20.0, 0.7], [12.0, 50.0, 0.3]])
    s = swapped(pick)
    assert s[0, :2].tolist() == [12.0, 50.0] and s[1, :2].tolist() == [10.0, 20.0] and np.isclose(s[1, 2], 0.7)
    g_first, g_second = np.array([0.7, 0.2, 0.1]), np.array([0.2, 0.5, 0.3])  # grades at the two places
    before = (1 - pick[1, 2]) * g_first + pick[1, 2] * g_second
    after = (1 - s[1, 2]) * g_second + s[1, 2] * g_first
    assert np.allclose(before, after)
    assert pick[0, 1] == 20.0  # the input is not changed


def test_predict_rows_moves_the_point_and_keeps_every_probability(run, folder, monkeypatch):
    """The plumbing of evaluate --slices: a study's right side placed a level low, its second peaks level with
    the left side's points; the right rows get their second candidates, every probability is as before."""
    from spinegrade.slicemodel.data import load_images
    from spinegrade.slicemodel.foramina import FORAMINA, read_point_slices
    from spinegrade.slicemodel.model import SliceModel
    from spinegrade.slicemodel.pipeline import predict_rows

    ps = read_point_slices(folder)
    ps = ps.subset_studies([ps.points["study_id"].iloc[0]])
    images = load_images(ps)
    right_imgs = [images[p] for p in set(ps.points.loc[ps.points["condition"].str.startswith("right"), "path"])]
    model = SliceModel.load(run)
    real = model.candidates

    def candidates(img, rows, cols, tta=True):
        c = real(img, rows, cols, tta=tta)
        left_y = 10.0 + 8.0 * np.arange(len(c))  # the left side's column, 8 px between levels
        c[:, 1] = np.column_stack([c[:, 0, 0] + 1, left_y + 30.0, np.full(len(c), 0.3)])
        c[:, 0, 1] = left_y
        if any(np.array_equal(img, im) for im in right_imgs):  # a level low, its second peaks level with the left's
            c[:, 0, 1], c[:, 1, 1] = left_y + 8.0, left_y
        return c

    monkeypatch.setattr(model, "candidates", candidates)
    on = predict_rows(model, ps, images)
    monkeypatch.setattr(FORAMINA, "series_together", False)
    off = predict_rows(model, ps, images)
    right = ps.points["condition"].str.startswith("right").to_numpy()
    moved = right  # every right row, asked on the left or not: the left slices place every level
    assert moved.any() and not moved.all()
    assert np.allclose(on.loc[moved, "y_pred"], off.loc[moved, "y_pred"] - 8.0)
    assert np.allclose(on.loc[~moved, ["x_pred", "y_pred"]], off.loc[~moved, ["x_pred", "y_pred"]])
    cols = ["normal_mild", "moderate", "severe"]
    assert np.allclose(on[cols].to_numpy(), off[cols].to_numpy(), atol=1e-6)
