"""The two sides of one series read together (torch-free).

A foramen localiser looks at one slice at a time, and its worst misses are whole columns placed a level off: on
one side it calls L4/L5 what is L5/S1. In one series the left and right foramina of a level lie at nearly the same
height (one patient, one position), so a level whose two points are half a level spacing or more apart has one
of them wrong. Where one side's second candidate (the highest peak of its heatmap away from the first, which
`SliceModel.candidates` returns) lies level with the other side's point, that side takes its second candidate.
Where both could, the one with the larger weight; where neither can, nothing moves.

A swap exchanges a row's two candidates and its mixing weight (w -> 1 - w), so the grade, which mixes the two
candidates' grades by that weight, is unchanged: only the point moves.
"""

from __future__ import annotations

import numpy as np

from .. import vocab

APART = 0.6  # the two sides' heights differ by at least this share of the level spacing: one of them is wrong
NEAR = 0.25  # a second candidate this close (share of the spacing) to the other side's height is level with it
MIN_WEIGHT = 0.1  # a second candidate weaker than this is not taken


def level_spacing(heights: list[np.ndarray]) -> float:
    """The median height difference between neighbouring levels: `heights` holds columns of heights, one per
    level in level order (a slice's points, a side's labels), nan where a level is missing; nan without two
    neighbouring levels anywhere."""
    steps = np.concatenate([np.abs(np.diff(np.asarray(h, float))) for h in heights] or [np.zeros(0)])
    steps = steps[np.isfinite(steps)]
    return float(np.median(steps)) if steps.size else float("nan")


def agree_sides(sides: list[str], channels: list[int], picks: np.ndarray, spacing: float) -> np.ndarray:
    """Which rows of one series should take their second candidate.

    sides, channels: each row's side (left / right) and level channel; picks: (N, 2, 3) each row's first
    (x, y, height) and second (x, y, weight) candidate, in one slice geometry. A (side, channel) asked on several
    slices is left alone."""
    swap = np.zeros(len(sides), dtype=bool)
    if not np.isfinite(spacing) or spacing <= 0:
        return swap
    at: dict[tuple[str, int], list[int]] = {}
    for i, key in enumerate(zip(sides, channels)):
        at.setdefault(key, []).append(i)
    for (side, ch), ix in at.items():
        other = at.get(("right", ch)) if side == "left" else None
        if other is None or len(ix) != 1 or len(other) != 1:
            continue
        i, j = ix[0], other[0]
        if abs(picks[i, 0, 1] - picks[j, 0, 1]) < APART * spacing:
            continue
        options = [(picks[a, 1, 2], a) for a, b in ((i, j), (j, i))
                   if picks[a, 1, 2] >= MIN_WEIGHT and abs(picks[a, 1, 1] - picks[b, 0, 1]) < NEAR * spacing]
        if options:
            swap[max(options)[1]] = True
    return swap


def make_sides_agree(conditions: list[str], channels: list[int], picks: list[np.ndarray],
                     heights: list[np.ndarray]) -> list[np.ndarray]:
    """The rows of one series (their conditions, level channels and (2, 3) candidates), each row's candidates
    exchanged where `agree_sides` says; `heights`: the series' slices' first-candidate heights per channel, for
    the level spacing."""
    sides = [getattr(vocab.CONDITION_BY_KEY.get(c), "side", None) for c in conditions]
    swap = agree_sides(sides, channels, np.stack(picks), level_spacing(heights))
    return [swapped(p) if sw else p for p, sw in zip(picks, swap)]


def swapped(pick: np.ndarray) -> np.ndarray:
    """A row's candidates exchanged: the second becomes the point (its height stays the first peak's), the first
    the second with weight 1 - w."""
    out = np.array(pick, float, copy=True)
    out[0, :2], out[1, :2] = pick[1, :2], pick[0, :2]
    out[1, 2] = 1.0 - float(pick[1, 2])
    return out
