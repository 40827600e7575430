"""The RewardService RPCs, written once for every model kind.

Score:        validate -> render -> cache -> admission -> batcher -> Rewards in request order (atomic).
ScoreStream:  the same per sample, answered as each is ready; a failed sample is an in-band Reward.error.
GetInfo:      the model's description plus this server's limits.
Compare:      delegated to the kind (judges); others answer UNIMPLEMENTED.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import NoReturn, TypeVar

import grpc

from rewardline.services import __version__
from rewardline.services.api import pb, pb_grpc
from rewardline.services.batching import Batcher, padding_limit
from rewardline.services.cache import LRUCache, cache_key
from rewardline.services.config import ServeConfig
from rewardline.services.errors import ServiceError, unavailable
from rewardline.services.metrics import ServiceMetrics
from rewardline.services.rendering import RenderedInput
from rewardline.services.scorer import Scorer
from rewardline.services.validation import check_request, check_sample

log = logging.getLogger(__name__)
T = TypeVar("T")


class Gate:
    """Counts RPCs in flight and refuses new ones once draining has begun."""

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


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """Ends the RPC with ``code``; grpc's ``abort`` always raises, which this signature says."""
    await context.abort(code, message)
    raise AssertionError("grpc.aio.ServicerContext.abort returned")


def _error_reward(sample_id: str, error: ServiceError) -> pb.Reward:
    return pb.Reward(id=sample_id, error=pb.Error(code=error.code.value[0], message=error.message))


class RewardServicer(pb_grpc.RewardServiceServicer):
    """Serves one Scorer; shared by the reward, uncertainty and judge services."""

    def __init__(self, config: ServeConfig, metrics: ServiceMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.gate = Gate(metrics)
        self.cache: LRUCache[pb.Reward] = LRUCache(config.cache_size)
        self.scorer: Scorer | None = None
        self.batcher: Batcher[RenderedInput, pb.Reward] | None = None

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

    # -- shared steps -------------------------------------------------------------------------------------
    def _deadline(self, context: grpc.aio.ServicerContext) -> float | None:
        remaining = context.time_remaining()
        return None if remaining is None else time.monotonic() + remaining

    def _key(self, rendered: RenderedInput) -> bytes:
        assert self.scorer is not None
        return cache_key(self.scorer.revision, rendered.token_ids, self.scorer.cache_scope())

    def _cached(self, rendered: RenderedInput, sample_id: str) -> pb.Reward | None:
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

    def _finish(self, rendered: RenderedInput, sample_id: str, computed: pb.Reward) -> pb.Reward:
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

    async def _run_unary(self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        code = grpc.StatusCode.OK
        entered = False
        try:
            self.gate.enter()
            entered = True
            return await work()
        except ServiceError as e:
            code = e.code
            await abort(context, e.code, e.message)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unexpected error", extra={"method": method})
            await abort(context, grpc.StatusCode.INTERNAL, "internal error; see the server log")
        finally:
            if entered:
                self.gate.leave()
            self.metrics.requests.labels(method, code.name).inc()
            self.metrics.latency.labels(method).observe(time.monotonic() - started)

    # -- RPCs ---------------------------------------------------------------------------------------------
    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        async def work() -> pb.ScoreResponse:
            assert self.scorer is not None and self.batcher is not None
            samples = request.samples
            self.metrics.samples.labels("Score").inc(len(samples))
            check_request(samples, self.config.max_samples_per_request)
            rendered: list[RenderedInput] = []
            for item in self.scorer.render(samples):
                if isinstance(item, ServiceError):
                    raise item
                rendered.append(item)
            cached = [self._cached(item, sample.id) for sample, item in zip(samples, rendered)]
            misses = [i for i, hit in enumerate(cached) if hit is None]
            computed: dict[int, pb.Reward] = {}
            if misses:
                futures = self.batcher.submit(
                    [(rendered[i], rendered[i].num_tokens) for i in misses], self._deadline(context)
                )
                for i, reward in zip(misses, await asyncio.gather(*futures)):
                    computed[i] = self._finish(rendered[i], samples[i].id, reward)
            return pb.ScoreResponse(rewards=[hit if hit is not None else computed[i] for i, hit in enumerate(cached)])

        return await self._run_unary("Score", context, work)

    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.GetInfoResponse:
        async def work() -> pb.GetInfoResponse:
            assert self.scorer is not None
            info = self.scorer.info()
            info.max_samples_per_request = self.config.max_samples_per_request
            info.server_version = __version__
            return info

        return await self._run_unary("GetInfo", context, work)

    async def Compare(self, request: pb.CompareRequest, context: grpc.aio.ServicerContext) -> pb.CompareResponse:
        async def work() -> pb.CompareResponse:
            assert self.scorer is not None
            return await self.scorer.compare(request)

        return await self._run_unary("Compare", context, work)

    async def ScoreStream(
        self, request_iterator: AsyncIterator[pb.ScoreRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ScoreResponse]:
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            self.gate.enter()
        except ServiceError as e:
            self.metrics.requests.labels("ScoreStream", e.code.name).inc()
            await context.abort(e.code, e.message)
        stream = _Stream(self, context)
        try:
            async for response in stream.run(request_iterator):
                yield response
            if self.gate.draining:
                code = grpc.StatusCode.UNAVAILABLE
                await context.abort(code, "server is draining; samples sent after the drain began were refused")
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unexpected error", extra={"method": "ScoreStream"})
            await context.abort(code, "internal error; see the server log")
        finally:
            stream.cancel()
            self.gate.leave()
            self.metrics.requests.labels("ScoreStream", code.name).inc()
            self.metrics.latency.labels("ScoreStream").observe(time.monotonic() - started)


class _Stream:
    """One ScoreStream call: a reader task queues samples, the call's generator yields what is ready."""

    def __init__(self, servicer: RewardServicer, context: grpc.aio.ServicerContext) -> None:
        self.s = servicer
        self.context = context
        self.ready: asyncio.Queue[pb.Reward] = asyncio.Queue()
        self.pending: dict[str, asyncio.Future] = {}
        self.reader: asyncio.Task | None = None
        self.reading_done = asyncio.Event()

    def _answer(self, reward: pb.Reward) -> None:
        self.ready.put_nowait(reward)

    def _refuse(self, sample_id: str, error: ServiceError) -> None:
        self._answer(_error_reward(sample_id, error))

    def _accept(self, samples: Sequence[pb.Sample]) -> None:
        s = self.s
        assert s.scorer is not None and s.batcher is not None
        s.metrics.samples.labels("ScoreStream").inc(len(samples))
        valid: list[pb.Sample] = []
        batch_ids: set[str] = set()
        for i, sample in enumerate(samples):
            try:
                if s.gate.draining:
                    raise unavailable("server is draining; send this sample to another replica")
                check_sample(sample, i)
                if sample.id in self.pending or sample.id in batch_ids:
                    raise ServiceError(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"duplicate sample id {sample.id!r}: a sample with this id is still awaiting its reward",
                    )
            except ServiceError as e:
                self._refuse(sample.id, e)
                continue
            batch_ids.add(sample.id)
            valid.append(sample)
        if not valid:
            return
        deadline = s._deadline(self.context)
        for sample, item in zip(valid, s.scorer.render(valid)):
            if isinstance(item, ServiceError):
                self._refuse(sample.id, item)
                continue
            hit = s._cached(item, sample.id)
            if hit is not None:
                self._answer(hit)
                continue
            try:
                (future,) = s.batcher.submit([(item, item.num_tokens)], deadline)
            except ServiceError as e:
                self._refuse(sample.id, e)
                continue
            self.pending[sample.id] = future
            future.add_done_callback(functools.partial(self._settle, sample.id, item))

    def _settle(self, sample_id: str, item: RenderedInput, future: asyncio.Future) -> None:
        self.pending.pop(sample_id, None)
        if future.cancelled():
            return
        error = future.exception()
        if error is None:
            self._answer(self.s._finish(item, sample_id, future.result()))
        elif isinstance(error, ServiceError):
            self._refuse(sample_id, error)
        else:
            log.error("unexpected error scoring a streamed sample", exc_info=error)
            self._refuse(sample_id, ServiceError(grpc.StatusCode.INTERNAL, "internal error; see the server log"))

    async def _read(self, request_iterator: AsyncIterator[pb.ScoreRequest]) -> None:
        try:
            async for request in request_iterator:
                self._accept(request.samples)
        finally:
            self.reading_done.set()
            self.ready.put_nowait(pb.Reward())  # wakes the writer so it can notice the end

    async def run(self, request_iterator: AsyncIterator[pb.ScoreRequest]) -> AsyncIterator[pb.ScoreResponse]:
        self.reader = asyncio.get_running_loop().create_task(self._read(request_iterator))
        while True:
            first = await self.ready.get()
            batch = [first]
            while not self.ready.empty():
                batch.append(self.ready.get_nowait())
            rewards = [r for r in batch if r.id or r.HasField("error")]
            if rewards:
                yield pb.ScoreResponse(rewards=rewards)
            if self.reading_done.is_set() and not self.pending and self.ready.empty():
                break
        if self.reader.done() and not self.reader.cancelled() and (error := self.reader.exception()) is not None:
            raise error

    def cancel(self) -> None:
        if self.reader and not self.reader.done():
            self.reader.cancel()
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()
