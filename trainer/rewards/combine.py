"""From every source's answers to one reward per sample: uncertainty, masking, weights and normalisation.

Pure functions on arrays, so the combination can be tested on fixed numbers and reasoned about apart from
the streams that fill it. Two numbers come out per sample: ``reported`` — the weighted sum of the sources'
(uncertainty-adjusted) scores, the "reward" a person watches rise — and ``training`` — what the advantage
estimator sees, which differs from ``reported`` only by the normalisation the config asks for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from rewardline.trainer.config import RewardSourceConfig
from rewardline.trainer.rewards.base import SourceReward

CombineMode = Literal["sum", "normalize_then_sum", "sum_then_normalize"]
# (values, valid) -> (mean, std) over the valid values; under DDP this reduces over every rank.
Moments = Callable[[np.ndarray, np.ndarray], tuple[float, float]]
EPS = 1e-6


def local_moments(values: np.ndarray, valid: np.ndarray) -> tuple[float, float]:
    kept = values[valid]
    if kept.size == 0:
        return 0.0, 1.0
    return float(kept.mean()), float(kept.std())


@dataclass
class CombinedRewards:
    training: np.ndarray  # (samples,) what advantages are computed from
    reported: np.ndarray  # (samples,) weighted sum of adjusted scores
    valid: np.ndarray  # (samples,) bool: False = left out of the loss
    per_source: dict[str, np.ndarray]  # adjusted score per source, NaN where the source gave none
    errors: dict[str, int]
    out_of_distribution: dict[str, int]


def adjusted_score(answer: SourceReward, config: RewardSourceConfig) -> tuple[float, bool]:
    """(score − λ·std, usable?) for one source's answer to one sample."""
    if answer.error is not None:
        if config.error_score is None:
            return float("nan"), False
        return config.error_score, True
    score = answer.score - config.uncertainty_penalty * (answer.std or 0.0)
    if config.mask_out_of_distribution and answer.out_of_distribution:
        return score, False
    return score, True


def combine(
    answers: Sequence[Mapping[str, SourceReward]],
    sources: Sequence[RewardSourceConfig],
    mode: CombineMode,
    moments: Moments = local_moments,
) -> CombinedRewards:
    n = len(answers)
    valid = np.ones(n, dtype=bool)
    per_source: dict[str, np.ndarray] = {}
    errors: dict[str, int] = {}
    ood: dict[str, int] = {}
    for source in sources:
        scores = np.full(n, np.nan)
        usable = np.zeros(n, dtype=bool)
        for i, sample in enumerate(answers):
            scores[i], usable[i] = adjusted_score(sample[source.name], source)
        per_source[source.name] = np.where(usable, scores, np.nan)
        valid &= usable
        errors[source.name] = sum(1 for a in answers if a[source.name].error is not None)
        ood[source.name] = sum(1 for a in answers if a[source.name].out_of_distribution)
    reported = np.zeros(n)
    for source in sources:
        reported += source.weight * np.nan_to_num(per_source[source.name])
    if mode == "sum":
        training = reported.copy()
    elif mode == "sum_then_normalize":
        mean, std = moments(reported, valid)
        training = (reported - mean) / (std + EPS)
    else:
        training = np.zeros(n)
        for source in sources:
            scores = np.nan_to_num(per_source[source.name])
            mean, std = moments(scores, valid)
            training += source.weight * (scores - mean) / (std + EPS)
    training = np.where(valid, training, 0.0)
    reported = np.where(valid, reported, np.nan)
    return CombinedRewards(training, reported, valid, per_source, errors, ood)
