"""The one admission path every face of a service goes through: gate, validation, rendering, cache, batcher.

gRPC handlers (servicer.py) and HTTP routes (http_face/) call the methods here and nothing below them, so a
request from any face is limited, queued, batched, cached and counted exactly like one from any other, and
batches together with them. Failures are ``ServiceError``s carrying the gRPC status; each face turns them into
its own kind of answer (a gRPC status, an HTTP status).

    admitted(method)  the gate (starting, draining) and the request metrics, around any one request
    score(samples)    validate -> render -> cache -> batcher (atomic: one bad sample fails the request)
    score_rendered()  cache -> batcher, for inputs a face has already turned into tokens (vLLM's /classify)
    info(), compare() GetInfo and Compare
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

import grpc

from rewardline.services import __version__
from rewardline.services.api import pb
from rewardline.services.batching import Batcher, padding_limit
from rewardline.services.cache import LRUCache, cache_key
from rewardline.services.config import ServeConfig
from rewardline.services.errors import ServiceError, invalid_argument, unavailable
from rewardline.services.metrics import ServiceMetrics
from rewardline.services.rendering import RenderedInput
from rewardline.services.scorer import Scorer
from rewardline.services.validation import check_request

log = logging.getLogger(__name__)


class Gate:
    """Counts requests in flight and refuses new ones until the model is loaded and once draining has begun."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.draining = False
        self.ready = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._metrics = metrics

    def enter(self) -> None:
        if self.draining:
            raise unavailable("server is draining (shutting down); retry on another replica")
        if not self.ready:
            raise unavailable("server is starting: the model is not loaded yet")
        self._inflight += 1
        self._idle.clear()
        self._metrics.inflight.set(self._inflight)

    def leave(self) -> None:
        self._inflight -= 1
        self._metrics.inflight.set(self._inflight)
        if self._inflight == 0:
            self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    @property
    def inflight(self) -> int:
        return self._inflight


class ScoringCore:
    """One Scorer behind the shared admission path; owned by the server, used by every face."""

    def __init__(self, config: ServeConfig, metrics: ServiceMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.gate = Gate(metrics)
        self.cache: LRUCache[pb.Reward] = LRUCache(config.cache_size)
        self.scorer: Scorer | None = None
        self.batcher: Batcher[RenderedInput, pb.Reward] | None = None
        self.allow_empty_response = config.empty_response == "score"

    def attach(self, scorer: Scorer) -> None:
        """Starts serving ``scorer`` (called once the model is loaded)."""
        self.scorer = scorer
        self.batcher = Batcher(
            scorer.score_batch,
            max_batch_tokens=self.config.max_batch_tokens,
            max_batch_size=self.config.max_batch_size,
            max_wait_s=self.config.max_wait_ms / 1000.0,
            max_queue=self.config.max_queue_samples,
            concurrency=scorer.concurrency,
            cost_model=scorer.cost_model,
            max_padding=padding_limit(self.config.max_batch_padding, scorer.max_padding),
            metrics=self.metrics,
        )
        self.batcher.start()

    @contextlib.asynccontextmanager
    async def admitted(self, method: str) -> AsyncIterator[None]:
        """One request through the gate, counted under ``method`` with the status it ends with.

        An unexpected exception is logged here and leaves as INTERNAL, so that no face shows a client a trace.
        """
        started = time.monotonic()
        code = grpc.StatusCode.OK
        entered = False
        try:
            self.gate.enter()
            entered = True
            yield
        except ServiceError as e:
            code = e.code
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unexpected error", extra={"method": method})
            raise ServiceError(code, "internal error; see the server log") from None
        finally:
            if entered:
                self.gate.leave()
            self.metrics.requests.labels(method, code.name).inc()
            self.metrics.latency.labels(method).observe(time.monotonic() - started)

    # -- shared steps -------------------------------------------------------------------------------------
    def _key(self, rendered: RenderedInput) -> bytes:
        assert self.scorer is not None
        return cache_key(self.scorer.revision, rendered.token_ids, self.scorer.cache_scope())

    def cached(self, rendered: RenderedInput, sample_id: str) -> pb.Reward | None:
        """The cached reward for these tokens, as the client's copy with its id; None on a miss."""
        hit = self.cache.get(self._key(rendered))
        if hit is None:
            self.metrics.cache_misses.inc()
            return None
        self.metrics.cache_hits.inc()
        reward = pb.Reward()
        reward.CopyFrom(hit)
        reward.id = sample_id
        reward.cached = True
        return reward

    def finish(self, rendered: RenderedInput, sample_id: str, computed: pb.Reward) -> pb.Reward:
        """Caches a fresh reward and returns the client's copy with its id."""
        assert self.scorer is not None
        self.cache.put(self._key(rendered), computed)
        reward = pb.Reward()
        reward.CopyFrom(computed)
        reward.id = sample_id
        self.metrics.scores.observe(reward.score)
        if reward.truncated:
            self.metrics.truncated.inc()
        self.scorer.observe(reward, self.metrics)
        return reward

    # -- operations ---------------------------------------------------------------------------------------
    async def score(self, samples: Sequence[pb.Sample], deadline: float | None, method: str) -> list[pb.Reward]:
        """One Reward per sample, in order; the whole request fails if any sample is invalid."""
        scorer = self._scorer()
        self.metrics.samples.labels(method).inc(len(samples))
        check_request(samples, self.config.max_samples_per_request, self.allow_empty_response)
        rendered: list[RenderedInput] = []
        for item in scorer.render(samples):
            if isinstance(item, ServiceError):
                raise item
            rendered.append(item)
        return await self._score_inputs([(s.id, r) for s, r in zip(samples, rendered)], deadline)

    async def score_rendered(
        self, inputs: Sequence[tuple[str, RenderedInput]], deadline: float | None, method: str
    ) -> list[pb.Reward]:
        """Rewards for inputs a face has already turned into tokens (vLLM's /classify), within the same limits."""
        self.metrics.samples.labels(method).inc(len(inputs))
        if not inputs:
            raise invalid_argument("empty request: no inputs")
        if len(inputs) > self.config.max_samples_per_request:
            raise invalid_argument(
                f"too many inputs: {len(inputs)} > max_samples_per_request={self.config.max_samples_per_request}"
            )
        return await self._score_inputs(inputs, deadline)

    async def _score_inputs(
        self, inputs: Sequence[tuple[str, RenderedInput]], deadline: float | None
    ) -> list[pb.Reward]:
        """Rewards for (id, rendered input) pairs, in order: from the cache, else through the batcher."""
        assert self.batcher is not None
        cached = [self.cached(rendered, sample_id) for sample_id, rendered in inputs]
        misses = [i for i, hit in enumerate(cached) if hit is None]
        computed: dict[int, pb.Reward] = {}
        if misses:
            futures = self.batcher.submit([(inputs[i][1], inputs[i][1].num_tokens) for i in misses], deadline)
            for i, reward in zip(misses, await asyncio.gather(*futures)):
                computed[i] = self.finish(inputs[i][1], inputs[i][0], reward)
        return [hit if hit is not None else computed[i] for i, hit in enumerate(cached)]

    def info(self) -> pb.GetInfoResponse:
        info = self._scorer().info()
        info.max_samples_per_request = self.config.max_samples_per_request
        info.server_version = __version__
        return info

    async def compare(self, request: pb.CompareRequest) -> pb.CompareResponse:
        return await self._scorer().compare(request)

    def _scorer(self) -> Scorer:
        assert self.scorer is not None, "the gate admits requests only once a scorer is attached"
        return self.scorer
