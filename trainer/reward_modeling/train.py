"""Training a reward model on preference pairs with the Bradley–Terry loss, top to bottom.

The model comes in already built (from a base checkpoint or from scratch) and leaves trained in place; where it
came from and where it goes are the caller's business, so the same loop serves the local-model builder and
`rewardline rm train`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import torch
from pydantic import BaseModel
from tqdm import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase, get_cosine_schedule_with_warmup

from rewardline.trainer.reward_modeling.pairs import PreferencePair, collate_pairs, encode_pairs
from rewardline.trainer.reward_modeling.preference_losses import bradley_terry_loss

log = logging.getLogger(__name__)


class RewardTrainConfig(BaseModel):
    steps: int = 600
    batch_size: int = 32  # pairs per step; the forward pass sees twice as many rows
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 30
    max_grad_norm: float = 1.0
    max_length: int = 512
    seed: int = 0


def batch_indices(size: int, batch_size: int, steps: int, generator: torch.Generator) -> Iterator[list[int]]:
    """`steps` batches, reshuffling at each pass over the data; a short last batch of a pass is dropped."""
    per_pass = max(size // batch_size, 1)
    for step in range(steps):
        if step % per_pass == 0:
            order = torch.randperm(size, generator=generator).tolist()
        i = (step % per_pass) * batch_size
        yield order[i : i + batch_size]


def train_reward_model(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair],
    config: RewardTrainConfig,
) -> list[float]:
    """Returns the loss of every step."""
    encoded = encode_pairs(tokenizer, pairs, config.max_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, config.steps)
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    losses = []
    progress = tqdm(
        batch_indices(len(encoded), config.batch_size, config.steps, generator),
        total=config.steps,
        desc="reward model",
        disable=None,
    )
    for indices in progress:
        input_ids, attention_mask = collate_pairs([encoded[i] for i in indices], tokenizer.pad_token_id)
        rewards = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
        chosen, rejected = rewards.chunk(2)
        loss = bradley_terry_loss(chosen, rejected)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    tail = losses[-20:]
    final_loss = sum(tail) / max(len(tail), 1)
    log.info("reward model: %d steps, final loss %.3f", len(losses), final_loss, extra={"final_loss": final_loss})
    return losses
