"""Advantage estimators: group-normalised (GRPO), leave-one-out (RLOO) and GAE (PPO).

Sequence-level estimators take rewards shaped ``(groups, n)`` (the n samples of one prompt in a row) and a
``valid`` mask of the same shape: a sample a reward source refused or flagged out of distribution is left
out of its group's statistics as well as the loss, so it cannot drag its siblings' baseline.
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
