"""Model-input conventions shared by every stage: the condition vector and a series' intensity range.

Kept apart from the stages (no torch, numpy only) so the localiser, the graders and the slice datasets read
one definition instead of importing each other.
"""

from __future__ import annotations

import numpy as np

from . import vocab

# Condition vector layout: level one-hot, side one-hot (zeros for central), family one-hot.
COND_LAYOUT: tuple[str, ...] = (tuple(f"level={lv}" for lv in vocab.LEVELS)
                                + tuple(f"side={s}" for s in vocab.SIDES)
                                + tuple(f"family={f}" for f in vocab.FAMILIES))
COND_DIM = len(COND_LAYOUT)


def condition_vector(condition: str, level: str) -> np.ndarray:
    """The model's condition input for a row (see COND_LAYOUT)."""
    c = vocab.CONDITION_BY_KEY[condition]
    v = np.zeros(COND_DIM, dtype=np.float32)
    v[vocab.LEVELS.index(level)] = 1
    if c.side is not None:
        v[len(vocab.LEVELS) + vocab.SIDES.index(c.side)] = 1
    v[len(vocab.LEVELS) + len(vocab.SIDES) + vocab.FAMILIES.index(c.family)] = 1
    return v


def series_intensity_range(pixels: np.ndarray) -> tuple[float, float]:
    """1st and 99.5th percentile of a series (sub-sampled: cheap on big stacks)."""
    p = np.asarray(pixels)
    step = max(1, p.size // 2_000_000)
    flat = p.reshape(-1)[::step]
    lo, hi = np.percentile(flat, [1.0, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)
