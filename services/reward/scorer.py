"""The reward kind: a sequence-classification checkpoint whose logits are the reward (or its attributes)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import AutoConfig

from rewardline.services.api import pb
from rewardline.services.backends import make_classifier
from rewardline.services.backends.base import ClassifierBackend
from rewardline.services.config import ServeConfig
from rewardline.services.errors import ServiceError
from rewardline.services.metrics import ServiceMetrics
from rewardline.services.modeling import load_tokenizer, weights_revision
from rewardline.services.rendering import InputRenderer, RenderedInput, renderer_for
from rewardline.services.reward.attributes import attribute_names, combination_weights
from rewardline.services.scorer import classifier_info, unimplemented_compare


class RewardScorer:
    """Scalar and multi-attribute reward models."""

    kind = pb.MODEL_KIND_REWARD

    def __init__(
        self,
        config: ServeConfig,
        backend: ClassifierBackend,
        renderer: InputRenderer,
        revision: str,
        id2label: dict | None,
    ) -> None:
        self.backend = backend
        self.renderer = renderer
        self.tokenizer = renderer.tokenizer
        self.revision = revision
        self.max_length = renderer.max_length
        self.cost_model = backend.cost_model
        self.max_padding = backend.max_padding
        self.concurrency = backend.concurrency
        self.attributes = attribute_names(id2label, backend.num_outputs)
        self.weights = combination_weights(self.attributes, config.score_weights)
        self._info = classifier_info(config, backend, renderer, revision)
        self._info.kind = self.kind
        self._info.attributes.extend(self.attributes)
        self._info.score_weights.update({n: float(w) for n, w in zip(self.attributes, self.weights)})

    @classmethod
    def load(cls, config: ServeConfig) -> RewardScorer:
        model_dir = Path(config.model)
        revision = weights_revision(model_dir)
        tokenizer = load_tokenizer(model_dir, config.trust_remote_code)
        renderer = renderer_for(config, tokenizer, model_dir)
        backend = make_classifier(config, model_dir, tokenizer)
        id2label = AutoConfig.from_pretrained(model_dir).id2label
        return cls(config, backend, renderer, revision, id2label)

    def info(self) -> pb.GetInfoResponse:
        out = pb.GetInfoResponse()
        out.CopyFrom(self._info)
        return out

    def render(self, samples: Sequence[pb.Sample]) -> list[RenderedInput | ServiceError]:
        return self.renderer.render(samples)

    def refused_by_size(self, response_bytes: int, label: str) -> ServiceError | None:
        return self.renderer.refused_by_size(response_bytes, label)

    def cache_scope(self) -> str:
        return ",".join(f"{w:.6g}" for w in self.weights)

    async def score_batch(self, inputs: list[RenderedInput]) -> list[pb.Reward]:
        logits = await self.backend.classify([x.token_ids for x in inputs])
        scores = logits @ self.weights
        return [self._reward(row, float(score), x) for row, score, x in zip(logits, scores, inputs)]

    def _reward(self, row: np.ndarray, score: float, x: RenderedInput) -> pb.Reward:
        reward = pb.Reward(score=score, model_revision=self.revision, truncated=x.truncated, num_tokens=x.num_tokens)
        if len(self.attributes) > 1:
            reward.attributes.update({n: float(v) for n, v in zip(self.attributes, row)})
        return reward

    def observe(self, reward: pb.Reward, metrics: ServiceMetrics) -> None:
        pass

    compares = False

    def compare_inputs(self, request: pb.CompareRequest) -> list[RenderedInput]:
        raise unimplemented_compare("reward")

    def compared(self, request: pb.CompareRequest, rewards: list[pb.Reward]) -> pb.CompareResponse:
        raise unimplemented_compare("reward")

    async def ready(self) -> bool:
        return await self.backend.ready()

    async def close(self) -> None:
        await self.backend.close()
