"""Advantage estimators: group-normalised (GRPO), leave-one-out (RLOO), GAE (PPO), REINFORCE++'s discounted
returns and whitening, and which prompt groups carry any signal at all (DAPO's dynamic sampling).

Sequence-level estimators take rewards shaped ``(groups, n)`` (the n samples of one prompt in a row) and a
``valid`` mask of the same shape: a sample a reward source refused or flagged out of distribution is left
out of its group's statistics as well as the loss, so it cannot drag its siblings' baseline.

REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
arXiv 2501.03262: global rather than per-group advantage normalisation), as OpenRLHF (``reinforce``,
``reinforce_baseline``) and verl (``reinforce_plus_plus``, ``reinforce_plus_plus_baseline``) implement it, is
assembled from these in trainer/step.py:
- ``reinforce_plus_plus``: per-token rewards (the sequence's reward on its last token, −β·KL on every token when
  the KL is in the reward) → ``discounted_returns`` → ``whiten`` over every token of the global batch;
- ``reinforce_plus_plus_baseline``: the sequence's reward minus its group's mean (``group_normalized`` without
  scaling) on every token → ``whiten`` over the global batch.
"""

from __future__ import annotations

import torch
from torch import Tensor


def group_normalized(rewards: Tensor, valid: Tensor | None = None, scale: bool = True, eps: float = 1e-4) -> Tensor:
    """GRPO (Shao et al. 2024, eq. 3 outcome supervision): (r_i − mean(r)) / (std(r) + eps) within each group.

    The std is the unbiased sample std, as TRL's GRPOTrainer computes it. ``scale=False`` keeps only the
    centring (Dr. GRPO, Liu et al. 2025), which does not up-weight groups whose rewards barely differ. Groups
    with fewer than two valid samples carry no signal and get 0.
    """
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.bool()
    weight = valid.to(rewards.dtype)
    count = weight.sum(dim=1, keepdim=True)
    mean = (rewards * weight).sum(dim=1, keepdim=True) / count.clamp(min=1)
    centred = (rewards - mean) * weight
    if scale:
        variance = (centred**2).sum(dim=1, keepdim=True) / (count - 1).clamp(min=1)
        centred = centred / (variance.sqrt() + eps)
    return torch.where(count >= 2, centred, torch.zeros_like(centred))


def leave_one_out(rewards: Tensor, valid: Tensor | None = None) -> Tensor:
    """RLOO (Kool et al. 2019; Ahmadian et al. 2024): r_i − mean_{j≠i} r_j over the valid samples of a group."""
    valid = torch.ones_like(rewards, dtype=torch.bool) if valid is None else valid.bool()
    weight = valid.to(rewards.dtype)
    count = weight.sum(dim=1, keepdim=True)
    total = (rewards * weight).sum(dim=1, keepdim=True)
    baseline = (total - rewards * weight) / (count - 1).clamp(min=1)
    advantages = (rewards - baseline) * weight
    return torch.where(count >= 2, advantages, torch.zeros_like(advantages))


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016) over each row's completion tokens.

    ``rewards``, ``values`` and ``mask`` are ``(batch, tokens)``; a row's valid tokens are a prefix of it
    (completions are right-padded) and the value after its last token is 0 (the episode ends there).
    Returns (advantages, returns = advantages + values), zero where ``mask`` is 0.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        next_value = values[:, t + 1] if t + 1 < values.shape[1] else torch.zeros_like(running)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        running = (delta + gamma * lam * running) * mask[:, t]
        advantages[:, t] = running
    return advantages, (advantages + values) * mask


def discounted_returns(rewards: Tensor, mask: Tensor, gamma: float) -> Tensor:
    """G_t = Σ_{t' ≥ t} γ^{t'−t} r_{t'} over each row's completion tokens (REINFORCE's return; REINFORCE++'s
    advantage before whitening). ``rewards`` and ``mask`` are ``(batch, tokens)``; zero where ``mask`` is 0."""
    mask = mask.to(rewards.dtype)
    rewards = rewards * mask
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        returns[:, t] = running
    return returns


def informative_groups(scores: Tensor, valid: Tensor) -> Tensor:
    """DAPO's dynamic-sampling filter: which groups carry a learning signal.

    ``scores`` is ``(sources, groups, n)`` (each source's score of each sample), ``valid`` is ``(groups, n)``. A
    group is informative when it has at least two valid samples and some source scores two of them differently.
    A group whose every source gives every sample the same score gets the same training reward for all of them
    under any weighting and any per-source normalisation, so its group-baseline advantages are all 0."""
    valid = valid.bool()
    big = torch.finfo(scores.dtype).max
    low = torch.where(valid, scores, torch.full_like(scores, big)).amin(dim=-1)
    high = torch.where(valid, scores, torch.full_like(scores, -big)).amax(dim=-1)
    differs = (high > low).any(dim=0)
    return differs & (valid.sum(dim=-1) >= 2)


def whiten(
    values: Tensor, mask: Tensor, mean: Tensor | None = None, std: Tensor | None = None, eps: float = 1e-8
) -> Tensor:
    """(x − mean) / std over the masked entries; pass ``mean``/``std`` computed over every rank under DDP."""
    mask = mask.to(values.dtype)
    if mean is None or std is None:
        count = mask.sum().clamp(min=1)
        mean = (values * mask).sum() / count
        std = (((values - mean) ** 2 * mask).sum() / count).sqrt()
    return (values - mean) / (std + eps) * mask
