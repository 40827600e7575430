"""The uncertainty kind: a reward with how far to trust it, from ensembles, Gaussian or quantile heads.

Everything but the post-processing is the reward kind's: the same renderer, the same backends (any
``make_classifier`` backend runs a shared-backbone model unchanged, as it is a plain checkpoint), the same
server. A separately trained ensemble (``checkpoint_ensemble``) runs one backend per member on the same tokens,
concurrently; members must share a tokenizer or the same tokens would mean different texts to each.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from transformers import PreTrainedTokenizerBase

from rewardline.services.api import pb
from rewardline.services.backends import make_classifier
from rewardline.services.backends.base import ClassifierBackend
from rewardline.services.config import ServeConfig
from rewardline.services.errors import ServiceError
from rewardline.services.metrics import ServiceMetrics
from rewardline.services.modeling import load_tokenizer, weights_revision
from rewardline.services.rendering import InputRenderer, RenderedInput, renderer_for
from rewardline.services.reward.attributes import combination_weights
from rewardline.services.scorer import classifier_info, unimplemented_compare
from rewardline.services.uncertainty.model_format import UncertaintySpec, read_spec, spec_path
from rewardline.services.uncertainty.outputs import HeadOutputs, head_outputs, split_outputs, stack_members


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """What decides the token ids of a rendered sample: vocabulary, merges/normaliser, special tokens, template."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    parts = {
        "class": type(tokenizer).__name__,
        "backend": backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True),
        "special": sorted(map(str, tokenizer.all_special_tokens)),
        "chat_template": getattr(tokenizer, "chat_template", None) or "",
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def shared_tokenizer(dirs: Sequence[Path], trust_remote_code: bool) -> PreTrainedTokenizerBase:
    """The members' one tokenizer; ValueError naming the first member whose tokenizer differs."""
    first = load_tokenizer(dirs[0], trust_remote_code)
    expected = tokenizer_fingerprint(first)
    for d in dirs[1:]:
        if tokenizer_fingerprint(load_tokenizer(d, trust_remote_code)) != expected:
            raise ValueError(
                f"member {d} has a different tokenizer than {dirs[0]}: the members of an ensemble must share one"
            )
    return first


def uncertainty_revision(model_dir: Path, spec: UncertaintySpec) -> str:
    """Weights plus the spec: a new calibration or layout changes the rewards as much as new weights do."""
    dirs = spec.checkpoint_dirs(model_dir)
    if dirs == [Path(model_dir)]:
        return weights_revision(model_dir, extra_files=(spec_path(model_dir),))
    digest = hashlib.sha256()
    for d in dirs:
        digest.update(weights_revision(d).encode())
    digest.update(spec_path(model_dir).read_bytes())
    return digest.hexdigest()[:16]


class UncertaintyScorer:
    """Ensembles of reward heads, Gaussian heads (URM), quantile heads, and ensembles of checkpoints."""

    kind = pb.MODEL_KIND_UNCERTAINTY

    def __init__(
        self,
        config: ServeConfig,
        spec: UncertaintySpec,
        backends: list[ClassifierBackend],
        renderer: InputRenderer,
        revision: str,
    ) -> None:
        self.spec = spec
        self.layout = spec.head_layout()
        self.backends = backends
        self.renderer = renderer
        self.tokenizer = renderer.tokenizer
        self.revision = revision
        self.max_length = renderer.max_length
        self.cost_model = backends[0].cost_model
        self.max_padding = backends[0].max_padding
        self.concurrency = backends[0].concurrency
        self.threshold = spec.calibration.threshold
        self.weights = combination_weights(spec.attributes, config.score_weights)
        for directory, backend in zip(spec.checkpoint_dirs(Path(config.model)), backends):
            if backend.num_outputs != spec.outputs_per_checkpoint:
                raise ValueError(
                    f"{directory} has {backend.num_outputs} outputs; its {spec.kind} spec ({spec.members} members, "
                    f"parameters {spec.parameters}, attributes {spec.attributes}) needs {spec.outputs_per_checkpoint}"
                )
        info = classifier_info(config, backends[0], renderer, revision)
        info.kind = self.kind
        info.attributes.extend(spec.attributes)
        info.score_weights.update({n: float(w) for n, w in zip(spec.attributes, self.weights)})
        info.ood_threshold = self.threshold
        info.uncertainty_kind = spec.kind
        info.num_members = spec.members
        info.quantile_levels.extend(spec.quantile_levels)
        self._info = info

    @classmethod
    def load(cls, config: ServeConfig) -> UncertaintyScorer:
        model_dir = Path(config.model)
        spec = read_spec(model_dir)
        dirs = spec.checkpoint_dirs(model_dir)
        if len(dirs) > 1 and config.backend == "triton":
            raise ValueError(
                "a checkpoint_ensemble runs one model per member, and the triton backend serves the one "
                "model named by --triton-model; serve it with --backend hf or vllm"
            )
        for d in dirs:
            if not d.is_dir():
                raise ValueError(f"member directory {d} listed in {spec_path(model_dir)} does not exist")
        tokenizer = shared_tokenizer(dirs, config.trust_remote_code)
        # the shortest member limit, so that no member is ever given more tokens than it can read
        renderer = min((renderer_for(config, tokenizer, d) for d in dirs), key=lambda r: r.max_length)
        revision = uncertainty_revision(model_dir, spec)
        backends: list[ClassifierBackend] = []
        try:
            for d in dirs:
                backends.append(make_classifier(config, d, tokenizer))
            return cls(config, spec, backends, renderer, revision)
        except BaseException:
            for backend in backends:
                _close_quietly(backend)
            raise

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

    async def predict(self, batch: Sequence[Sequence[int]]) -> HeadOutputs:
        """One forward pass (shared backbone) or one per member (checkpoints, run concurrently)."""
        if len(self.backends) == 1:
            outputs = split_outputs(await self.backends[0].classify(batch), self.layout)
        else:
            logits = await asyncio.gather(*(b.classify(batch) for b in self.backends))
            outputs = stack_members(list(logits), self.layout)
        return head_outputs(outputs, self.layout, self.weights)

    async def score_batch(self, inputs: list[RenderedInput]) -> list[pb.Reward]:
        out = await self.predict([x.token_ids for x in inputs])
        return [self._reward(out, i, x) for i, x in enumerate(inputs)]

    def _reward(self, out: HeadOutputs, i: int, x: RenderedInput) -> pb.Reward:
        # compared as the float32s the client receives, so the flag always agrees with std and ood_threshold
        std = np.float32(out.std[i])
        uncertainty = pb.Uncertainty(
            std=float(std),
            out_of_distribution=bool(std > np.float32(self.threshold)),
            epistemic_std=float(out.epistemic_std[i]),
            aleatoric_std=float(out.aleatoric_std[i]),
            member_scores=[float(s) for s in out.member_scores[i]],
        )
        if out.quantiles is not None:
            uncertainty.quantiles.extend(
                pb.Quantile(level=level, value=float(v))
                for level, v in zip(self.spec.quantile_levels, out.quantiles[i])
            )
        reward = pb.Reward(
            score=float(out.score[i]),
            model_revision=self.revision,
            truncated=x.truncated,
            num_tokens=x.num_tokens,
            uncertainty=uncertainty,
        )
        if len(self.spec.attributes) > 1:
            reward.attributes.update({n: float(v) for n, v in zip(self.spec.attributes, out.attributes[i])})
        return reward

    def observe(self, reward: pb.Reward, metrics: ServiceMetrics) -> None:
        metrics.uncertainty_std.observe(reward.uncertainty.std)
        if reward.uncertainty.out_of_distribution:
            metrics.ood.inc()

    compares = False

    def compare_inputs(self, request: pb.CompareRequest) -> list[RenderedInput]:
        raise unimplemented_compare("uncertainty")

    def compared(self, request: pb.CompareRequest, rewards: list[pb.Reward]) -> pb.CompareResponse:
        raise unimplemented_compare("uncertainty")

    async def ready(self) -> bool:
        states = await asyncio.gather(*(b.ready() for b in self.backends))
        return all(states)

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self.backends))


def _close_quietly(backend: ClassifierBackend) -> None:
    """A backend made before a later one failed to load: free it without an event loop (load runs in a thread)."""
    try:
        asyncio.run(backend.close())
    except Exception:
        pass
