"""Kept so that existing imports work: the challenge metric lives in `spinegrade.metric` (below every stage,
so the training engine can score with it without importing the evaluation package)."""

from ..metric import (EPS, TERMS, challenge_score, normalize_probs, prior_probs, row_weights,  # noqa: F401
                      weighted_log_loss)
