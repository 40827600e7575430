"""Reward-model losses as pure functions of the scores, so each can be read and tested on its own."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Mean of -log σ(r_chosen - r_rejected): the negative log-likelihood of the preference under Bradley–Terry.

    Only the difference of the two rewards enters, so the scale's origin is free; logsigmoid keeps large
    negative margins finite where log(sigmoid(x)) would underflow.
    """
    return -F.logsigmoid(chosen - rejected).mean()


def weighted_bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Bradley–Terry with a weight per pair (a bootstrap resample's counts): sum(w * nll) / sum(w).

    Weights of 0 drop a pair from this member's resample; an all-zero batch gives 0, not nan.
    """
    nll = -F.logsigmoid(chosen - rejected)
    return (weights * nll).sum() / weights.sum().clamp_min(1e-12)


def gaussian_bradley_terry_loss(
    mean_chosen: torch.Tensor,
    log_var_chosen: torch.Tensor,
    mean_rejected: torch.Tensor,
    log_var_rejected: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley–Terry with rewards r ~ N(mean, exp(log_var)), the rewards integrated out (closed form).

    P(chosen ≻ rejected) = E[σ(r_c − r_r)] ≈ σ(Δμ / sqrt(1 + π/8 · (σ_c² + σ_r²))) (the probit approximation of a
    logistic-Gaussian integral, MacKay 1992). Integrating the noise out, rather than averaging the loss over
    reparameterised samples, matters: -log σ is convex, so by Jensen sampled noise only ever raises the
    expected loss and the variance collapses to 0; the marginal likelihood instead lets a large σ pay for a
    pair the mean cannot order, which is what aleatoric uncertainty is.
    """
    variance = log_var_chosen.exp() + log_var_rejected.exp()
    margin = (mean_chosen - mean_rejected) / torch.sqrt(1.0 + (torch.pi / 8.0) * variance)
    nll = -F.logsigmoid(margin)
    if weights is None:
        return nll.mean()
    return (weights * nll).sum() / weights.sum().clamp_min(1e-12)


def quantile_bradley_terry_loss(
    quantiles_chosen: torch.Tensor,
    quantiles_rejected: torch.Tensor,
    masses: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Bradley–Terry between two reward distributions given by Q quantiles each (shape (B, Q)).

    Each side is read as atoms at its quantile values with probabilities `masses` (Q,)
    (`rewardline.services.uncertainty.outputs.level_masses`), and P(chosen ≻ rejected) = Σ_ij m_i m_j σ(q_c,i − q_r,j):
    the Bradley–Terry probability averaged over both distributions. This lets preference pairs alone train quantile
    heads; `pinball_loss` needs rating targets.
    """
    pair_masses = masses[:, None] * masses[None, :]
    sig = torch.sigmoid(quantiles_chosen[:, :, None] - quantiles_rejected[:, None, :])
    nll = -torch.log((sig * pair_masses).sum(dim=(1, 2)).clamp_min(1e-12))
    if weights is None:
        return nll.mean()
    return (weights * nll).sum() / weights.sum().clamp_min(1e-12)


def pinball_loss(predicted: torch.Tensor, target: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Quantile regression: mean over samples and levels of max(τ·(y − q), (τ − 1)·(y − q)).

    `predicted` (N, Q), `target` (N,), `levels` (Q,). Its minimiser over q is the τ-quantile of y.
    """
    error = target[:, None] - predicted
    return torch.maximum(levels * error, (levels - 1.0) * error).mean()


def gaussian_nll_loss(mean: torch.Tensor, log_var: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """−log N(target; mean, exp(log_var)) up to a constant, averaged: regression with a predicted spread."""
    return 0.5 * (log_var + (target - mean) ** 2 / log_var.exp()).mean()


def centering_loss(rewards: torch.Tensor) -> torch.Tensor:
    """Mean squared reward (Eisenstein et al. 2023; TRL's `center_rewards_coefficient`).

    Bradley–Terry fixes only differences, so each member may drift by its own constant; the members would then
    disagree by that constant on every input and their disagreement would no longer single out unfamiliar ones.
    """
    return (rewards**2).mean()


def bootstrap_weights(pairs: int, members: int, generator: torch.Generator) -> torch.Tensor:
    """(members, pairs) counts of each pair in each member's resample with replacement (all 1 for one member)."""
    if members == 1:
        return torch.ones(1, pairs)
    draws = torch.randint(0, pairs, (members, pairs), generator=generator)
    counts = torch.zeros(members, pairs)
    counts.scatter_add_(1, draws, torch.ones(members, pairs))
    return counts
