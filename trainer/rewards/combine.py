"""From every source's answers to one reward per sample: uncertainty, masking, weights and normalisation.

Pure functions on arrays, so the combination can be tested on fixed numbers and reasoned about apart from
the streams that fill it. Two numbers come out per sample: ``reported`` — the weighted sum of the sources'
(uncertainty-adjusted) scores, the "reward" a person watches rise — and ``training`` — what the advantage
estimator sees, which differs from ``reported`` only by the normalisation the config asks for: per batch
(``combine``), over the whole run (`RunningMoments`, rewards.running_norm) and clipping (rewards.clip), in that
order, as OpenRLHF normalises and clips rewards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
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


@dataclass
class RunningMoments:
    """Mean and variance of every training reward seen so far in the run, merged batch by batch (Chan et al.'s
    parallel update of Welford's algorithm); a checkpoint saves them, so a resumed run normalises alike."""

    count: float = 0.0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean

    def update(self, count: float, total: float, squares: float) -> None:
        """Merges a batch given by its count, sum and sum of squares (summed over every rank under DDP)."""
        if count <= 0:
            return
        batch_mean = total / count
        batch_m2 = max(squares - count * batch_mean**2, 0.0)
        merged = self.count + count
        delta = batch_mean - self.mean
        self.m2 += batch_m2 + delta**2 * self.count * count / merged
        self.mean += delta * count / merged
        self.count = merged

    @property
    def std(self) -> float:
        return (self.m2 / self.count) ** 0.5 if self.count else 1.0

    def state_dict(self) -> dict[str, float]:
        return asdict(self)


def normalize_and_clip(
    training: np.ndarray, valid: np.ndarray, running: RunningMoments | None, clip: float | None
) -> np.ndarray:
    """(r − running mean) / running std, then clipped to [−clip, clip]; invalid samples stay 0."""
    out = training.astype(np.float64)
    if running is not None:
        out = (out - running.mean) / (running.std + EPS)
    if clip is not None:
        out = np.clip(out, -clip, clip)
    return np.where(valid, out, 0.0)
