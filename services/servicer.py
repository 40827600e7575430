"""The RewardService RPCs: the gRPC face of the shared admission path (core.py), written once for every kind.

Score:        core.score: validate -> render -> cache -> admission -> batcher -> Rewards in request order (atomic).
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

from rewardline.services.api import pb, pb_grpc
from rewardline.services.core import ScoringCore
from rewardline.services.errors import ServiceError, unavailable
from rewardline.services.rendering import RenderedInput
from rewardline.services.validation import check_sample

log = logging.getLogger(__name__)
T = TypeVar("T")


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """Ends the RPC with ``code``; grpc's ``abort`` always raises, which this signature says."""
    await context.abort(code, message)
    raise AssertionError("grpc.aio.ServicerContext.abort returned")


def _error_reward(sample_id: str, error: ServiceError) -> pb.Reward:
    return pb.Reward(id=sample_id, error=pb.Error(code=error.code.value[0], message=error.message))


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on this process's monotonic clock (None: the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class RewardServicer(pb_grpc.RewardServiceServicer):
    """The gRPC face of one ScoringCore; shared by the reward, uncertainty and judge services."""

    def __init__(self, core: ScoringCore) -> None:
        self.core = core

    async def _run_unary(self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]) -> T:
        try:
            async with self.core.admitted(method):
                return await work()
        except ServiceError as e:
            await abort(context, e.code, e.message)

    # -- RPCs ---------------------------------------------------------------------------------------------
    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        async def work() -> pb.ScoreResponse:
            rewards = await self.core.score(request.samples, deadline_of(context), "Score")
            return pb.ScoreResponse(rewards=rewards)

        return await self._run_unary("Score", context, work)

    async def GetInfo(self, request: pb.GetInfoRequest, context: grpc.aio.ServicerContext) -> pb.GetInfoResponse:
        async def work() -> pb.GetInfoResponse:
            return self.core.info()

        return await self._run_unary("GetInfo", context, work)

    async def Compare(self, request: pb.CompareRequest, context: grpc.aio.ServicerContext) -> pb.CompareResponse:
        async def work() -> pb.CompareResponse:
            return await self.core.compare(request)

        return await self._run_unary("Compare", context, work)

    async def ScoreStream(
        self, request_iterator: AsyncIterator[pb.ScoreRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ScoreResponse]:
        core = self.core
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            core.gate.enter()
        except ServiceError as e:
            core.metrics.requests.labels("ScoreStream", e.code.name).inc()
            await context.abort(e.code, e.message)
        stream = _Stream(core, context)
        try:
            async for response in stream.run(request_iterator):
                yield response
            if core.gate.draining:
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
            core.gate.leave()
            core.metrics.requests.labels("ScoreStream", code.name).inc()
            core.metrics.latency.labels("ScoreStream").observe(time.monotonic() - started)


class _Stream:
    """One ScoreStream call: a reader task queues samples, the call's generator yields what is ready."""

    def __init__(self, core: ScoringCore, context: grpc.aio.ServicerContext) -> None:
        self.s = core
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
                check_sample(sample, i, s.allow_empty_response)
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
        deadline = deadline_of(self.context)
        for sample, item in zip(valid, s.scorer.render(valid)):
            if isinstance(item, ServiceError):
                self._refuse(sample.id, item)
                continue
            hit = s.cached(item, sample.id)
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
            self._answer(self.s.finish(item, sample_id, future.result()))
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
