"""The challenge metric against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from spinegrade import vocab
from spinegrade.evaluate.metric import challenge_score, normalize_probs, prior_probs, weighted_log_loss

ln = math.log


def test_weighted_log_loss_weights_rows_by_true_class():
    y = [0, 1, 2]
    p = [[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.1, 0.2, 0.7]]
    assert weighted_log_loss(y, p) == pytest.approx(-(ln(0.5) + 2 * ln(0.5) + 4 * ln(0.7)) / 7)
    assert weighted_log_loss(y, p, weights=(1, 1, 1)) == pytest.approx(-(ln(0.5) + ln(0.5) + ln(0.7)) / 3)


def test_rows_without_labels_are_skipped():
    p = [[0.5, 0.3, 0.2], [0.9, 0.05, 0.05], [0.2, 0.5, 0.3], [0.01, 0.01, 0.98]]
    assert weighted_log_loss([0, np.nan, 1, -1], p) == pytest.approx(-(ln(0.5) + 2 * ln(0.5)) / 3)
    assert math.isnan(weighted_log_loss([np.nan, -1], [[1, 0, 0], [0, 1, 0]]))


def test_predictions_are_clipped_then_normalised():
    assert weighted_log_loss([0], [[0.2, 0.1, 0.1]]) == pytest.approx(-ln(0.5))
    # clipped to [eps, 1 - eps] first (as sklearn's log_loss did): values above 1 count as 1
    assert weighted_log_loss([0], [[2.0, 1.0, 1.0]]) == pytest.approx(-ln(1 / 3))
    assert weighted_log_loss([0], [[0.0, 0.0, 1.0]]) == pytest.approx(-ln(1e-15), rel=1e-6)
    np.testing.assert_allclose(normalize_probs([[0.2, 0.1, 0.1], [0, 0, 3]]), [[0.5, 0.25, 0.25], [0, 0, 1]],
                               atol=1e-12)


def test_prior_probs_smoothed_and_weighted():
    np.testing.assert_allclose(prior_probs([0, 0, 0, 1, np.nan]), [4 / 7, 2 / 7, 1 / 7])
    np.testing.assert_allclose(prior_probs([0, 0, 0, 1, np.nan], weighted=True), [1 / 3, 1 / 3, 1 / 3])


# Two studies; one unlabelled row (not scored, and allowed to be missing from the submission).
ROWS = [  # study, condition, level, severity, prediction
    ("1", "spinal_canal_stenosis", "l1_l2", "Normal/Mild", (0.7, 0.2, 0.1)),
    ("1", "spinal_canal_stenosis", "l2_l3", "Severe", (0.2, 0.2, 0.6)),
    ("1", "left_neural_foraminal_narrowing", "l1_l2", "Moderate", (0.1, 0.3, 0.1)),  # sums to 0.5
    ("1", "right_subarticular_stenosis", "l4_l5", "", (0.3, 0.3, 0.4)),
    ("2", "spinal_canal_stenosis", "l1_l2", "Moderate", (0.5, 0.4, 0.1)),
    ("2", "spinal_canal_stenosis", "l5_s1", "Normal/Mild", (0.8, 0.1, 0.1)),
    ("2", "left_subarticular_stenosis", "l4_l5", "Severe", (0.25, 0.25, 0.5)),
]
EXPECTED = {
    "spinal_canal_stenosis": -(1 * ln(0.7) + 4 * ln(0.6) + 2 * ln(0.4) + 1 * ln(0.8)) / 8,
    "neural_foraminal_narrowing": -ln(0.6),
    "subarticular_stenosis": -ln(0.5),
    # study 1: severe, max P(severe) 0.6, weight 4; study 2: not severe, max P(severe) 0.1, weight 2
    "any_severe_spinal": -(4 * ln(0.6) + 2 * ln(1 - 0.1)) / 6,
}


def _submission(rows):
    return pd.DataFrame([{"row_id": vocab.row_id(s, c, lv), **dict(zip(vocab.SEVERITY_KEYS, p))}
                         for s, c, lv, _, p in rows])


def test_challenge_score_by_hand():
    labels = pd.DataFrame({"row_id": [vocab.row_id(s, c, lv) for s, c, lv, _, _ in ROWS],
                           "severity": [sev for _, _, _, sev, _ in ROWS]})
    got = challenge_score(labels, _submission(ROWS))
    for term, value in EXPECTED.items():
        assert got[term] == pytest.approx(value), term
    assert got["score"] == pytest.approx(sum(EXPECTED.values()) / 4)
    # the unlabelled row need not be predicted; a labelled one must be
    assert challenge_score(labels, _submission(ROWS[:3] + ROWS[4:]))["score"] == pytest.approx(got["score"])
    with pytest.raises(ValueError, match="lacks 1 labelled row"):
        challenge_score(labels, _submission(ROWS[1:]))


def test_challenge_score_reads_a_train_csv_like_table():
    wide = pd.DataFrame({"study_id": [1, 2]})
    for t in vocab.TARGETS:
        wide[t] = None
    for s, c, lv, sev, _ in ROWS:
        wide.loc[wide.study_id == int(s), vocab.target(c, lv)] = sev or None
    got = challenge_score(wide, _submission(ROWS))
    assert got["score"] == pytest.approx(sum(EXPECTED.values()) / 4)


def test_no_spinal_rows_leaves_those_terms_out():
    rows = [r for r in ROWS if r[1] != "spinal_canal_stenosis"]
    labels = pd.DataFrame({"row_id": [vocab.row_id(s, c, lv) for s, c, lv, _, _ in rows],
                           "severity": [sev for _, _, _, sev, _ in rows]})
    got = challenge_score(labels, _submission(rows))
    assert math.isnan(got["spinal_canal_stenosis"]) and math.isnan(got["any_severe_spinal"])
    assert got["score"] == pytest.approx((-ln(0.6) - ln(0.5)) / 2)
