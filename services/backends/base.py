"""The interface every sequence-classification backend implements.

A backend turns token ids into the model's raw output logits, nothing more: rendering, batching, caching
and what the outputs mean (a scalar, attributes, an ensemble's members) stay in the shared pipeline, so a
new backend is one module and every model kind runs on every backend that can produce logits.
"""

from __future__ import annotations

from typing import Literal, Protocol, Sequence, runtime_checkable

import numpy as np


@runtime_checkable
class ClassifierBackend(Protocol):
    """Runs a sequence-classification model (backbone + linear head) on token ids."""

    name: Literal["hf", "vllm", "triton"]
    device: str
    dtype: str
    num_outputs: int
    # "padded": a batch costs longest x size tokens (transformers); "packed": the sum of lengths (vLLM).
    cost_model: Literal["padded", "packed"]
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


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but no CUDA device is available")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto``: bfloat16 on a GPU, float32 on CPU (bfloat16 matmuls are slower than float32 on most CPUs)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"
