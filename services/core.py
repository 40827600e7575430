"""The one admission path every face of a service goes through: gate, queue room, validation, rendering, cache,
batcher.

gRPC handlers (servicer.py) and HTTP routes (http_face/) call the methods here and nothing below them, so a
request from any face is limited, queued, batched, cached and counted exactly like one from any other, and
batches together with them. Failures are ``ServiceError``s carrying the gRPC status; each face turns them into
its own kind of answer (a gRPC status, an HTTP status).

    admitted(method)  the gate (starting, draining) and the request metrics, around any one request
    score(samples)    queue room -> validate -> render -> cache -> batcher (atomic: one bad sample fails the request)
    score_rendered()  queue room -> cache -> batcher, for inputs a face has already turned into tokens (/classify)
    compare()         queue room -> render the pair -> batcher (judges)
    info()            GetInfo

The order is the point. Room in the queue is taken first, before a request costs anything, so an overloaded
server refuses at once (RESOURCE_EXHAUSTED in about a millisecond, not after tokenizing). Validation and
rendering of anything but a small request run on a worker thread (``render``): tokenizing a long text takes
seconds, and on the event loop it stopped every other request and the health checks with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc

from rewardline.services import __version__
from rewardline.services.api import pb
from rewardline.services.batching import Batcher, Reservation, padding_limit
from rewardline.services.cache import LRUCache, cache_key
from rewardline.services.compute_threads import lower_this_thread
from rewardline.services.config import ServeConfig
from rewardline.services.errors import ServiceError, invalid_argument, unavailable
from rewardline.services.metrics import ServiceMetrics
from rewardline.services.rendering import RenderedInput
from rewardline.services.scorer import Scorer, unimplemented_compare
from rewardline.services.validation import MAX_ID_CHARS, check_request, check_size, label_of
from rewardline.services.wire_sizes import sample_sizes

log = logging.getLogger(__name__)
T = TypeVar("T")

# A request of at most this many bytes renders on the event loop (a millisecond or two of tokenizing); a larger one
# on a render thread, so that it delays nobody else.
INLINE_RENDER_BYTES = 16 * 1024
RENDER_THREADS = 4
# A request of at least this many bytes is a large one: large ones take turns on one thread of their own
# (ScoringCore.render), and after them freed memory goes back to the operating system (release_memory), once no
# other large request has come for RELEASE_QUIET_S.
LARGE_REQUEST_BYTES = 1024 * 1024
RELEASE_QUIET_S = 1.0


def request_bytes(samples: Sequence[pb.Sample]) -> int:
    """The samples' size on the wire: known without copying their texts out of the message."""
    return sum(s.ByteSize() for s in samples)


def release_memory() -> None:
    """Hands freed heap memory back to the operating system (glibc's ``malloc_trim``; a no-op elsewhere).

    Rendering a large request allocates its texts, their rendering and the tokenizer's buffers on a worker thread,
    and glibc keeps what a thread freed in that thread's arena: twelve refused 3 MB requests left 1.3 GB resident
    that no later request reused. Run once large requests have stopped coming (``ScoringCore.render``), not after
    each: what it hands back, the next large request takes again a page fault at a time (the kernel zeroes every
    page), and under four clients sending 15 MB requests back to back that made each request's copies on the event
    loop several times slower (bench/reliability.py stall).
    """
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def freeze_long_lived() -> None:
    """Collects once, then moves every object alive into the collector's permanent generation; called when the
    model is loaded, just before the service starts serving.

    What is alive then (torch, transformers, the model, the tokenizer: about 400,000 objects) lives as long as the
    process, and a full collection walked all of it: under load, one full collection stopped the event loop for
    240 ms, every call and health check with it (bench/reliability.py's refusal load, a 1 ms timer on the loop).
    Frozen, it is never walked again, and the full collections that still come take microseconds (seven under
    the same load, none of them visible over the loop's 24 ms worst step). The one collection here takes a few
    hundred milliseconds, before the service says SERVING."""
    gc.collect()
    gc.freeze()


class Gate:
    """Counts requests in flight and refuses new ones until the model is loaded and once draining has begun."""

    def __init__(self, metrics: ServiceMetrics) -> None:
        self.draining = False
        self.ready = False
        self._inflight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._metrics = metrics
        self._on_drain: set[Callable[[], None]] = set()
        self._last_refused = 0.0  # monotonic time of the last call refused while draining

    def enter(self) -> None:
        if self.draining:
            self._last_refused = time.monotonic()
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

    def begin_drain(self) -> None:
        """Refuses new requests from now on and tells the open streams (``watch_drain``), which then end."""
        self.draining = True
        for wake in list(self._on_drain):
            wake()

    def watch_drain(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Calls ``wake`` when draining begins; returns the function that stops watching."""
        self._on_drain.add(wake)
        return lambda: self._on_drain.discard(wake)

    async def wait_quiet(self, quiet_s: float, until: float) -> None:
        """Returns once no call has been refused for ``quiet_s`` seconds, or at the monotonic time ``until``."""
        while (now := time.monotonic()) < until:
            remaining = self._last_refused + quiet_s - now
            if remaining <= 0:
                return
            await asyncio.sleep(min(remaining, until - now))

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
        # samples one ScoreStream may have outstanding before the server stops reading it (servicer._Stream)
        self.stream_limit = config.max_stream_samples or max(1, config.max_queue_samples // 4)
        self._render_threads = ThreadPoolExecutor(
            RENDER_THREADS, thread_name_prefix="render", initializer=lower_this_thread
        )
        self._large_render_thread = ThreadPoolExecutor(
            1, thread_name_prefix="render-large", initializer=lower_this_thread
        )
        self._release_timer: asyncio.TimerHandle | None = None

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
    async def render(self, size: int, work: Callable[[], T]) -> T:
        """``work()`` (parsing, validation or rendering of ``size`` bytes of request) on the event loop when small,
        else on a render thread: the tokenizer releases the GIL while it works, and a long step on the event loop
        would hold up every callback queued behind it, health checks and other requests included.

        Large requests take turns on one thread of their own. Parsing megabytes and making Python strings of them
        holds the GIL for milliseconds at a stretch; with four such requests on four threads, the event loop waited
        for the GIL behind up to four of those stretches at every step of every call (bench/reliability.py stall,
        four clients sending 15 MB responses: a small Score's p99 idle + 383 ms with four threads, + 262 ms with
        one). A single lane keeps large requests' throughput, which the GIL bounds anyway."""
        if size <= INLINE_RENDER_BYTES:
            return work()
        loop = asyncio.get_running_loop()
        if size < LARGE_REQUEST_BYTES:
            return await loop.run_in_executor(self._render_threads, work)
        try:
            return await loop.run_in_executor(self._large_render_thread, work)
        finally:
            if self._release_timer is not None:
                self._release_timer.cancel()
            self._release_timer = loop.call_later(RELEASE_QUIET_S, self._release, loop)

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        self._release_timer = None
        loop.run_in_executor(self._large_render_thread, release_memory)

    def screen(self, data: bytes) -> None:
        """Refuses a large serialized ScoreRequest that its texts' sizes alone show cannot be scored, before it is
        parsed (wire_sizes.py says why); Score is atomic, so one such sample refuses the request. Anything else,
        malformed bytes included, is left to the parser and validation."""
        if len(data) < LARGE_REQUEST_BYTES or self.scorer is None:
            return
        sizes = sample_sizes(data)
        if sizes is None or len(sizes) > self.config.max_samples_per_request:
            return
        for index, sample in enumerate(sizes):
            error = self.scorer.refused_by_size(sample.response_bytes, label_of(sample.id, index))
            if error is not None:
                raise error

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

    def room(self, n: int) -> Reservation[RenderedInput]:
        """Room for ``n`` samples in the queue, or RESOURCE_EXHAUSTED now."""
        assert self.batcher is not None
        return self.batcher.reserve(n)

    # -- operations ---------------------------------------------------------------------------------------
    async def score(
        self, samples: Sequence[pb.Sample], deadline: float | None, method: str, wire_bytes: int | None = None
    ) -> list[pb.Reward]:
        """One Reward per sample, in order; the whole request fails if any sample is invalid. ``wire_bytes``: the
        request's size as received, where the face knows it (else measured here, which costs an encoding)."""
        scorer = self._scorer()
        self.metrics.samples.labels(method).inc(len(samples))
        check_size(samples, self.config.max_samples_per_request)
        with self.room(len(samples)) as room:

            def prepare() -> list[RenderedInput]:
                check_request(samples, self.config.max_samples_per_request, self.allow_empty_response)
                rendered: list[RenderedInput] = []
                for item in scorer.render(samples):
                    if isinstance(item, ServiceError):
                        raise item.raised_anew()
                    rendered.append(item)
                return rendered

            size = wire_bytes if wire_bytes is not None else request_bytes(samples)
            rendered = await self.render(size, prepare)
            return await self._score_inputs([(s.id, r) for s, r in zip(samples, rendered)], deadline, room)

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
        with self.room(len(inputs)) as room:
            return await self._score_inputs(inputs, deadline, room)

    async def _score_inputs(
        self, inputs: Sequence[tuple[str, RenderedInput]], deadline: float | None, room: Reservation[RenderedInput]
    ) -> list[pb.Reward]:
        """Rewards for (id, rendered input) pairs, in order: from the cache, else through the batcher."""
        cached = [self.cached(rendered, sample_id) for sample_id, rendered in inputs]
        misses = [i for i, hit in enumerate(cached) if hit is None]
        computed: dict[int, pb.Reward] = {}
        futures = room.submit([(inputs[i][1], inputs[i][1].num_tokens) for i in misses], deadline)
        for i, reward in zip(misses, await asyncio.gather(*futures)):
            computed[i] = self.finish(inputs[i][1], inputs[i][0], reward)
        return [hit if hit is not None else computed[i] for i, hit in enumerate(cached)]

    def info(self) -> pb.GetInfoResponse:
        info = self._scorer().info()
        info.max_samples_per_request = self.config.max_samples_per_request
        info.server_version = __version__
        return info

    async def compare(
        self, request: pb.CompareRequest, deadline: float | None = None, wire_bytes: int | None = None
    ) -> pb.CompareResponse:
        """Compare through the same queue and batcher as Score: the pair's two presentations are two samples."""
        scorer = self._scorer()
        if not scorer.compares:
            raise unimplemented_compare(pb.ModelKind.Name(scorer.kind).removeprefix("MODEL_KIND_").lower())
        if len(request.id) > MAX_ID_CHARS:
            raise invalid_argument(f"compare: the id is longer than {MAX_ID_CHARS} characters")
        with self.room(2) as room:
            size = wire_bytes if wire_bytes is not None else request.ByteSize()
            inputs = await self.render(size, lambda: scorer.compare_inputs(request))
            futures = room.submit([(x, x.num_tokens) for x in inputs], deadline)
            return scorer.compared(request, list(await asyncio.gather(*futures)))

    def _scorer(self) -> Scorer:
        assert self.scorer is not None, "the gate admits requests only once a scorer is attached"
        return self.scorer
