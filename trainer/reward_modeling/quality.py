"""Figures of a reward model, as pure numpy functions of scores: pairwise accuracy, calibration of its preference
probabilities, and AUROC (how well its uncertainty tells unfamiliar inputs from familiar ones, or a judge's
P("Yes") right answers from wrong ones)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def preference_probability(chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
    """P(chosen ≻ rejected) = σ(r_c − r_r), the Bradley–Terry probability the model was trained to give."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(chosen, np.float64) - np.asarray(rejected, np.float64))))


def expected_calibration_error(prob_chosen: np.ndarray, bins: int = 10) -> float:
    """ECE of P(chosen ≻ rejected) over `bins` equal-width bins of the predicted probability.

    A pair's label is always "chosen wins", so every pair is counted in both orders — (p, 1) and (1 − p, 0) —
    which is what a model that does not know which side is the chosen one faces; otherwise a model predicting 1
    everywhere would look perfectly calibrated. ECE = Σ_b (n_b / N) · |mean label_b − mean p_b|.
    """
    p = np.asarray(prob_chosen, dtype=np.float64)
    probs = np.concatenate([p, 1.0 - p])
    labels = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    which = np.minimum((probs * bins).astype(int), bins - 1)
    error = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            error += inside.mean() * abs(labels[inside].mean() - probs[inside].mean())
    return float(error)


def pairwise_wins(chosen: npt.ArrayLike, rejected: npt.ArrayLike) -> np.ndarray:
    """1 where chosen scores strictly higher, 0.5 for a tie, 0 otherwise: pairwise accuracy as RewardBench counts
    it, so that a model scoring everything alike gets 0.5, not 1 or 0."""
    c, r = np.asarray(chosen, np.float64), np.asarray(rejected, np.float64)
    return (c > r) + 0.5 * (c == r)


def auroc(positives: npt.ArrayLike, negatives: npt.ArrayLike) -> float:
    """Area under the ROC curve of a score meant to be higher on `positives`: the probability that a random
    positive scores above a random negative, ties counting half (the Mann–Whitney U statistic, by ranks)."""
    pos, neg = np.asarray(positives, np.float64), np.asarray(negatives, np.float64)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError("AUROC needs at least one positive and one negative")
    values = np.concatenate([pos, neg])
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based; tied values share their mean rank
    ranks = average_rank[inverse]
    u = ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2.0
    return float(u / (len(pos) * len(neg)))
