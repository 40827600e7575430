"""The pooled hidden state a sequence-classification model's linear ``score`` head reads.

Training heads on a frozen backbone computes these once and trains only ``score`` on them (seconds instead of a
forward pass per step); the head's prior is shaped by their covariance (score_layer.py). The pooling is
transformers' own for decoder classifiers: the rightmost token that is not the pad token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm import tqdm
from transformers import PreTrainedModel

from rewardline.trainer.reward_modeling.pairs import pad_right


def score_head(model: PreTrainedModel) -> torch.nn.Linear:
    """The classifier's linear output layer, the one every head's rows live in."""
    score = getattr(model, "score", None)
    if not isinstance(score, torch.nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear `score` head; uncertainty heads need one")
    return score


def backbone(model: PreTrainedModel) -> torch.nn.Module:
    score_head(model)  # a model without one has no backbone in this sense
    return getattr(model, model.base_model_prefix)


def pool_last_token(hidden: torch.Tensor, input_ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """(B, T, H) -> (B, H) at each row's rightmost non-pad token, exactly as transformers' classifiers pool."""
    not_pad = (input_ids != pad_id).to(torch.int32)
    positions = torch.arange(input_ids.shape[-1], device=input_ids.device, dtype=torch.int32)
    last = (positions * not_pad).argmax(-1)
    return hidden[torch.arange(len(hidden), device=hidden.device), last]


def pooled_features(
    model: PreTrainedModel, rows: Sequence[Sequence[int]], pad_id: int, batch_size: int, device: str
) -> torch.Tensor:
    """(len(rows), H) float32 features on ``device``; rows are batched by length so little padding is computed."""
    body = backbone(model)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    out = torch.empty(len(rows), model.config.get_text_config().hidden_size, device=device)
    with torch.no_grad():
        for start in tqdm(range(0, len(order), batch_size), desc="features", disable=None, leave=False):
            chunk = order[start : start + batch_size]
            input_ids, attention_mask = pad_right([list(rows[i]) for i in chunk], pad_id)
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
            hidden = body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            out[torch.tensor(chunk, device=device)] = pool_last_token(hidden, input_ids, pad_id).float()
    return out
