"""Preference pairs: read from JSONL, rendered with the model's own chat template, padded into batches.

Rendering goes through the tokenizer's chat template (user = prompt, assistant = response) because that is how
the reward service renders a request: a model trained on other text than it is served would be scored on a
distribution it never saw.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict
from transformers import BatchEncoding, PreTrainedTokenizerBase


class PreferencePair(BaseModel):
    """One comparison; `category` (optional) says what kind of pair it is, for accuracy per category.

    `chosen_ratings` / `rejected_ratings` (optional) rate a side per attribute (HelpSteer-style), for reward models
    with several attributes or heads that regress ratings (Gaussian likelihood, pinball loss).
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    prompt: str
    chosen: str
    rejected: str
    category: str | None = None
    chosen_ratings: dict[str, float] | None = None
    rejected_ratings: dict[str, float] | None = None


class EncodedPair(BaseModel):
    chosen: list[int]
    rejected: list[int]


def read_pairs(path: Path) -> list[PreferencePair]:
    with path.open(encoding="utf-8") as f:
        return [PreferencePair.model_validate_json(line) for line in f if line.strip()]


def write_jsonl(path: Path, records: Iterable[BaseModel | dict[str, object]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            row = record.model_dump(exclude_none=True) if isinstance(record, BaseModel) else record
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def chat_ids(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], add_generation_prompt: bool = False
) -> list[int]:
    """Token ids of `messages` as the tokenizer's chat template renders them."""
    encoding = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, return_dict=True)
    if not isinstance(encoding, BatchEncoding):
        raise TypeError(f"apply_chat_template(return_dict=True) returned {type(encoding).__name__}")
    return list(encoding["input_ids"])


def encode_conversation(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str) -> list[int]:
    return chat_ids(tokenizer, [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}])


def encode_pairs(
    tokenizer: PreTrainedTokenizerBase, pairs: Sequence[PreferencePair], max_length: int
) -> list[EncodedPair]:
    """Pairs with a side longer than `max_length` are an error, not silently cut: pooling reads the last token."""
    encoded = []
    for pair in pairs:
        chosen = encode_conversation(tokenizer, pair.prompt, pair.chosen)
        rejected = encode_conversation(tokenizer, pair.prompt, pair.rejected)
        if max(len(chosen), len(rejected)) > max_length:
            raise ValueError(f"a pair is longer than max_length={max_length} tokens: {pair.prompt[:60]!r}")
        encoded.append(EncodedPair(chosen=chosen, rejected=rejected))
    return encoded


def rating_targets(pairs: Sequence[PreferencePair], attributes: Sequence[str]) -> torch.Tensor:
    """(pairs, 2, attributes) ratings, chosen side first; nan where a pair does not rate that side or attribute."""
    out = torch.full((len(pairs), 2, len(attributes)), float("nan"))
    for i, pair in enumerate(pairs):
        for side, ratings in enumerate((pair.chosen_ratings, pair.rejected_ratings)):
            for a, name in enumerate(attributes):
                if ratings and name in ratings:
                    out[i, side, a] = float(ratings[name])
    return out


def pad_right(rows: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right padding: a classifier finds each row's last real token as the one before the first pad."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
    return input_ids, attention_mask


def collate_pairs(batch: Sequence[EncodedPair], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen rows first, then rejected rows, so one forward pass scores both sides."""
    return pad_right([p.chosen for p in batch] + [p.rejected for p in batch], pad_id)
