"""From a judge's next-token log-probabilities to a reward: pure functions, the same for every backend.

- verdict:  P(positive) = sum of the positive labels' probabilities over positive + negative (GenRM). Renormalising
            over the two classes removes the mass the judge puts on anything else.
- rating:   the distribution over the rating tokens 1..K renormalised; the expected rating and the most likely
            one; the reward maps the expected rating linearly from [1, K] onto the configured range.
- pairwise: P(A) over A + B, computed the same way as a verdict.
- rationale modes first generate a rationale that should end with a marker ("Verdict:"); the text before the
  marker is the rationale, and a rationale with no marker is *unparsed*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

JudgeMode = Literal["verdict", "rating", "rationale_verdict", "rationale_rating"]
MODES: tuple[JudgeMode, ...] = ("verdict", "rating", "rationale_verdict", "rationale_rating")


def is_rationale_mode(mode: JudgeMode) -> bool:
    return mode.startswith("rationale_")


def is_rating_mode(mode: JudgeMode) -> bool:
    return mode.endswith("rating")


def class_log_masses(logprobs: Sequence[float], classes: Sequence[Sequence[int]], columns: Sequence[int]) -> np.ndarray:
    """log P(class k) for each class: logsumexp over its tokens' log-probabilities.

    ``logprobs[i]`` is the log-probability of token ``columns[i]``."""
    index = {token: i for i, token in enumerate(columns)}
    out = np.empty(len(classes), dtype=np.float64)
    for k, ids in enumerate(classes):
        values = np.array([logprobs[index[t]] for t in ids], dtype=np.float64)
        top = values.max()
        out[k] = -math.inf if top == -math.inf else top + math.log(np.exp(values - top).sum())
    return out


def normalised(log_masses: np.ndarray) -> np.ndarray:
    """Softmax over the classes: the judge's distribution restricted to its possible answers."""
    finite = log_masses[np.isfinite(log_masses)]
    if finite.size == 0:
        return np.full(len(log_masses), 1.0 / len(log_masses))
    shifted = np.exp(log_masses - finite.max())
    return shifted / shifted.sum()


def verdict_probability(distribution: np.ndarray) -> float:
    """P(positive) from the distribution over the classes (positive, negative)."""
    return float(distribution[0])


@dataclass(frozen=True)
class Rating:
    expected: float  # in [1, K]
    most_likely: int  # in 1..K (the lowest on a tie)


def rating(distribution: np.ndarray) -> Rating:
    """From the distribution over the classes 1..K, in order."""
    values = np.arange(1, len(distribution) + 1)
    return Rating(float((distribution * values).sum()), int(values[int(np.argmax(distribution))]))


def mean_distribution(distributions: Sequence[np.ndarray]) -> np.ndarray | None:
    """The average over rationales of the judge's answer distributions (None when no rationale had an answer).

    Averaging distributions gives the mean P(positive) and the mean expected rating (both are linear in the
    distribution), and a most likely rating that all rationales vote on with their confidence."""
    return np.mean(np.stack(distributions), axis=0) if distributions else None


def rating_score(expected: float, scale: int, low: float, high: float) -> float:
    """Maps an expected rating in [1, scale] linearly onto [low, high]."""
    return low + (high - low) * (expected - 1.0) / (scale - 1)


def split_rationale(text: str, marker: str) -> tuple[str, bool]:
    """(the rationale before the first marker, whether the marker was there). Without a marker the whole text
    comes back and the verdict is unreadable."""
    at = text.find(marker)
    if at < 0:
        return text, False
    return text[:at], True


def pairwise(p_a_first: float, p_a_second: float) -> tuple[float, float]:
    """(P(A better) averaged over both orders, the position-bias gap first - second)."""
    return 0.5 * (p_a_first + p_a_second), p_a_first - p_a_second
