"""A byte-level BPE tokenizer trained here, wrapped so that transformers and vLLM load it like any hub tokenizer.

Choices that matter downstream:
- Digits are split one by one (as Llama 3 and Qwen split them into short groups): a tiny model can then learn
  addition digit by digit instead of memorising a token per number.
- The chat template is ChatML (`<|im_start|>role\\n...<|im_end|>\\n`). The end-of-turn token `<|im_end|>` is
  also the EOS token (the Qwen2 convention), so anything that stops at `eos_token_id` — `generate`, vLLM,
  trainers that mask a completion after EOS — stops at the end of the assistant's turn.
- BOS is written by the chat template, not added by the tokenizer, so encoding a rendered chat does not double it.
- PAD is a token of its own: classifiers find the last real token by looking for the first pad.
"""

from __future__ import annotations

import random

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from rewardline.trainer.local_models import generic_text, task

BOS = "<|bos|>"
EOS = "<|im_end|>"
PAD = "<|pad|>"
TURN_START = "<|im_start|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, TURN_START)

# GPT-2's split pattern with every digit on its own (a leading space stays with the first digit).
_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def tokenizer_corpus(rng: random.Random, task_texts: int, generic_texts: int) -> list[str]:
    """Task prompts, right and wrong responses, and generic text, in proportions the caller sets."""
    texts: list[str] = []
    operands = task.all_operands()
    for _ in range(task_texts):
        problem = task.with_random_template(rng.choice(operands), rng)
        kind = rng.choice(task.WRONG_KINDS)
        wrong = task.wrong_response(problem.answer, kind, rng)
        # Role names as the chat template writes them, so that each becomes one token.
        texts += [f"user\n{problem.prompt}", f"assistant\n{task.canonical_response(problem.answer)}", wrong]
    texts += [f"system\n{generic_text.sentence(rng)}" for _ in range(task_texts // 10)]
    return texts + generic_text.generic_corpus(rng, generic_texts)


def train_tokenizer(texts: list[str], vocab_size: int, model_max_length: int) -> PreTrainedTokenizerFast:
    """Learns the merges on `texts`; `vocab_size` counts the special tokens and the 256 byte symbols."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    bpe_trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=bpe_trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[TURN_START],
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        padding_side="right",
    )
