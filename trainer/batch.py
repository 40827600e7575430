"""Completions as tensors: prompts left-padded, completions right-padded, so every completion starts at the
same column.

With that layout the completion tokens of every row are the last C columns, a row's valid completion tokens
are a prefix of them (what GAE needs), and the model only has to produce logits for those columns
(``logits_to_keep``). Position ids are counted from each row's first real token, so left padding changes
nothing the model computes. The behaviour log-probabilities (the engine's, recorded at generation) are laid out
like the completion tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from rewardline.trainer.rollout.base import Completion


@dataclass
class Batch:
    input_ids: torch.Tensor  # (B, P + C)
    attention_mask: torch.Tensor  # (B, P + C)
    position_ids: torch.Tensor  # (B, P + C)
    completion_ids: torch.Tensor  # (B, C)
    completion_mask: torch.Tensor  # (B, C) float: 1 on generated tokens of samples that count in the loss
    behaviour_logprobs: torch.Tensor  # (B, C) float: log μ(token) as the rollout engine sampled it, 0 on padding

    @property
    def completion_width(self) -> int:
        return self.completion_ids.shape[1]

    def _fields(self) -> tuple[torch.Tensor, ...]:
        return (
            self.input_ids,
            self.attention_mask,
            self.position_ids,
            self.completion_ids,
            self.completion_mask,
            self.behaviour_logprobs,
        )

    def to(self, device: torch.device) -> Batch:
        return Batch(*(t.to(device) for t in self._fields()))

    def rows(self, index: slice) -> Batch:
        return Batch(*(t[index] for t in self._fields()))


def build_batch(completions: Sequence[Completion], valid: Sequence[bool], pad_id: int) -> Batch:
    prompt_width = max(len(c.request.prompt_ids) for c in completions)
    completion_width = max(max(len(c.token_ids) for c in completions), 1)
    input_ids, attention, completion_ids, completion_mask, behaviour = [], [], [], [], []
    for c, keep in zip(completions, valid, strict=True):
        prompt, tokens = list(c.request.prompt_ids), list(c.token_ids)
        if len(c.logprobs) != len(tokens):
            raise ValueError(f"sample {c.sample_id}: {len(c.logprobs)} behaviour log-probs for {len(tokens)} tokens")
        left, right = prompt_width - len(prompt), completion_width - len(tokens)
        input_ids.append([pad_id] * left + prompt + tokens + [pad_id] * right)
        attention.append([0] * left + [1] * (len(prompt) + len(tokens)) + [0] * right)
        completion_ids.append(tokens + [pad_id] * right)
        completion_mask.append([float(keep)] * len(tokens) + [0.0] * right)
        behaviour.append(list(c.logprobs) + [0.0] * right)
    attention_mask = torch.tensor(attention)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(
        torch.tensor(input_ids),
        attention_mask,
        position_ids,
        torch.tensor(completion_ids),
        torch.tensor(completion_mask),
        torch.tensor(behaviour, dtype=torch.float32),
    )
