"""A short supervised start for the policy, and the greedy-decoding check of how often it is right.

The policy is meant to be only partly right after this (tens of percent), so that reinforcement learning has
something to improve that a test can measure. Where a tiny model ends up after a fixed number of steps varied a
lot with the seed here (20% to 60% greedy accuracy for the same schedule), so training stops early once the
accuracy on held-out prompts reaches `target_accuracy`; `steps` is the most it trains.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import BaseModel, NonNegativeInt, PositiveFloat, PositiveInt
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rewardline.trainer.fitting import FitConfig, fit
from rewardline.trainer.local_models import task
from rewardline.trainer.reward_modeling.pairs import chat_ids, encode_conversation, pad_right

IGNORE_INDEX = -100


class SFTConfig(FitConfig):
    steps: PositiveInt = 1200  # at most; cosine decay over this many
    batch_size: PositiveInt = 64
    learning_rate: PositiveFloat = 1.5e-3
    warmup_steps: NonNegativeInt = 50
    # Stop once greedy accuracy on the validation prompts reaches this; accuracy rises steeply once it starts
    # (over 10 points in 50 steps here), so it is checked often (a check of 300 prompts takes ~0.15 s).
    target_accuracy: float = 0.25
    eval_every: int = 25


class Example(BaseModel):
    prompt: str
    response: str


class TaskAccuracy(BaseModel):
    accuracy: float
    format_rate: float
    prompts: int


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> list[int]:
    return chat_ids(tokenizer, [{"role": "user", "content": prompt}], add_generation_prompt=True)


def encode_example(tokenizer: PreTrainedTokenizerBase, example: Example) -> tuple[list[int], list[int]]:
    """Token ids through the end-of-turn token, and labels that score only the assistant's tokens."""
    context = prompt_ids(tokenizer, example.prompt)
    full = encode_conversation(tokenizer, example.prompt, example.response)
    if full[: len(context)] != context:
        raise ValueError("the chat template does not render the prompt as a prefix of the conversation")
    end = full.index(tokenizer.eos_token_id, len(context)) + 1
    return full[:end], [IGNORE_INDEX] * len(context) + full[len(context) : end]


def train_sft(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    validation: tuple[Sequence[str], Sequence[int | str]],
    config: SFTConfig,
) -> list[float]:
    """Causal LM loss on the response tokens only; returns the loss of every step taken.

    `validation` is (prompts, answers), checked every `eval_every` steps against `target_accuracy`.
    """
    encoded = [encode_example(tokenizer, e) for e in examples]

    def batch_loss(indices: list[int]) -> torch.Tensor:
        input_ids, attention_mask = pad_right([encoded[i][0] for i in indices], tokenizer.pad_token_id)
        labels, _ = pad_right([encoded[i][1] for i in indices], IGNORE_INDEX)
        return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss

    def reached_target(step: int) -> bool:
        if step % config.eval_every:
            return False
        return task_accuracy(model, tokenizer, *validation).accuracy >= config.target_accuracy

    return fit(model, batch_loss, len(encoded), config, name="policy sft", after_step=reached_target)


@torch.no_grad()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    max_new_tokens: int = 16,
    batch_size: int = 128,
) -> list[str]:
    """Left-padded batches, as generation needs every row's last prompt token in the same column."""
    model.eval()
    responses = []
    for start in range(0, len(prompts), batch_size):
        rows = [prompt_ids(tokenizer, p) for p in prompts[start : start + batch_size]]
        width = max(len(r) for r in rows)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        output = model.generate(  # type: ignore[operator]  # GenerationMixin's; PreTrainedModel's type lacks it
            input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens, do_sample=False
        )
        responses += tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    return responses


def task_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    answers: Sequence[int | str],
) -> TaskAccuracy:
    responses = generate_greedy(model, tokenizer, prompts)
    correct = [task.is_correct(r, a) for r, a in zip(responses, answers, strict=True)]
    formatted = [task.follows_format(r) for r in responses]
    return TaskAccuracy(
        accuracy=sum(correct) / len(correct), format_rate=sum(formatted) / len(formatted), prompts=len(prompts)
    )
