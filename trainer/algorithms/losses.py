"""Per-token losses and how they are averaged into one number.

Each function returns per-token values; `aggregate` turns them into the scalar that is differentiated, so
that token-level (DAPO/Dr. GRPO style: every token of the batch weighs the same) and sequence-level (the
GRPO paper's mean of per-sequence means) aggregation apply alike to every term.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Aggregation = Literal["token", "sequence"]


def clipped_surrogate(
    logprobs: Tensor, old_logprobs: Tensor, advantages: Tensor, clip_low: float, clip_high: float | None = None
) -> tuple[Tensor, Tensor]:
    """PPO's clipped objective (Schulman et al. 2017, eq. 7), negated to be minimised.

    −min(ρ·A, clip(ρ, 1 − ε_low, 1 + ε_high)·A) with ρ = exp(logπ − logπ_old). Also returns where the
    clipped term was the smaller one (the clip fraction's numerator).
    """
    clip_high = clip_low if clip_high is None else clip_high
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantages
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def k3_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """KL(π‖π_ref) per token with Schulman's k3 estimator, as in GRPO: r − log r − 1 with r = π_ref/π.

    Unbiased and never negative when tokens are sampled from π."""
    log_ratio = ref_logprobs - logprobs
    return torch.exp(log_ratio) - log_ratio - 1


def value_loss(values: Tensor, old_values: Tensor, returns: Tensor, clip: float | None) -> tuple[Tensor, Tensor]:
    """PPO's value loss with clipping (as in OpenAI baselines' ppo2): ½·max((V − R)², (V_clip − R)²),
    V_clip = old_V + clip(V − old_V, −c, c). Returns the loss and where the clipped term was the larger."""
    unclipped = (values - returns) ** 2
    if clip is None:
        return 0.5 * unclipped, torch.zeros_like(unclipped, dtype=torch.bool)
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    clipped = (clipped_values - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), clipped > unclipped


def _upcast(x: Tensor) -> Tensor:
    """Softmax in at least float32: bfloat16 log-probabilities are too coarse for a ratio near 1."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of each position's next-token distribution."""
    logp = torch.log_softmax(_upcast(logits), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log π(token) at each position, from logits already aligned with the tokens they predict."""
    return torch.log_softmax(_upcast(logits), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def aggregate(per_token: Tensor, mask: Tensor, level: Aggregation, normalizer: float | Tensor | None = None) -> Tensor:
    """One scalar from per-token values over the masked (completion) tokens.

    token: Σ x·m / Σ m. sequence: Σ_i (Σ_t x·m / Σ_t m) / (rows with at least one token).
    ``normalizer`` replaces the denominator (tokens, resp. rows) — under DDP or micro-batching it is the
    count over the whole batch, so that the pieces' gradients add up to the whole batch's.
    """
    mask = mask.to(per_token.dtype)
    if level == "token":
        total = (per_token * mask).sum()
        return total / (mask.sum().clamp(min=1) if normalizer is None else normalizer)
    lengths = mask.sum(dim=1)
    per_sequence = (per_token * mask).sum(dim=1) / lengths.clamp(min=1)
    return per_sequence.sum() / ((lengths > 0).sum().clamp(min=1) if normalizer is None else normalizer)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)
