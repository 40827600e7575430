"""The interface a judge's engine implements, and the choice between them.

A judge needs two things from a causal LM: the log-probabilities of a few candidate tokens at the position after
a context (read, never sampled), and generation (rationales). Two engines provide them: transformers in the
service's process (``services/backends/hf_causal.py``) and vLLM (``services/backends/vllm.py``). Everything else —
templates, answer slots, the arithmetic of verdicts and ratings — is shared, so the same template and mode give
the same rewards on both, within the engines' float differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, Sequence, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from rewardline.services.config import ServeConfig


@dataclass(frozen=True)
class Generated:
    """One generated rationale: the text before the stop marker, and whether the marker came."""

    text: str
    stopped: bool
    num_tokens: int


@runtime_checkable
class JudgeBackend(Protocol):
    name: Literal["hf", "vllm"]
    device: str
    dtype: str
    cost_model: Literal["padded", "packed"]
    concurrency: int
    max_padding: float | None  # as ClassifierBackend.max_padding

    async def next_token_logprobs(self, contexts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> np.ndarray:
        """float64 (len(contexts), len(token_ids)): log P(token | context) under the model, full-vocabulary softmax."""
        ...

    async def generate(
        self, contexts: Sequence[Sequence[int]], *, n: int, max_tokens: int, temperature: float, stop: str, seed: int
    ) -> list[list[Generated]]:
        """``n`` continuations of each context, each ending at ``stop`` (excluded), end of turn, or ``max_tokens``."""
        ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...


def make_judge_backend(config: "ServeConfig", model_dir: Path, tokenizer: "PreTrainedTokenizerBase", max_length: int) -> JudgeBackend:
    """The configured engine for a causal-LM judge (imported only when chosen)."""
    if config.backend == "hf":
        from rewardline.services.backends.hf_causal import HFCausalLM

        return HFCausalLM(model_dir, tokenizer, config.device, config.dtype, config.trust_remote_code, config.judge_hf_share_prefixes)
    if config.backend == "vllm":
        from rewardline.services.backends.vllm import VLLMJudge

        return VLLMJudge.from_config(config, model_dir, max_length)
    raise ValueError(f"backend {config.backend!r} cannot serve a judge (a generative model): use hf or vllm")
