"""Pairwise accuracy of a reward model: the share of pairs where it scores the chosen side higher."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from pydantic import BaseModel
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardline.trainer.reward_modeling.pairs import EncodedPair, PreferencePair, collate_pairs, encode_pairs


class PairwiseEval(BaseModel):
    accuracy: float
    pairs: int
    mean_margin: float
    by_category: dict[str, float]


def pairwise_wins(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """1 where chosen scores strictly higher, 0.5 for a tie, 0 otherwise (as RewardBench counts)."""
    return (chosen > rejected).float() + 0.5 * (chosen == rejected).float()


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    return pairwise_wins(chosen, rejected).mean().item()


@torch.no_grad()
def score_pairs(
    model: PreTrainedModel, encoded: Sequence[EncodedPair], pad_id: int, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of the first output (the reward of a scalar model) for each side of each pair."""
    model.eval()
    chosen, rejected = [], []
    for start in range(0, len(encoded), batch_size):
        input_ids, attention_mask = collate_pairs(encoded[start : start + batch_size], pad_id)
        rewards = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0]
        c, r = rewards.chunk(2)
        chosen.append(c)
        rejected.append(r)
    return torch.cat(chosen), torch.cat(rejected)


def evaluate_pairs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: Sequence[PreferencePair],
    batch_size: int = 64,
    max_length: int = 512,
) -> PairwiseEval:
    encoded = encode_pairs(tokenizer, pairs, max_length)
    chosen, rejected = score_pairs(model, encoded, tokenizer.pad_token_id, batch_size)
    wins = pairwise_wins(chosen, rejected)
    groups: dict[str, list[float]] = defaultdict(list)
    for pair, win in zip(pairs, wins.tolist(), strict=True):
        if pair.category is not None:
            groups[pair.category].append(win)
    return PairwiseEval(
        accuracy=wins.mean().item(),
        pairs=len(pairs),
        mean_margin=(chosen - rejected).mean().item(),
        by_category={k: sum(v) / len(v) for k, v in sorted(groups.items())},
    )
