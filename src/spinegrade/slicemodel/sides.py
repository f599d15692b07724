"""The slices of one series read together (torch-free).

A foramen localiser looks at one slice at a time, and its worst misses are whole columns placed a level off: on
one slice it calls L4/L5 what is L5/S1. In one series every foramen of a level lies at nearly the same height
(one patient, one position; the left and right ones, and those seen on neighbouring slices), so a point half a
level spacing or more away from where the series' other slices place that level is likely wrong. Where its
second candidate (the highest peak of its heatmap away from the first, which `SliceModel.candidates` returns)
lies level with them, the point takes it. Rows are decided strongest second candidate first, each decision
seen by the next (two slices that disagree: the one with the stronger second candidate moves, not both); where
no second candidate agrees, nothing moves.

A swap exchanges a row's two candidates and its mixing weight (w -> 1 - w), so the grade, which mixes the two
candidates' grades by that weight, is unchanged: only the point moves.
"""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

APART = 0.6  # a point at least this share of the level spacing from the other slices' height is wrong
NEAR = 0.25  # a second candidate this close (share of the spacing) to the other slices' height is level with it
MIN_WEIGHT = 0.1  # a second candidate weaker than this is not taken


def level_spacing(heights: list[np.ndarray]) -> float:
    """The median height difference between neighbouring levels: `heights` holds columns of heights, one per
    level in level order (a slice's points, a side's labels), nan where a level is missing; nan without two
    neighbouring levels anywhere."""
    steps = np.concatenate([np.abs(np.diff(np.asarray(h, float))) for h in heights] or [np.zeros(0)])
    steps = steps[np.isfinite(steps)]
    return float(np.median(steps)) if steps.size else float("nan")


def agree_series(slices: list[Hashable], channels: list[int], picks: np.ndarray,
                 heights: dict[Hashable, np.ndarray]) -> np.ndarray:
    """Which rows of one series should take their second candidate.

    slices, channels: each row's slice (a key of `heights`) and level channel; picks: (N, 2, 3) each row's first
    (x, y, height) and second (x, y, weight) candidate, in one slice geometry; heights: every slice of the series
    looked at -> its first candidates' heights (C,), nan where a level has none. A row is compared with the
    median of the other slices' heights of its level (a row's own slice never votes)."""
    swap = np.zeros(len(slices), dtype=bool)
    spacing = level_spacing(list(heights.values()))
    if not np.isfinite(spacing) or spacing <= 0 or len(heights) < 2:
        return swap
    at = {k: np.array(h, float, copy=True) for k, h in heights.items()}
    for i in sorted(range(len(slices)), key=lambda i: -float(picks[i, 1, 2])):
        s, ch = slices[i], channels[i]
        others = np.array([h[ch] for k, h in at.items() if k != s])
        others = others[np.isfinite(others)]
        if not others.size or picks[i, 1, 2] < MIN_WEIGHT:
            continue
        level = float(np.median(others))
        if abs(picks[i, 0, 1] - level) >= APART * spacing and abs(picks[i, 1, 1] - level) < NEAR * spacing:
            swap[i] = True
            if s in at:
                at[s][ch] = picks[i, 1, 1]  # the slice now places the level there (what the next rows see)
    return swap


def make_series_agree(slices: list[Hashable], channels: list[int], picks: list[np.ndarray],
                      heights: dict[Hashable, np.ndarray]) -> list[np.ndarray]:
    """The rows of one series (their slices, level channels and (2, 3) candidates), each row's candidates
    exchanged where `agree_series` says."""
    swap = agree_series(slices, channels, np.stack(picks), heights)
    return [swapped(p) if sw else p for p, sw in zip(picks, swap)]


def swapped(pick: np.ndarray) -> np.ndarray:
    """A row's candidates exchanged: the second becomes the point (its height stays the first peak's), the first
    the second with weight 1 - w."""
    out = np.array(pick, float, copy=True)
    out[0, :2], out[1, :2] = pick[1, :2], pick[0, :2]
    out[1, 2] = 1.0 - float(pick[1, 2])
    return out
