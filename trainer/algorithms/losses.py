"""Per-token losses and how they are averaged into one number.

Each function returns per-token values; `aggregate` turns them into the scalar that is differentiated, so
that token-level (DAPO/Dr. GRPO style: every token of the batch weighs the same) and sequence-level (the
GRPO paper's mean of per-sequence means) aggregation apply alike to every term.

The policy loss is off-policy-correct (`off_policy_surrogate`). Three policies meet in it: μ, the behaviour
policy — the rollout engine's probabilities, recorded when each token was sampled, possibly k updates old and
computed by different numerics (vLLM kernels, bf16); π_prox, the trainer's policy at the start of this step (what
the trust region is measured from); π_θ, the policy being optimised. The whole importance ratio π_θ/μ is split
in two, as in AReaL's decoupled PPO objective (Fu et al. 2025, "AReaL: A Large-Scale Asynchronous Reinforcement
Learning System for Language Reasoning"):

    loss_t = −w_t · min(ρ_t·A_t, clip(ρ_t, 1 − ε_low, 1 + ε_high)·A_t),   ρ_t = π_θ/π_prox,   w_t = min(π_prox/μ, C)

ρ is PPO's clipped ratio (it is 1, with the policy gradient as its gradient, on the first pass over a batch); w
corrects for the rollouts having come from μ and is truncated at C: truncated importance sampling, as Yao et al.
2025 ("Your Efficient RL Framework Secretly Brings You Off-Policy RL Training", verl's TIS and rollout IS,
``rollout_is_threshold``) apply it to the vLLM/FSDP mismatch, and IMPALA's truncated ρ̄ (Espeholt et al. 2018)
before them. With fresh rollouts and matching numerics w = 1 and the loss is PPO/GRPO's.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Aggregation = Literal["token", "sequence", "constant"]


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


def truncated_importance_weights(
    prox_logprobs: Tensor, behaviour_logprobs: Tensor, cap: float
) -> tuple[Tensor, Tensor]:
    """w = min(π_prox/μ, cap) per token, without gradient, and where the cap was hit."""
    ratio = torch.exp(prox_logprobs.detach() - behaviour_logprobs)
    return torch.clamp(ratio, max=cap), ratio > cap


def off_policy_surrogate(
    logprobs: Tensor,
    prox_logprobs: Tensor,
    behaviour_logprobs: Tensor,
    advantages: Tensor,
    clip_low: float,
    clip_high: float | None,
    tis_cap: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The decoupled, truncated-importance-weighted PPO objective of the module docstring, per token, negated.

    Returns (loss, where ρ was clipped, the weights w, where w was truncated). ``tis_cap=None``: w = 1 (the
    rollouts are taken as on-policy)."""
    loss, clipped = clipped_surrogate(logprobs, prox_logprobs, advantages, clip_low, clip_high)
    if tis_cap is None:
        return loss, clipped, torch.ones_like(loss), torch.zeros_like(clipped)
    weights, truncated = truncated_importance_weights(prox_logprobs, behaviour_logprobs, tis_cap)
    return weights * loss, clipped, weights, truncated


def k1_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """log π − log π_ref per token: the KL estimator of a KL-in-the-reward penalty (PPO for RLHF, REINFORCE++)."""
    return logprobs - ref_logprobs


def k2_kl(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """½ (log π − log π_ref)² per token: Schulman's k2 estimator (low variance, biased; OpenRLHF's choice for
    REINFORCE++-baseline's KL loss)."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


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


def logprobs_and_entropy(logits: Tensor, tokens: Tensor, entropy_grad: bool = False) -> tuple[Tensor, Tensor]:
    """`token_logprobs` and `entropy_from_logits` from one log-softmax (the update's largest tensor); the
    entropy carries a gradient only when asked (an entropy bonus)."""
    logp = torch.log_softmax(_upcast(logits), dim=-1)
    source = logp if entropy_grad else logp.detach()
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1), -(source.exp() * source).sum(dim=-1)


def aggregate(per_token: Tensor, mask: Tensor, level: Aggregation, normalizer: float | Tensor | None = None) -> Tensor:
    """One scalar from per-token values over the masked (completion) tokens.

    token: Σ x·m / Σ m. sequence: Σ_i (Σ_t x·m / Σ_t m) / (rows with at least one token). constant: Σ x·m /
    (rows × a fixed length: the batch's width, or max_new_tokens as the caller's normalizer), Dr. GRPO's
    length-unbiased normaliser (verl's ``seq-mean-token-sum-norm``).
    ``normalizer`` replaces the denominator (tokens, rows, resp. rows × length) — under DDP or micro-batching it
    is the count over the whole batch, so that the pieces' gradients add up to the whole batch's.
    """
    mask = mask.to(per_token.dtype)
    if level in ("token", "constant"):
        total = (per_token * mask).sum()
        if normalizer is None:
            rows = (mask.sum(dim=1) > 0).sum() * mask.shape[1]
            normalizer = (mask.sum() if level == "token" else rows).clamp(min=1)
        return total / normalizer
    lengths = mask.sum(dim=1)
    per_sequence = (per_token * mask).sum(dim=1) / lengths.clamp(min=1)
    return per_sequence.sum() / ((lengths > 0).sum().clamp(min=1) if normalizer is None else normalizer)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1)
