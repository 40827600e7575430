"""What a model kind must provide to the shared serving pipeline.

The pipeline (validation, rendering, cache, admission, batching, health, metrics, shutdown) is written
once; a kind — reward, uncertainty, judge — only says how to render a sample, how to run a batch and what
a Reward carries. Kinds that can compare two responses (``compares``) render a Compare request as inputs that go
through the same queue and batcher as samples (``compare_inputs``), and read the answer from their rewards
(``compared``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import grpc
from transformers import PreTrainedTokenizerBase

from rewardline.services.api import pb
from rewardline.services.backends.base import ClassifierBackend, CostModel
from rewardline.services.config import ServeConfig
from rewardline.services.errors import ServiceError
from rewardline.services.metrics import ServiceMetrics
from rewardline.services.rendering import TRUNCATION_DESCRIPTIONS, InputRenderer, RenderedInput


class Scorer(Protocol):
    kind: int  # a pb.ModelKind value
    revision: str
    max_length: int
    cost_model: CostModel
    max_padding: float | None  # what max_batch_padding "auto" means for this scorer's backend
    concurrency: int
    tokenizer: PreTrainedTokenizerBase  # for faces that receive text or token ids (vLLM's /classify)

    def info(self) -> pb.GetInfoResponse:
        """The model's half of GetInfo (the server adds its own limits)."""
        ...

    def render(self, samples: Sequence[pb.Sample]) -> list[RenderedInput | ServiceError]:
        """One entry per sample: what the model reads, or why this sample cannot be scored."""
        ...

    def refused_by_size(self, response_bytes: int, label: str) -> ServiceError | None:
        """Why a sample whose response is this many bytes cannot be scored, told before the request is parsed
        (core.screen); None where the size alone does not tell."""
        ...

    def cache_scope(self) -> str:
        """Everything besides the revision and the tokens that changes a reward (a judge's mode, say)."""
        ...

    async def score_batch(self, inputs: list[RenderedInput]) -> list[pb.Reward]:
        """One Reward per input, without its id; ``model_revision``, ``truncated``, ``num_tokens`` set."""
        ...

    def observe(self, reward: pb.Reward, metrics: ServiceMetrics) -> None:
        """Kind-specific metrics for one reward."""
        ...

    compares: bool  # whether Compare is served (judges); the others answer UNIMPLEMENTED

    def compare_inputs(self, request: pb.CompareRequest) -> list[RenderedInput]:
        """What the model reads to compare the pair, as inputs for ``score_batch`` (rendering: runs off the loop)."""
        ...

    def compared(self, request: pb.CompareRequest, rewards: list[pb.Reward]) -> pb.CompareResponse:
        """The CompareResponse from ``score_batch``'s rewards for ``compare_inputs``."""
        ...

    async def ready(self) -> bool:
        """Whether the backend can serve now; folded into the health status."""
        ...

    async def close(self) -> None: ...


def unimplemented_compare(kind_name: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.UNIMPLEMENTED, f"Compare is served by judge services; this is a {kind_name} service"
    )


def classifier_info(
    config: ServeConfig, backend: ClassifierBackend, renderer: InputRenderer, revision: str
) -> pb.GetInfoResponse:
    """The GetInfo fields every sequence-classification kind (reward, uncertainty) fills alike."""
    return pb.GetInfoResponse(
        model_name=config.name,
        revision=revision,
        max_length=renderer.max_length,
        backend=backend.name,
        device=backend.device,
        dtype=backend.dtype,
        truncation=TRUNCATION_DESCRIPTIONS[renderer.truncation],
        chat_template=renderer.use_chat_template,
    )
