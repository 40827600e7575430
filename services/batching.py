"""Admission and batching across requests: a bounded queue feeding a length-aware dynamic batcher.

Samples from all concurrent requests wait in one queue. Whenever the backend has a free slot, the batcher
takes the oldest waiting sample and adds the samples closest to it in length until the token budget or the
batch size is reached: the oldest sample always goes (nobody starves) and similar lengths keep padding low.
With ``max_wait_s == 0`` a batch starts as soon as the backend is free (continuous batching: what arrives
while one batch runs forms the next, and a lone request pays no wait); a positive ``max_wait_s`` holds a
small batch back until it fills or its oldest sample has waited that long.

The queue is bounded so that overload answers RESOURCE_EXHAUSTED at once instead of growing memory. Room is
reserved (``reserve``) before a request is rendered, so a request the queue cannot take is refused before any
tokenizing is spent on it, and requests being rendered count against the bound. A caller that would rather wait
than be refused (a stream, which has flow control to slow its sender) waits with ``reserve_waiting``.
Cancelled samples (a client that went away) and samples past their deadline are dropped before they reach
the backend. A batch that fails is retried sample by sample, so one bad input cannot fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import grpc

from rewardline.services.backends.base import CostModel
from rewardline.services.errors import ServiceError, deadline_exceeded, resource_exhausted
from rewardline.services.metrics import ServiceMetrics

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


@dataclass(eq=False)
class WorkItem(Generic[P]):
    payload: P
    cost: int
    deadline: float | None
    future: asyncio.Future
    enqueued: float = field(default_factory=time.monotonic)


def batch_cost(costs: Sequence[int], cost_model: CostModel) -> int:
    """Tokens a batch occupies: padded to its longest member, or packed end to end (vLLM)."""
    if not costs:
        return 0
    return max(costs) * len(costs) if cost_model == "padded" else sum(costs)


def padding_limit(setting: float | str, backend_default: float | None) -> float | None:
    """The ``max_batch_padding`` in force: ``auto`` is the backend's own ``max_padding``."""
    if setting == "auto":
        return backend_default
    return None if setting == "off" else float(setting)


def select_batch(
    costs: Sequence[int], max_tokens: int, max_size: int, cost_model: CostModel, max_padding: float | None = None
) -> list[int]:
    """Indices (into ``costs``, which is in arrival order) of the next batch.

    Starts from index 0, the oldest, and grows through its neighbours in length order, always taking the
    neighbour closest in length that still fits. With ``max_padding`` (padded batches only), a neighbour also
    has to keep the batch's padding within that fraction of its real tokens: a batch of everything waiting,
    64 to 256 tokens long, carried 50% padding, and on a CPU that cost more than batching saved.
    """
    order = sorted(range(len(costs)), key=lambda i: (costs[i], i))
    pos = order.index(0)
    chosen = [0]
    real = costs[0]
    lo, hi = pos - 1, pos + 1
    anchor = costs[0]
    allowance = 1.0 + max_padding if max_padding is not None and cost_model == "padded" else None

    def fits(idx: int) -> bool:
        padded = batch_cost([costs[i] for i in chosen] + [costs[idx]], cost_model)
        return padded <= max_tokens and (allowance is None or padded <= allowance * (real + costs[idx]))

    while len(chosen) < max_size and (lo >= 0 or hi < len(order)):
        candidates = []
        if lo >= 0:
            candidates.append((anchor - costs[order[lo]], "lo"))
        if hi < len(order):
            candidates.append((costs[order[hi]] - anchor, "hi"))
        candidates.sort()
        taken = False
        for _, side in candidates:
            idx = order[lo] if side == "lo" else order[hi]
            if fits(idx):
                chosen.append(idx)
                real += costs[idx]
                if side == "lo":
                    lo -= 1
                else:
                    hi += 1
                taken = True
                break
        if not taken:
            break
    return chosen


class Batcher(Generic[P, R]):
    """Runs ``run_batch`` over batches of queued payloads; ``submit`` returns one future per payload."""

    def __init__(
        self,
        run_batch: Callable[[list[P]], Awaitable[list[R]]],
        *,
        max_batch_tokens: int,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        concurrency: int = 1,
        cost_model: CostModel = "padded",
        max_padding: float | None = None,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.cost_model = cost_model
        self.max_padding = max_padding
        self._metrics = metrics
        self._queue: list[WorkItem[P]] = []
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(concurrency)
        self._running: set[asyncio.Task] = set()
        self._loop_task: asyncio.Task | None = None
        self._closed = False
        self._reserved = 0  # room held for requests still being rendered
        self._freed = asyncio.Event()  # set (and replaced) whenever room is freed
        # What a purge could drop: waiting samples cancelled since the last one, and the earliest deadline waiting.
        self._cancelled_waiting = 0
        self._earliest_deadline: float | None = None

    # -- admission --------------------------------------------------------------------------------------
    def queued(self) -> int:
        return len(self._queue)

    def _make_room(self, n: int) -> None:
        """Raises UNAVAILABLE when closed, RESOURCE_EXHAUSTED unless ``n`` more samples fit the bound."""
        if self._closed:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        if len(self._queue) + self._reserved + n > self.max_queue:
            if self._purge_would_drop():
                self._purge()
            if len(self._queue) + self._reserved + n > self.max_queue:
                raise resource_exhausted(
                    f"queue full: {len(self._queue) + self._reserved} samples waiting, {n} more would exceed "
                    f"max_queue_samples={self.max_queue}; retry later or on another replica"
                )

    def _room_freed(self) -> None:
        self._freed.set()
        self._freed = asyncio.Event()

    def reserve(self, n: int) -> Reservation[P]:
        """Room for ``n`` samples, held until they are submitted through it or it is released."""
        self._make_room(n)
        self._reserved += n
        return Reservation(self, n)

    async def reserve_waiting(self, n: int) -> Reservation[P]:
        """Like ``reserve``, but waits for room instead of refusing (``n`` must not exceed the bound)."""
        if n > self.max_queue:
            raise ValueError(f"{n} samples can never fit a queue of {self.max_queue}")
        while True:
            freed = self._freed
            try:
                return self.reserve(n)
            except ServiceError as e:
                if e.code != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
            await freed.wait()

    def submit(self, payloads: Sequence[tuple[P, int]], deadline: float | None = None) -> list[asyncio.Future]:
        """Queues all of ``payloads`` (payload, cost in tokens) or none: RESOURCE_EXHAUSTED when full."""
        self._make_room(len(payloads))
        return self._enqueue(payloads, deadline)

    def _enqueue(self, payloads: Sequence[tuple[P, int]], deadline: float | None) -> list[asyncio.Future]:
        loop = asyncio.get_running_loop()
        futures = []
        for payload, cost in payloads:
            future = loop.create_future()
            future.add_done_callback(self._note_cancelled)
            self._queue.append(WorkItem(payload, cost, deadline, future))
            futures.append(future)
        if deadline is not None and (self._earliest_deadline is None or deadline < self._earliest_deadline):
            self._earliest_deadline = deadline
        self._set_depth()
        self._wakeup.set()
        return futures

    # -- the loop -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._loop(), name="batcher")

    async def close(self) -> None:
        """Stops batching; queued samples fail with UNAVAILABLE, running batches finish."""
        self._closed = True
        if self._loop_task:
            self._loop_task.cancel()
            try:
                await self._loop_task
            except asyncio.CancelledError:
                pass
        for item in self._queue:
            if not item.future.done():
                item.future.set_exception(ServiceError(grpc.StatusCode.UNAVAILABLE, "server is shutting down"))
        self._queue.clear()
        self._set_depth()
        self._room_freed()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    def _set_depth(self) -> None:
        if self._metrics:
            self._metrics.queue_depth.set(len(self._queue))

    def _note_cancelled(self, future: asyncio.Future) -> None:
        if future.cancelled():  # a client that went away; results and errors are set only once a sample has left
            self._cancelled_waiting += 1

    def _purge_would_drop(self) -> bool:
        """Whether ``_purge`` would find anything, known without walking the queue.

        A full queue refuses every request that comes, and walking all of it (2,048 samples by default) for each
        refusal made a refusal cost O(queue): 0.57 ms of the event loop's CPU per call at the default bound under
        96 clients, 0.37 ms without the walk (bench/reliability.py refusal --queue-samples 2048 --clients 96)."""
        if self._cancelled_waiting:
            return True
        return self._earliest_deadline is not None and time.monotonic() >= self._earliest_deadline

    def _purge(self) -> None:
        """Drops cancelled samples and fails expired ones, so neither reaches the backend."""
        now = time.monotonic()
        live = []
        earliest: float | None = None
        for item in self._queue:
            if item.future.done():
                continue
            if item.deadline is not None:
                if now >= item.deadline:
                    item.future.set_exception(deadline_exceeded("deadline passed while the sample waited in the queue"))
                    continue
                earliest = item.deadline if earliest is None else min(earliest, item.deadline)
            live.append(item)
        shrunk = len(live) < len(self._queue)
        self._queue = live
        self._cancelled_waiting = 0
        self._earliest_deadline = earliest
        self._set_depth()
        if shrunk:
            self._room_freed()

    def _full_enough(self) -> bool:
        costs = [it.cost for it in self._queue[: self.max_batch_size]]
        return len(self._queue) >= self.max_batch_size or batch_cost(costs, self.cost_model) >= self.max_batch_tokens

    async def _loop(self) -> None:
        while True:
            self._purge()
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            await self._slots.acquire()
            try:
                if self.max_wait_s > 0:
                    await self._hold_for_more()
                self._purge()
                if not self._queue:
                    self._slots.release()
                    continue
                batch = self._take_batch()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _hold_for_more(self) -> None:
        while self._queue and not self._full_enough():
            remaining = self._queue[0].enqueued + self.max_wait_s - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=remaining)
            except TimeoutError:
                return
            self._purge()

    def _take_batch(self) -> list[WorkItem[P]]:
        chosen = select_batch(
            [it.cost for it in self._queue],
            self.max_batch_tokens,
            self.max_batch_size,
            self.cost_model,
            self.max_padding,
        )
        picked = set(chosen)
        batch = [self._queue[i] for i in sorted(chosen)]
        self._queue = [it for i, it in enumerate(self._queue) if i not in picked]
        self._set_depth()
        self._room_freed()
        return batch

    async def _execute(self, batch: list[WorkItem[P]]) -> None:
        try:
            started = time.monotonic()
            if self._metrics:
                self._metrics.batch_size.observe(len(batch))
                self._metrics.batch_tokens.observe(batch_cost([it.cost for it in batch], self.cost_model))
                for it in batch:
                    self._metrics.queue_wait.observe(started - it.enqueued)
            await self._run_and_settle(batch)
            if self._metrics:
                self._metrics.batch_latency.observe(time.monotonic() - started)
        finally:
            self._slots.release()

    async def _run_and_settle(self, batch: list[WorkItem[P]]) -> None:
        try:
            results = await self._run_batch([it.payload for it in batch])
        except ServiceError as e:  # the backend said what went wrong for the whole batch (e.g. unavailable)
            self._fail(batch, e)
            return
        except Exception as e:
            if self._metrics:
                self._metrics.backend_errors.inc()
            if len(batch) > 1:
                log.warning(
                    "batch failed, retrying its samples one by one", extra={"size": len(batch), "error": repr(e)}
                )
                for item in batch:
                    await self._run_and_settle([item])
                return
            log.exception("sample failed in the backend")
            self._fail(batch, ServiceError(grpc.StatusCode.INTERNAL, f"the model failed on this sample: {e}"))
            return
        for item, result in zip(batch, results):
            if not item.future.done():
                item.future.set_result(result)

    @staticmethod
    def _fail(batch: list[WorkItem[Any]], error: ServiceError) -> None:
        for item in batch:
            if not item.future.done():
                item.future.set_exception(error)


class Reservation(Generic[P]):
    """Room held in a Batcher's queue for samples not rendered yet (``Batcher.reserve``)."""

    def __init__(self, batcher: Batcher[P, Any], n: int) -> None:
        self._batcher = batcher
        self.held = n

    def submit(self, payloads: Sequence[tuple[P, int]], deadline: float | None = None) -> list[asyncio.Future]:
        """Queues ``payloads`` (at most the room held) in that room, and gives back the rest of it."""
        if len(payloads) > self.held:
            raise ValueError(f"{len(payloads)} samples submitted through a reservation of {self.held}")
        self.release()
        if self._batcher._closed:
            raise ServiceError(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        return self._batcher._enqueue(payloads, deadline)

    def release(self) -> None:
        """Gives the room back (once; a no-op after ``submit``)."""
        if self.held:
            self._batcher._reserved -= self.held
            self.held = 0
            self._batcher._room_freed()

    def __enter__(self) -> Reservation[P]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
