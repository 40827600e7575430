"""The interfaces backends implement: sequence classifiers (reward, uncertainty) and causal LMs (judges).

A classifier backend turns token ids into the model's raw output logits, nothing more: rendering, batching,
caching and what the outputs mean (a scalar, attributes, an ensemble's members) stay in the shared pipeline, so
a new backend is one module and every model kind runs on every backend that can produce logits.

A judge needs two things from a causal LM: the log-probabilities of a few candidate tokens at the position after
a context (read, never sampled), and generated text (rationales). Two engines provide them: transformers in the
service's process (``hf_causal.py``) and vLLM (``vllm.py``). They return text; what it means (where a rationale
ends, which verdict it reached) is the judge's to read, so the same template and mode give the same rewards on
both, within the engines' float differences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import numpy as np

# "padded": a batch costs longest x size tokens (transformers); "packed": the sum of lengths (vLLM).
CostModel = Literal["padded", "packed"]


@runtime_checkable
class ClassifierBackend(Protocol):
    """Runs a sequence-classification model (backbone + linear head) on token ids."""

    name: str  # "hf", "vllm" or "triton"
    device: str
    dtype: str
    num_outputs: int
    cost_model: CostModel
    # How many batches may run at once (a remote server batches concurrent calls itself).
    concurrency: int
    # What ``max_batch_padding: auto`` means here: the most padding worth computing, as a fraction of a
    # batch's real tokens (None: no limit).
    max_padding: float | None

    async def classify(self, batch: Sequence[Sequence[int]]) -> np.ndarray:
        """Raw logits, float32, shape (len(batch), num_outputs), row i for batch[i]."""
        ...

    async def ready(self) -> bool:
        """Whether the backend can serve now (a remote one may go away and come back)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Generated:
    """One generated continuation: its text, through the stop string when generation stopped there."""

    text: str
    num_tokens: int


@runtime_checkable
class JudgeBackend(Protocol):
    """Runs a causal LM for a judge: candidate-token log-probabilities, and generation."""

    name: str  # "hf" or "vllm"
    device: str
    dtype: str
    cost_model: CostModel
    concurrency: int
    max_padding: float | None  # as ClassifierBackend.max_padding

    async def next_token_logprobs(self, contexts: Sequence[Sequence[int]], token_ids: Sequence[int]) -> np.ndarray:
        """float64 (len(contexts), len(token_ids)): log P(token | context) under the model, full-vocabulary softmax."""
        ...

    async def generate(
        self, contexts: Sequence[Sequence[int]], *, n: int, max_tokens: int, temperature: float, stop: str, seed: int
    ) -> list[list[Generated]]:
        """``n`` continuations of each context, each ending after ``stop`` (included), at the end of the turn, or
        at ``max_tokens``."""
        ...

    async def ready(self) -> bool: ...

    async def close(self) -> None: ...
