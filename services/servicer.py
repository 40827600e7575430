"""The RewardService RPCs: the gRPC face of the shared admission path (core.py), written once for every kind.

Score:        core.score: queue room -> validate -> render -> cache -> batcher -> Rewards in request order (atomic).
ScoreStream:  the same per sample, answered as each is ready; a failed sample is an in-band Reward.error.
GetInfo:      the model's description plus this server's limits.
Compare:      core.compare, for judges; other kinds answer UNIMPLEMENTED.

Bytes that are no valid message get INVALID_ARGUMENT with a plain message: Score, ScoreStream and Compare parse
their requests in the handler (``Received``, off the event loop when large), GetInfo and health through
``lenient`` deserializers. With protobuf's own parser in gRPC's place they got UNKNOWN naming a Python exception
class (unary) or INTERNAL with a logged traceback (stream).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Generic, NoReturn, TypeVar

import grpc
from google.protobuf.message import Message
from grpc_health.v1 import health, health_pb2

from rewardline.services.api import REWARD_SERVICE, pb, pb_grpc
from rewardline.services.core import ScoringCore
from rewardline.services.errors import ServiceError, invalid_argument, unavailable
from rewardline.services.rendering import RenderedInput
from rewardline.services.validation import MAX_ID_CHARS, check_sample, quoted

log = logging.getLogger(__name__)
T = TypeVar("T")
M = TypeVar("M", bound=Message)
# A status message travels in a trailer, and clients refuse large ones: never send more than this.
MAX_STATUS_CHARS = 1024


class Malformed:
    """What ``lenient`` gives for bytes that are no valid message of the expected type."""

    def __init__(self, message_type: type[Message]) -> None:
        self.type_name = message_type.DESCRIPTOR.full_name

    def error(self) -> ServiceError:
        return invalid_argument(f"the request is not a valid {self.type_name} message (it does not parse)")


def lenient(message_type: type[Message]) -> Callable[[bytes], Any]:
    """A request deserializer that returns ``Malformed`` instead of raising."""

    def parse(data: bytes) -> Any:
        try:
            return message_type.FromString(data)
        except Exception:  # DecodeError, and whatever else a hostile byte string can make the parser raise
            return Malformed(message_type)

    return parse


class Received(Generic[M]):
    """A request's bytes as gRPC received them, parsed by the handler (``parsed``): on the event loop when small,
    else on a render thread, as rendering is.

    gRPC runs a deserializer on the event loop, and parsing a 15 MB message there (a copy and a UTF-8 check, the
    fresh memory faulted in a page at a time) held up every callback queued behind it: under four clients sending
    15 MB requests back to back, parsing was half of the loop's time, and a small Score waited behind one parse per
    step of its call. The size is known here for free; asking a parsed message (``ByteSize``) encodes it again."""

    __slots__ = ("message_type", "wire_bytes", "_data")

    def __init__(self, message_type: type[M], data: bytes) -> None:
        self.message_type = message_type
        self.wire_bytes = len(data)
        self._data = data

    def parse(self, screen: Callable[[bytes], None] | None = None) -> M:
        """The message (once: the bytes are let go), or INVALID_ARGUMENT when they are no valid message;
        ``screen`` may refuse the bytes first (ScoringCore.screen)."""
        data, self._data = self._data, b""
        if screen is not None:
            screen(data)
        try:
            return self.message_type.FromString(data)
        except Exception:  # DecodeError, and whatever else a hostile byte string can make the parser raise
            raise Malformed(self.message_type).error() from None

    async def parsed(self, core: ScoringCore, screen: Callable[[bytes], None] | None = None) -> M:
        return await core.render(self.wire_bytes, functools.partial(self.parse, screen))


def received(message_type: type[M]) -> Callable[[bytes], Received[M]]:
    """The request deserializer that leaves parsing to the handler (``Received``)."""
    return functools.partial(Received, message_type)


def short(message: str) -> str:
    """``message`` cut to MAX_STATUS_CHARS, the cut marked."""
    return message if len(message) <= MAX_STATUS_CHARS else message[: MAX_STATUS_CHARS - 3] + "..."


async def abort(context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str) -> NoReturn:
    """Ends the RPC with ``code``; grpc's ``abort`` always raises, which this signature says."""
    await context.abort(code, short(message))
    raise AssertionError("grpc.aio.ServicerContext.abort returned")


def _error_reward(sample_id: str, error: ServiceError) -> pb.Reward:
    error_message = pb.Error(code=error.code.value[0], message=short(error.message))
    return pb.Reward(id=sample_id[:MAX_ID_CHARS], error=error_message)


def deadline_of(context: grpc.aio.ServicerContext) -> float | None:
    """The call's deadline on this process's monotonic clock (None: the client set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


def add_to_server(servicer: RewardServicer, server: grpc.aio.Server) -> None:
    """Registers the RewardService as the generated ``add_RewardServiceServicer_to_server`` does, with lenient
    request deserializers."""
    handlers = {
        "Score": grpc.unary_unary_rpc_method_handler(
            servicer.Score,
            request_deserializer=received(pb.ScoreRequest),
            response_serializer=pb.ScoreResponse.SerializeToString,
        ),
        "ScoreStream": grpc.stream_stream_rpc_method_handler(
            servicer.ScoreStream,
            request_deserializer=received(pb.ScoreRequest),
            response_serializer=pb.ScoreResponse.SerializeToString,
        ),
        "GetInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetInfo,
            request_deserializer=lenient(pb.GetInfoRequest),
            response_serializer=pb.GetInfoResponse.SerializeToString,
        ),
        "Compare": grpc.unary_unary_rpc_method_handler(
            servicer.Compare,
            request_deserializer=received(pb.CompareRequest),
            response_serializer=pb.CompareResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(REWARD_SERVICE, handlers),))
    server.add_registered_method_handlers(REWARD_SERVICE, handlers)


def add_health_to_server(servicer: health.aio.HealthServicer, server: grpc.aio.Server) -> Callable[[], None]:
    """The standard health service, with lenient deserializers (a probe that sends garbage gets INVALID_ARGUMENT);
    returns the function that ends every open Watch (call it just before stopping the server).

    Watch streams never end by themselves, and every client of services/client.py holds one per replica (its
    client-side health checking): a graceful ``server.stop(grace)`` would wait the whole grace period for them and
    then cancel them with a logged error. Ended first (each has already sent NOT_SERVING), they let the stop
    return as soon as the real work is done.
    """
    ending = asyncio.Event()

    async def check(request: Any, context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        if isinstance(request, Malformed):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, request.error().message)
        return await servicer.Check(request, context)

    async def watch(request: Any, context: grpc.aio.ServicerContext) -> None:  # writes through the context
        if isinstance(request, Malformed):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, request.error().message)
        if ending.is_set():  # a Watch that raced the stop: the status is known, and the stream ends at once
            await context.write(health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.NOT_SERVING))
            return
        watching = asyncio.ensure_future(servicer.Watch(request, context))
        ended = asyncio.ensure_future(ending.wait())
        try:
            await asyncio.wait({watching, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (watching, ended):
                task.cancel()
            await asyncio.gather(watching, ended, return_exceptions=True)
        if watching.done() and not watching.cancelled() and (error := watching.exception()) is not None:
            raise error

    parse = lenient(health_pb2.HealthCheckRequest)
    serialize = health_pb2.HealthCheckResponse.SerializeToString
    handlers = {
        "Check": grpc.unary_unary_rpc_method_handler(check, request_deserializer=parse, response_serializer=serialize),
        "Watch": grpc.unary_stream_rpc_method_handler(watch, request_deserializer=parse, response_serializer=serialize),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(health.SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(health.SERVICE_NAME, handlers)
    return ending.set


class RewardServicer(pb_grpc.RewardServiceServicer):
    """The gRPC face of one ScoringCore; shared by the reward, uncertainty and judge services."""

    def __init__(self, core: ScoringCore) -> None:
        self.core = core

    async def _run_unary(self, method: str, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[T]]) -> T:
        try:
            async with self.core.admitted(method):
                return await work()
        except ServiceError as e:
            code, message = e.code, e.message
        # Aborted outside the except block: there, gRPC's AbortError (which gRPC keeps in a reference cycle: the
        # call's state holds it) would chain the ServiceError and the frames holding the parsed request, and each
        # refused 15 MB request stayed resident until the collector's rare full pass (300 MB after sixteen).
        # ``abort``, not setting the status and returning: abort answers Trailers-Only, which a client's retry
        # policy may retry on another replica; an answer with headers commits the call (UNAVAILABLE refusals of a
        # draining replica reached a retrying client in tests/test_reliability.py's SIGTERM test).
        await abort(context, code, message)

    # -- RPCs ---------------------------------------------------------------------------------------------
    async def Score(self, request: Received[pb.ScoreRequest], context: grpc.aio.ServicerContext) -> pb.ScoreResponse:
        async def work() -> pb.ScoreResponse:
            samples = (await request.parsed(self.core, self.core.screen)).samples
            rewards = await self.core.score(samples, deadline_of(context), "Score", request.wire_bytes)
            return pb.ScoreResponse(rewards=rewards)

        return await self._run_unary("Score", context, work)

    async def GetInfo(
        self, request: pb.GetInfoRequest | Malformed, context: grpc.aio.ServicerContext
    ) -> pb.GetInfoResponse:
        async def work() -> pb.GetInfoResponse:
            if isinstance(request, Malformed):
                raise request.error()
            return self.core.info()

        return await self._run_unary("GetInfo", context, work)

    async def Compare(
        self, request: Received[pb.CompareRequest], context: grpc.aio.ServicerContext
    ) -> pb.CompareResponse:
        async def work() -> pb.CompareResponse:
            message = await request.parsed(self.core)
            return await self.core.compare(message, deadline_of(context), request.wire_bytes)

        return await self._run_unary("Compare", context, work)

    async def ScoreStream(
        self, request_iterator: AsyncIterator[Received[pb.ScoreRequest]], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ScoreResponse]:
        core = self.core
        started = time.monotonic()
        code = grpc.StatusCode.OK
        try:
            core.gate.enter()
        except ServiceError as e:
            core.metrics.requests.labels("ScoreStream", e.code.name).inc()
            await abort(context, e.code, e.message)
        stream = _Stream(core, context)
        try:
            async for response in stream.run(request_iterator):
                yield response
            if stream.malformed is not None:
                code = grpc.StatusCode.INVALID_ARGUMENT
                await abort(context, code, f"{stream.malformed.message}; the samples before it were answered")
            if core.gate.draining:
                code = grpc.StatusCode.UNAVAILABLE
                await abort(
                    context,
                    code,
                    "server is draining: every sample accepted was answered; samples sent after the drain began "
                    "were refused (send them to another replica)",
                )
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except grpc.aio.AbortError:
            raise
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unexpected error", extra={"method": "ScoreStream"})
            await abort(context, code, "internal error; see the server log")
        finally:
            stream.cancel()
            core.gate.leave()
            core.metrics.requests.labels("ScoreStream", code.name).inc()
            core.metrics.latency.labels("ScoreStream").observe(time.monotonic() - started)


class _Stream:
    """One ScoreStream call: a reader task takes messages and queues their samples, the call's generator yields
    rewards as they are ready.

    Backpressure, not refusal: the reader takes the next message only while fewer than ``stream_limit`` samples of
    this stream are outstanding (accepted, not yet answered), and queues a message's samples only when the batcher
    has room for them. Until then the message stays unread, gRPC's flow control fills, and the sender's writes wait:
    a fast sender is slowed instead of losing samples to in-band "queue full", and one stream can hold at most its
    limit of the queue, never all of it. The sender is slowed only once the transport's flow-control window is full:
    what HTTP/2 accepted before the server stopped reading (a window that gRPC's BDP probing grows to megabytes on a
    fast link) is still read and scored, so a sender of tiny samples can be that far ahead (bench/reliability.py
    stream: about 110,000 samples on loopback) while holding no more than its limit of the queue; a server started
    with ``receive_window_kb`` keeps the window at that size (64 KB: about 2,000 samples ahead).

    Draining: the stream stops taking samples (each sent after the drain began is answered UNAVAILABLE in-band),
    answers every sample it accepted, and ends with UNAVAILABLE as soon as none is left, so that its client
    reconnects to another replica at once instead of after the grace period.
    """

    def __init__(self, core: ScoringCore, context: grpc.aio.ServicerContext) -> None:
        self.s = core
        self.context = context
        self.limit = core.stream_limit
        self.ready: list[pb.Reward] = []
        self.accepted: set[str] = set()  # ids accepted and not yet answered
        self.pending: dict[str, asyncio.Future] = {}  # the accepted ones that are in the batcher's queue
        self.reader: asyncio.Task | None = None
        self.reading_done = False
        self.malformed: ServiceError | None = None
        self._wake_writer = asyncio.Event()
        self._room_changed = asyncio.Event()
        self._unwatch = core.gate.watch_drain(self._wake_writer.set)

    # -- answers ---------------------------------------------------------------------------------------------
    def _answer(self, reward: pb.Reward, accepted: bool = True) -> None:
        """Queues ``reward`` for the writer; ``accepted``: it answers an accepted sample, which is then done."""
        self.ready.append(reward)
        if accepted:
            self.accepted.discard(reward.id)
            self._room_changed.set()
        self._wake_writer.set()

    def _refuse(self, sample_id: str, error: ServiceError, accepted: bool = True) -> None:
        self._answer(_error_reward(sample_id, error), accepted)

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

    # -- reading ---------------------------------------------------------------------------------------------
    def _check(self, samples: Sequence[pb.Sample]) -> list[pb.Sample]:
        """The samples of one message that may be scored; the others are answered with their error now."""
        s = self.s
        limit = s.config.max_samples_per_request
        if len(samples) > limit:
            error = invalid_argument(
                f"this message holds {len(samples)} samples, over max_samples_per_request={limit}; send fewer per "
                "message"
            )
            for sample in samples:
                self._refuse(sample.id, error, accepted=False)
            return []
        valid: list[pb.Sample] = []
        ids: set[str] = set()
        for i, sample in enumerate(samples):
            try:
                if s.gate.draining:
                    raise unavailable("server is draining; send this sample to another replica")
                check_sample(sample, i, s.allow_empty_response)
                if sample.id in self.accepted or sample.id in ids:
                    raise invalid_argument(
                        f"duplicate sample id {quoted(sample.id)}: a sample with this id is still awaiting its reward"
                    )
            except ServiceError as e:
                self._refuse(sample.id, e, accepted=False)
                continue
            ids.add(sample.id)
            valid.append(sample)
        return valid

    async def _queue(self, samples: Sequence[pb.Sample], wire_bytes: int) -> None:
        """Renders accepted samples (``wire_bytes`` of message) and queues them, waiting for room in the batcher's
        queue."""
        s = self.s
        assert s.scorer is not None and s.batcher is not None
        scorer = s.scorer
        step = max(1, min(s.config.max_queue_samples, len(samples)))
        for start in range(0, len(samples), step):
            chunk = samples[start : start + step]
            try:
                room = await s.batcher.reserve_waiting(len(chunk))
            except ServiceError as e:  # the batcher closed while this stream waited for room: the server is stopping
                for sample in chunk:
                    self._refuse(sample.id, e)
                continue
            with room:
                share = wire_bytes * len(chunk) // max(1, len(samples))  # where it renders: an estimate will do
                rendered = await s.render(share, functools.partial(scorer.render, chunk))
                deadline = deadline_of(self.context)
                queued: list[tuple[pb.Sample, RenderedInput]] = []
                for sample, item in zip(chunk, rendered):
                    if isinstance(item, ServiceError):
                        self._refuse(sample.id, item)
                    elif (hit := s.cached(item, sample.id)) is not None:
                        self._answer(hit)
                    else:
                        queued.append((sample, item))
                try:
                    futures = room.submit([(item, item.num_tokens) for _, item in queued], deadline)
                except ServiceError as e:  # the batcher closed: the server is stopping
                    for sample, _ in queued:
                        self._refuse(sample.id, e)
                    continue
                for (sample, item), future in zip(queued, futures):
                    self.pending[sample.id] = future
                    future.add_done_callback(functools.partial(self._settle, sample.id, item))

    async def _read(self, requests: AsyncIterator[Received[pb.ScoreRequest]]) -> None:
        iterator = aiter(requests)
        try:
            while True:
                while len(self.accepted) >= self.limit:  # backpressure: the next message stays unread
                    self._room_changed.clear()
                    await self._room_changed.wait()
                try:
                    request = await anext(iterator)
                except StopAsyncIteration:
                    return
                try:
                    message = await request.parsed(self.s)
                except ServiceError as e:
                    self.malformed = e.as_value()
                    return
                self.s.metrics.samples.labels("ScoreStream").inc(len(message.samples))
                samples = self._check(message.samples)
                self.accepted.update(sample.id for sample in samples)
                await self._queue(samples, request.wire_bytes * len(samples) // max(1, len(message.samples)))
        finally:
            self.reading_done = True
            self._wake_writer.set()

    # -- the call --------------------------------------------------------------------------------------------
    async def run(self, requests: AsyncIterator[Received[pb.ScoreRequest]]) -> AsyncIterator[pb.ScoreResponse]:
        self.reader = asyncio.get_running_loop().create_task(self._read(requests))
        while True:
            if self.ready:
                batch, self.ready = self.ready, []
                yield pb.ScoreResponse(rewards=batch)
                continue
            if not self.accepted and (self.reading_done or self.s.gate.draining):
                break
            if self.reader.done() and not self.reader.cancelled() and self.reader.exception() is not None:
                break  # raised below; what it accepted is lost with the call, which ends INTERNAL
            self._wake_writer.clear()
            await self._wake_writer.wait()
        if self.reader.done() and not self.reader.cancelled() and (error := self.reader.exception()) is not None:
            raise error

    def cancel(self) -> None:
        self._unwatch()
        if self.reader and not self.reader.done():
            self.reader.cancel()
        for future in self.pending.values():
            future.cancel()
        self.pending.clear()
