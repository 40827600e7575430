"""The judge kind: a causal LM read under a template, as a reward source behind the shared contract.

Score, by mode (``judge_mode``):
- ``verdict``: score = P(positive) normalised over positive + negative, in [0, 1];
- ``rating``: score = the expected rating under the probabilities of the rating tokens 1..K, mapped linearly
  from [1, K] onto ``judge_rating_range`` (default [0, 1]); ``most_likely_rating`` beside it;
- ``rationale_verdict`` / ``rationale_rating``: ``judge_rationales`` rationales are generated; after each, the
  verdict or rating is read as above at the position after the marker; the score is the mean over the
  rationales that reached the marker. A rationale that did not (end of turn or the token limit first) is
  *unparsed*: the reward is flagged ``judgement.unparsed`` and counted in ``rewardline_judge_unparsed``; when no
  rationale reached the marker the score is 0 (the proto says so).
Compare reads P("A") over A + B for the pair in both orders (directly, without rationales) and averages. The two
presentations go through the service's queue and batcher as two inputs (``PairInput``), batched with Score's
samples, so Compare is bounded and batched exactly as Score is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rewardline.services.api import pb
from rewardline.services.backends import make_judge_backend
from rewardline.services.backends.base import JudgeBackend
from rewardline.services.config import ServeConfig
from rewardline.services.errors import ServiceError, invalid_argument
from rewardline.services.judge.modes import (
    class_log_masses,
    is_rating_mode,
    is_rationale_mode,
    mean_distribution,
    normalised,
    pairwise,
    rating,
    rating_score,
    split_rationale,
    verdict_probability,
)
from rewardline.services.judge.prompting import JudgePrompts
from rewardline.services.metrics import ServiceMetrics
from rewardline.services.modeling import load_tokenizer, weights_revision
from rewardline.services.rendering import RenderedInput


@dataclass(frozen=True)
class PairInput(RenderedInput):
    """One presentation of a Compare pair: its answer is read from the pairwise slot ("A" or "B")."""


class JudgeScorer:
    """Generative judges on hf or vLLM."""

    kind = pb.MODEL_KIND_JUDGE
    compares = True

    def __init__(
        self, config: ServeConfig, backend: JudgeBackend, prompts: JudgePrompts, revision: str, max_length: int
    ) -> None:
        self.config = config
        self.backend = backend
        self.prompts = prompts
        self.tokenizer = prompts.tokenizer
        self.revision = revision
        self.max_length = max_length
        self.cost_model = backend.cost_model
        self.max_padding = backend.max_padding
        self.concurrency = backend.concurrency
        self.mode = config.judge_mode
        self.rationale = is_rationale_mode(self.mode)
        self.rating = is_rating_mode(self.mode)
        self._generated_tokens = 0  # counted in score_batch, handed to the metric in observe
        self._info = pb.GetInfoResponse(
            model_name=config.name,
            revision=revision,
            kind=self.kind,
            attributes=["score"],
            max_length=max_length,
            backend=backend.name,
            device=backend.device,
            dtype=backend.dtype,
            truncation=prompts.truncation_description,
            chat_template=prompts.pointwise.use_chat_template,
            judge_template=prompts.pointwise.template.name,
            judge_mode=self.mode,
        )

    @classmethod
    def load(cls, config: ServeConfig) -> JudgeScorer:
        model_dir = Path(config.model)
        revision = weights_revision(model_dir)
        tokenizer = load_tokenizer(model_dir, config.trust_remote_code)
        max_length = config.resolved_max_length(model_dir, tokenizer)
        has_template = bool(getattr(tokenizer, "chat_template", None))
        use_chat = {"auto": has_template, "on": True, "off": False}[config.chat_template]
        if use_chat and not has_template:
            raise ValueError("chat_template is on but the tokenizer has no chat template")
        # Templates and labels are checked before the engine starts: a bad template fails in a second.
        prompts = JudgePrompts.from_config(config, tokenizer, max_length, use_chat)
        backend = make_judge_backend(config, model_dir, tokenizer, max_length)
        return cls(config, backend, prompts, revision, max_length)

    def info(self) -> pb.GetInfoResponse:
        out = pb.GetInfoResponse()
        out.CopyFrom(self._info)
        return out

    def render(self, samples: Sequence[pb.Sample]) -> list[RenderedInput | ServiceError]:
        return self.prompts.render_samples(samples)

    def refused_by_size(self, response_bytes: int, label: str) -> ServiceError | None:
        return self.prompts.pointwise.refused_by_size(response_bytes, label)

    def cache_scope(self) -> str:
        c = self.config
        return "|".join(
            [
                self.prompts.scope(),
                str(c.judge_rating_scale),
                ",".join(map(str, c.judge_rating_range)),
                str(c.judge_rationales),
                str(c.judge_max_rationale_tokens),
                str(c.judge_temperature),
                str(c.judge_seed),
            ]
        )

    # -- scoring ---------------------------------------------------------------------------------------------
    async def score_batch(self, inputs: list[RenderedInput]) -> list[pb.Reward]:
        pairs = [i for i, x in enumerate(inputs) if isinstance(x, PairInput)]
        if not pairs:
            return await self._score_samples(inputs)
        samples = [i for i, x in enumerate(inputs) if not isinstance(x, PairInput)]
        out: list[pb.Reward] = [pb.Reward()] * len(inputs)
        if samples:
            for i, reward in zip(samples, await self._score_samples([inputs[i] for i in samples])):
                out[i] = reward
        slot = self.prompts.pair_slot
        rows = await self.backend.next_token_logprobs([inputs[i].token_ids for i in pairs], slot.token_ids)
        for i, row in zip(pairs, rows):
            first = verdict_probability(normalised(class_log_masses(row, slot.classes, slot.token_ids)))
            out[i] = pb.Reward(score=first, model_revision=self.revision, num_tokens=inputs[i].num_tokens)
        return out

    async def _score_samples(self, inputs: list[RenderedInput]) -> list[pb.Reward]:
        if self.rationale:
            return await self._score_with_rationales(inputs)
        rows = await self.backend.next_token_logprobs([x.token_ids for x in inputs], self.prompts.slot.token_ids)
        return [self._reward(x, [self._distribution(row)]) for x, row in zip(inputs, rows)]

    async def _score_with_rationales(self, inputs: list[RenderedInput]) -> list[pb.Reward]:
        c = self.config
        assert self.prompts.marker is not None
        generated = await self.backend.generate(
            [x.token_ids for x in inputs],
            n=c.judge_rationales,
            max_tokens=c.judge_max_rationale_tokens,
            temperature=c.judge_temperature,
            stop=self.prompts.marker,
            seed=c.judge_seed,
        )
        contexts, owners = [], []
        parsed: list[list[tuple[str, bool]]] = []  # per input: (rationale before the marker, marker reached)
        for i, (x, outputs) in enumerate(zip(inputs, generated)):
            parsed.append([split_rationale(g.text, self.prompts.marker) for g in outputs])
            self._generated_tokens += sum(g.num_tokens for g in outputs)
            for rationale, stopped in parsed[-1]:
                if stopped:
                    contexts.append(self.prompts.rationale_context(x.token_ids, rationale))
                    owners.append(i)
        token_ids = self.prompts.slot.token_ids
        rows = (
            await self.backend.next_token_logprobs(contexts, token_ids) if contexts else np.empty((0, len(token_ids)))
        )
        readings: list[list[np.ndarray]] = [[] for _ in inputs]
        for owner, row in zip(owners, rows):
            readings[owner].append(self._distribution(row))
        rewards = []
        for x, rationales, distributions in zip(inputs, parsed, readings):
            reward = self._reward(x, distributions)
            reward.judgement.rationale = rationales[0][0] if rationales else ""
            reward.judgement.num_rationales = len(rationales)
            reward.judgement.unparsed = any(not stopped for _, stopped in rationales)
            rewards.append(reward)
        return rewards

    def _distribution(self, row: Sequence[float]) -> np.ndarray:
        """The judge's distribution over its possible answers at one answer position."""
        slot = self.prompts.slot
        return normalised(class_log_masses(row, slot.classes, slot.token_ids))

    def _reward(self, x: RenderedInput, distributions: list[np.ndarray]) -> pb.Reward:
        """The reward from the answer distributions read for one sample (several with sampled rationales)."""
        reward = pb.Reward(model_revision=self.revision, truncated=x.truncated, num_tokens=x.num_tokens)
        judgement = reward.judgement
        judgement.mode = self.mode
        p = mean_distribution(distributions)
        if p is None:  # no rationale reached the marker: score 0, flagged unparsed by the caller
            reward.score = 0.0
        elif self.rating:
            r = rating(p)
            judgement.expected_rating = r.expected
            judgement.most_likely_rating = r.most_likely
            low, high = self.config.judge_rating_range
            reward.score = rating_score(r.expected, self.config.judge_rating_scale, low, high)
        else:
            judgement.verdict_probability = verdict_probability(p)
            reward.score = judgement.verdict_probability
        return reward

    def observe(self, reward: pb.Reward, metrics: ServiceMetrics) -> None:
        if reward.judgement.unparsed:
            metrics.judge_unparsed.inc()
        if self._generated_tokens:
            metrics.judge_generated_tokens.inc(self._generated_tokens)
            self._generated_tokens = 0

    # -- Compare -----------------------------------------------------------------------------------------------
    def compare_inputs(self, request: pb.CompareRequest) -> list[RenderedInput]:
        """The pair shown A-first and B-first."""
        if self.config.empty_response == "refuse":
            for name in ("response_a", "response_b"):
                if not getattr(request, name).strip():
                    raise invalid_argument(f"Compare: empty {name}")
        return [PairInput(x.token_ids, x.truncated) for x in self.prompts.render_pair(request)]

    def compared(self, request: pb.CompareRequest, rewards: list[pb.Reward]) -> pb.CompareResponse:
        """P(A preferred) in both orders from the judge's P(first shown is better) for each presentation."""
        p_a_first = rewards[0].score
        p_a_second = 1.0 - rewards[1].score  # shown second, the request's A is the judge's "B"
        averaged, bias = pairwise(p_a_first, p_a_second)
        return pb.CompareResponse(
            id=request.id,
            prob_a_preferred=averaged,
            prob_a_preferred_a_first=p_a_first,
            prob_a_preferred_a_second=p_a_second,
            position_bias=bias,
            model_revision=self.revision,
        )

    async def ready(self) -> bool:
        return await self.backend.ready()

    async def close(self) -> None:
        await self.backend.close()
