"""The two sides of a series read together: a level whose left and right points sit a level apart takes the
second candidate of the side that can agree; the grade mixture is unchanged by a swap."""

from __future__ import annotations

import numpy as np

from spinegrade.slicemodel.sides import APART, MIN_WEIGHT, agree_sides, level_spacing, swapped

HEIGHTS = np.array([50.0, 80.0, 110.0, 140.0, 170.0])  # five levels, 30 px apart


def _picks(first_y, second_y, weight, x=120.0):
    p = np.zeros((len(first_y), 2, 3))
    p[:, 0] = np.column_stack([np.full(len(first_y), x), first_y, np.full(len(first_y), 0.8)])
    p[:, 1] = np.column_stack([np.full(len(first_y), x + 2), second_y, np.broadcast_to(weight, len(first_y))])
    return p


def _series(left, right):
    sides = ["left"] * 5 + ["right"] * 5
    channels = list(range(5)) * 2
    return sides, channels, np.concatenate([left, right])


def test_spacing_is_the_median_step_between_neighbouring_levels():
    assert level_spacing([HEIGHTS, HEIGHTS[:3] + 2]) == 30.0
    assert level_spacing([np.array([50.0, np.nan, 110.0, 140.0])]) == 30.0  # a missing level: no step across it
    assert np.isnan(level_spacing([np.zeros(1)])) and np.isnan(level_spacing([np.array([1.0, np.nan, 3.0])]))


def test_a_side_placed_a_level_off_takes_its_second_candidate():
    left = _picks(HEIGHTS, HEIGHTS + 60, 0.05)
    # the right column sits one level low; its second peaks lie where the left ones are
    right = _picks(HEIGHTS + 30, HEIGHTS + 1.5, 0.3)
    swap = agree_sides(*_series(left, right), 30.0)
    assert swap.tolist() == [False] * 5 + [True] * 5


def test_nothing_moves_where_the_sides_agree_or_no_second_candidate_can():
    left = _picks(HEIGHTS, HEIGHTS + 30, 0.4)
    close = _picks(HEIGHTS + (APART * 30 - 2), HEIGHTS, 0.4)  # apart, but less than APART of a spacing
    assert not agree_sides(*_series(left, close), 30.0).any()
    far = _picks(HEIGHTS + 30, HEIGHTS + 15, 0.4)  # the second peaks are not level with the other side
    assert not agree_sides(*_series(_picks(HEIGHTS, HEIGHTS + 70, 0.4), far), 30.0).any()
    weak = _picks(HEIGHTS + 30, HEIGHTS, MIN_WEIGHT / 2)  # level with it, too weak to take
    assert not agree_sides(*_series(_picks(HEIGHTS, HEIGHTS + 70, 0.4), weak), 30.0).any()
    assert not agree_sides(*_series(left, _picks(HEIGHTS + 30, HEIGHTS, 0.4)), float("nan")).any()


def test_where_both_sides_could_the_stronger_second_candidate_wins():
    left = _picks(HEIGHTS, HEIGHTS + 30, 0.2)  # its second peaks level with the right's points
    right = _picks(HEIGHTS + 30, HEIGHTS, 0.5)  # its second peaks level with the left's points
    swap = agree_sides(*_series(left, right), 30.0)
    assert swap.tolist() == [False] * 5 + [True] * 5
    swap = agree_sides(*_series(_picks(HEIGHTS, HEIGHTS + 30, 0.6), right), 30.0)
    assert swap.tolist() == [True] * 5 + [False] * 5


def test_a_level_asked_on_two_slices_is_left_alone():
    p = _picks(np.array([50.0, 52.0, 80.0]), np.array([0.0, 0.0, 50.0]), 0.5)
    assert not agree_sides(["left", "left", "right"], [0, 0, 0], p, 30.0).any()


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
    monkeypatch.setattr(FORAMINA, "sides_together", False)
    off = predict_rows(model, ps, images)
    right = ps.points["condition"].str.startswith("right").to_numpy()
    moved = right & (ps.points.groupby("level")["condition"].transform("nunique").to_numpy() == 2)
    assert moved.any()
    assert np.allclose(on.loc[moved, "y_pred"], off.loc[moved, "y_pred"] - 8.0)
    assert np.allclose(on.loc[~moved, ["x_pred", "y_pred"]], off.loc[~moved, ["x_pred", "y_pred"]])
    cols = ["normal_mild", "moderate", "severe"]
    assert np.allclose(on[cols].to_numpy(), off[cols].to_numpy(), atol=1e-6)
