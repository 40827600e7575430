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
