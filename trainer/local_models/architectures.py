"""Llama-architecture models of the sizes the project uses, built from a config (never downloaded).

Llama because it is what both transformers and vLLM support best, and what real reward models (Skywork-Reward)
are. vLLM's CPU attention only runs some head sizes, so every size here is checked against that list.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

VLLM_CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


class ModelSize(BaseModel):
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


TINY = ModelSize(hidden_size=128, num_layers=2, num_heads=4, intermediate_size=344)
# The benchmark's reward model: ~3.4M parameters with a ~1024-token vocabulary.
BENCHMARK = ModelSize(hidden_size=256, num_layers=4, num_heads=8, intermediate_size=688)


def llama_config(size: ModelSize, tokenizer: PreTrainedTokenizerBase, **extra: Any) -> LlamaConfig:
    if size.hidden_size % size.num_heads or size.head_dim not in VLLM_CPU_HEAD_SIZES:
        raise ValueError(f"head size {size.hidden_size}/{size.num_heads} is not one vLLM's CPU build runs")
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_heads,
        max_position_embeddings=size.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
        **extra,
    )


def causal_lm(size: ModelSize, tokenizer: PreTrainedTokenizerBase, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(size, tokenizer, tie_word_embeddings=True))
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    return model


def sequence_classifier(
    size: ModelSize, tokenizer: PreTrainedTokenizerBase, seed: int, labels: Sequence[str] | None = None
) -> LlamaForSequenceClassification:
    """One output per name in `labels`; without labels, one output named as transformers names it (`LABEL_0`),
    as in the configs of real scalar reward models (Skywork-Reward). The pad token id in the config is how the
    model finds each row's last token."""
    torch.manual_seed(seed)
    if labels is None:
        return LlamaForSequenceClassification(llama_config(size, tokenizer, num_labels=1))
    id2label = dict(enumerate(labels))
    config = llama_config(
        size, tokenizer, num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()}
    )
    return LlamaForSequenceClassification(config)


def benchmark_reward_model(tokenizer: PreTrainedTokenizerBase, seed: int = 0) -> LlamaForSequenceClassification:
    """Untrained and scalar: the benchmark measures serving, not judgement."""
    return sequence_classifier(BENCHMARK, tokenizer, seed)


def untrained_classifier(
    tokenizer: PreTrainedTokenizerBase, labels: Sequence[str], size: ModelSize = TINY, seed: int = 0
) -> LlamaForSequenceClassification:
    """A multi-attribute head (one score per name in `labels`), e.g. for ArmoRM-style tests."""
    return sequence_classifier(size, tokenizer, seed, labels)


def save_model(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out: Path) -> Path:
    """A self-contained checkpoint directory: weights (safetensors), config and the tokenizer beside them."""
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
