"""Model-input conventions shared by every stage: the condition vector and a series' intensity range.

Kept apart from the stages (no torch, numpy only) so the localiser, the graders and the slice datasets read
one definition instead of importing each other.
"""

from __future__ import annotations

import math

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


# Percentiles of this many evenly spaced pixels stay within 1 % of the range of those of every pixel on the real
# studies (tests/test_inputs.py), at a cost that does not grow with the series.
INTENSITY_SAMPLES = 200_000


def _sample_step(size: int, cols: int) -> int:
    """A stride giving about INTENSITY_SAMPLES pixels that shares no factor with the row length, so the samples
    walk across every column instead of repeating a few (a stride of 512 on 512-wide images reads one column)."""
    step = max(1, size // INTENSITY_SAMPLES)
    while step > 1 and math.gcd(step, cols) != 1:
        step += 1
    return step


def series_intensity_range(pixels) -> tuple[float, float]:
    """1st and 99.5th percentile of a series (n, rows, cols): an array or a StoredPixels, from a deterministic
    subsample of its pixels (see INTENSITY_SAMPLES)."""
    values = getattr(pixels, "values", None)
    if values is not None and getattr(pixels, "uniform", False):
        # stored integers: sample them, then convert only the samples (every slice has the same transform)
        step = _sample_step(values.size, values.shape[-1])
        sample = np.asarray(values).reshape(-1)[::step]
        if sample.dtype.kind in "ui" and sample.dtype.itemsize <= 2 and sample.size:
            return _range_of_small_ints(sample, lambda v: pixels.convert(v, 0))
        flat = pixels.convert(sample, 0)
    else:
        p = np.asarray(pixels)
        step = _sample_step(p.size, p.shape[-1] if p.ndim else 1)
        flat = p.reshape(-1)[::step]
    lo, hi = np.percentile(flat, [1.0, 99.5])
    return float(lo), float(hi if hi > lo else lo + 1.0)


_QUANTILES = (1.0 / 100, 99.5 / 100)


def _range_of_small_ints(sample: np.ndarray, convert) -> tuple[float, float]:
    """`np.percentile(convert(sample), [1, 99.5])`, bit for bit, without sorting: a histogram of the 8- or 16-bit
    stored values gives the order statistics that numpy's "linear" method interpolates between, and only those
    are converted (the transform, an inversion and a rescale in float32, never reverses the order of two values
    except all of them at once). tests/test_inputs.py checks the equality on random data."""
    signed = sample.dtype.kind == "i"
    base = int(sample.min()) if signed else 0  # bincount takes no negative values
    counts = np.bincount(sample.astype(np.int32) - base if base else sample)
    ends = np.cumsum(counts)  # ends[j]: values <= base + j
    n = int(sample.size)
    # the smallest and largest values from the histogram (its length is the largest - base + 1), not two more
    # passes over the strided sample
    smallest = base if signed else int(np.argmax(counts > 0))
    lo_hi = convert(np.array([smallest, base + len(counts) - 1], dtype=sample.dtype))
    descending = bool(lo_hi[0] > lo_hi[1])

    def kth(k: int) -> np.float32:  # the k-th smallest converted value (0-based)
        k = n - 1 - k if descending else k
        stored = int(np.searchsorted(ends, k, side="right")) + base
        return convert(np.array([stored], dtype=sample.dtype))[0]

    out = []
    for q in _QUANTILES:  # numpy's "linear" virtual index, _get_indexes, _get_gamma and _lerp, in that order
        virtual = (n - 1) * q
        if virtual >= n - 1 or virtual < 0:  # numpy takes the last (first) value twice: no interpolation
            a = b = kth(n - 1 if virtual >= 0 else 0)
            gamma = 0.0
        else:
            prev = math.floor(virtual)
            a, b = kth(prev), kth(prev + 1)
            gamma = virtual - prev
        diff = float(np.float32(b) - np.float32(a))
        out.append(float(b) - diff * (1 - gamma) if gamma >= 0.5 else float(a) + diff * gamma)
    lo, hi = out
    return float(lo), float(hi if hi > lo else lo + 1.0)


def intensity_of(series) -> tuple[float, float]:
    """The series' intensity range, computed once and kept on it (the cache stores it)."""
    if series.intensity is None:
        series.intensity = series_intensity_range(series.pixels)
    return series.intensity
