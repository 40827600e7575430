"""Logits -> mean reward, member scores, epistemic / aleatoric / total std and quantiles (pure numpy).

The same functions serve (``scorer.py``), calibrate and evaluate (``trainer/reward_modeling``), so the number a
trainer reads from the service is the number the threshold was calibrated on.

Definitions (per sample; K members, A attributes combined into one score with weights w, as the reward kind
combines attributes):

- member score s_k: ensemble / checkpoint_ensemble: sum_a w_a v_ka; gaussian: sum_a w_a mu_ka; quantile: the
  mean of the distribution that puts mass m_i (``level_masses``) on the i-th combined quantile value, the same
  reading of the quantiles that the quantile Bradley–Terry loss trains.
- ``score`` = mean_k s_k. ``epistemic_std`` = the members' population standard deviation (0 when K = 1).
- ``aleatoric_std``: gaussian: sqrt(mean_k sum_a w_a^2 sigma_ka^2) (attributes taken as independent);
  quantile: the spread of the combined quantile function read as a Normal's,
  (q_hi - q_lo) / (z(level_hi) - z(level_lo)) over the outermost levels, averaged over members in variance;
  0 for the other kinds.
- ``std`` = sqrt(epistemic^2 + aleatoric^2).
- ``quantiles``: per member, per attribute the predicted values are SORTED (rearrangement, Chernozhukov et al.
  2010: the pinball loss does not stop heads from crossing, and sorting never moves a value further from the
  true quantile function), combined over attributes with w, sorted again (negative weights may reverse an
  order), then averaged over members (averaging quantile functions keeps them non-decreasing).
- attribute values (``Reward.attributes``): the members' mean of each attribute's value / mean / quantile mean.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


def quantile_parameter_name(level: float) -> str:
    return f"q{level:g}"


@dataclass(frozen=True)
class HeadLayout:
    """What the outputs of a model mean: enough to post-process logits (the spec without its calibration)."""

    kind: str
    members: int
    attributes: tuple[str, ...]
    quantile_levels: tuple[float, ...] = ()

    @property
    def parameter_names(self) -> list[str]:
        """The P outputs of one member's head per attribute."""
        if self.kind == "gaussian":
            return ["mean", "log_variance"]
        if self.kind == "quantile":
            return [quantile_parameter_name(q) for q in self.quantile_levels]
        return ["value"]

    @property
    def parameters(self) -> int:
        return len(self.parameter_names)

    def output_names(self) -> list[str]:
        """Readable id2label names of a checkpoint's outputs, in layout order (member, parameter, attribute)."""
        members = 1 if self.kind == "checkpoint_ensemble" else self.members
        return [
            ".".join(([f"member{k}"] if members > 1 else []) + ([p] if p != "value" else []) + [a])
            for k in range(members)
            for p in self.parameter_names
            for a in self.attributes
        ]

    @property
    def outputs(self) -> int:
        return self.members * self.parameters * len(self.attributes)


@dataclass
class HeadOutputs:
    """Per-sample results for a batch of N samples (float64 arrays)."""

    score: np.ndarray  # (N,)
    member_scores: np.ndarray  # (N, K)
    attributes: np.ndarray  # (N, A)
    epistemic_std: np.ndarray  # (N,)
    aleatoric_std: np.ndarray  # (N,)
    std: np.ndarray  # (N,)
    quantiles: np.ndarray | None  # (N, Q), non-decreasing along Q; quantile models only


def level_masses(levels: tuple[float, ...] | list[float]) -> np.ndarray:
    """The probability each quantile level stands for: the interval between the midpoints to its neighbours
    (0 and 1 at the ends), so levels 0.1, 0.3, 0.5, 0.7, 0.9 each stand for 0.2."""
    q = np.asarray(levels, dtype=np.float64)
    bounds = np.concatenate([[0.0], (q[1:] + q[:-1]) / 2, [1.0]])
    return np.diff(bounds)


def split_outputs(logits: np.ndarray, layout: HeadLayout) -> np.ndarray:
    """(N, K*P*A) logits of a shared-backbone checkpoint -> (N, K, P, A), per the layout of model_format."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[1] != layout.outputs:
        raise ValueError(f"expected logits of shape (N, {layout.outputs}) for {layout}, got {logits.shape}")
    return logits.reshape(len(logits), layout.members, layout.parameters, len(layout.attributes))


def stack_members(member_logits: list[np.ndarray], layout: HeadLayout) -> np.ndarray:
    """K arrays (N, A) of separate checkpoints -> (N, K, 1, A)."""
    if len(member_logits) != layout.members:
        raise ValueError(f"expected {layout.members} members' logits, got {len(member_logits)}")
    stacked = np.stack([np.asarray(x, dtype=np.float64) for x in member_logits], axis=1)
    if stacked.shape[2:] != (len(layout.attributes),):
        raise ValueError(f"each member must give {len(layout.attributes)} outputs, got {stacked.shape[2:]}")
    return stacked[:, :, None, :]


def head_outputs(outputs: np.ndarray, layout: HeadLayout, weights: np.ndarray) -> HeadOutputs:
    """``outputs`` (N, K, P, A) from ``split_outputs`` or ``stack_members``; ``weights`` (A,) combine attributes."""
    w = np.asarray(weights, dtype=np.float64)
    n, k = outputs.shape[0], outputs.shape[1]
    quantiles = None
    aleatoric_var = np.zeros((n, k))
    if layout.kind == "gaussian":
        means = outputs[:, :, 0, :]
        # exp of a clipped log-variance: a wild head must not overflow into inf/nan stds
        variances = np.exp(np.clip(outputs[:, :, 1, :], -30.0, 30.0))
        member_scores = means @ w
        aleatoric_var = variances @ (w**2)
        attributes = means.mean(axis=1)
    elif layout.kind == "quantile":
        per_attribute = np.sort(outputs, axis=2)  # (N, K, Q, A)
        combined = np.sort(per_attribute @ w, axis=2)  # (N, K, Q)
        levels = layout.quantile_levels
        member_scores = combined @ level_masses(levels)
        z_span = NormalDist().inv_cdf(levels[-1]) - NormalDist().inv_cdf(levels[0])
        aleatoric_var = ((combined[:, :, -1] - combined[:, :, 0]) / z_span) ** 2
        quantiles = combined.mean(axis=1)
        attributes = np.einsum("nkqa,q->na", per_attribute, level_masses(levels)) / k
    else:
        values = outputs[:, :, 0, :]
        member_scores = values @ w
        attributes = values.mean(axis=1)
    epistemic = member_scores.std(axis=1)
    aleatoric = np.sqrt(aleatoric_var.mean(axis=1))
    return HeadOutputs(
        score=member_scores.mean(axis=1),
        member_scores=member_scores,
        attributes=attributes,
        epistemic_std=epistemic,
        aleatoric_std=aleatoric,
        std=np.sqrt(epistemic**2 + aleatoric**2),
        quantiles=quantiles,
    )
