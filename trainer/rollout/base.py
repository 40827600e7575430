"""What a rollout engine is given and gives back, and the seeds that make rollouts reproducible.

Every completion carries the behaviour policy's log-probability of each of its tokens, as the engine computed it
while sampling (vLLM's processed log-probs; the transformers engine's processed scores): the importance weights of
the off-policy loss are taken against them (trainer/algorithms/losses.py).

Every sample's randomness comes from a seed derived from (run seed, step, the prompt's index in the global
batch, the sample's index in its group) — never from a generator whose state depends on what ran before. So a
resumed run draws exactly the samples the uninterrupted run would have drawn, and under DDP a prompt's samples
are the same whichever rank generates them.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from transformers import PreTrainedTokenizerBase

from rewardline.services.rendering import chat_text, decoded_text
from rewardline.trainer.config import RolloutConfig


def derive_seed(*parts: int | str) -> int:
    """A 31-bit seed from its parts (stable across processes and Python versions)."""
    return zlib.crc32(":".join(str(p) for p in parts).encode()) & 0x7FFFFFFF


@dataclass(frozen=True)
class RolloutRequest:
    """One prompt of a step, to be sampled n times."""

    group_id: str  # unique in the run: f"s{step}-g{index}"
    index: int  # the prompt's index in the step's global batch
    prompt: str
    prompt_ids: tuple[int, ...]
    seed: int  # the group's seed; sample k uses derive_seed(seed, k)
    answer: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    request: RolloutRequest
    k: int  # the sample's index in its group
    token_ids: tuple[int, ...]  # the generated tokens, the end-of-sequence token included when generated
    text: str
    finished: bool  # ended with the end-of-sequence token (not cut at max_new_tokens)
    # log μ(token) of each generated token under the distribution it was sampled from (temperature applied)
    logprobs: tuple[float, ...] = ()

    @property
    def sample_id(self) -> str:
        return f"{self.request.group_id}-{self.k}"


OnComplete = Callable[[Sequence[Completion]], None]


class RolloutEngine(Protocol):
    """Samples completions; calls ``on_complete`` with samples as soon as they finish (to start scoring)."""

    def generate(self, requests: Sequence[RolloutRequest], n: int, on_complete: OnComplete) -> list[Completion]: ...

    def greedy(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int) -> list[list[int]]: ...

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None: ...

    def close(self) -> None: ...


def encode_prompt(tokenizer: PreTrainedTokenizerBase, prompt: str, config: RolloutConfig) -> list[int]:
    """The prompt's token ids as the policy reads them: through its chat template when it has one (or when
    asked), cut from the left to ``max_prompt_tokens``."""
    use_template = config.chat_template == "on" or (config.chat_template == "auto" and bool(tokenizer.chat_template))
    if use_template:
        text = chat_text(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
    else:
        ids = list(tokenizer(prompt)["input_ids"])
    return ids[-config.max_prompt_tokens :]


def completion_from_tokens(
    request: RolloutRequest,
    k: int,
    token_ids: Sequence[int],
    tokenizer: PreTrainedTokenizerBase,
    eos_ids: set[int],
    logprobs: Sequence[float] = (),
) -> Completion:
    """Cuts at the first end-of-sequence token (kept) and decodes without special tokens; ``logprobs`` (one per
    token) are cut with the tokens."""
    ids = list(token_ids)
    finished = False
    for i, token in enumerate(ids):
        if token in eos_ids:
            ids, finished = ids[: i + 1], True
            break
    text = decoded_text(tokenizer, ids, skip_special_tokens=True)
    return Completion(request, k, tuple(ids), text, finished, tuple(float(x) for x in logprobs[: len(ids)]))


def eos_token_ids(model_generation_eos: int | list[int] | None, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    ids: set[int] = set()
    if isinstance(model_generation_eos, int):
        ids.add(model_generation_eos)
    elif model_generation_eos:
        ids.update(model_generation_eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
