"""The trainer's side of the reward sources: one event loop, every source on it, results by sample id.

The training loop is synchronous (torch), the sources are asyncio (gRPC streams), so the hub runs an event
loop on its own thread. The rollout engine calls `submit` from the training thread as each sample finishes;
the sources deliver on the loop thread; `wait` blocks the training thread until every source has answered
every sample it asks for. The first answer of a source for a sample is kept and later ones are counted and
dropped, so no sample is ever scored twice into one update.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from rewardline.trainer.observability import TrainerMetrics
from rewardline.trainer.rewards.base import RewardSource, ScoringSample, SourceReward

log = logging.getLogger(__name__)
T = TypeVar("T")


class RewardWaitTimeout(TimeoutError):
    """Rewards did not arrive within rewards.max_wait_s."""


class WaitInterrupted(Exception):
    """The run was asked to stop while it waited for rewards."""


class LoopThread:
    """An asyncio event loop running on a daemon thread."""

    def __init__(self, name: str = "rewards") -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.thread.is_alive():
            self.loop.close()


class RewardHub:
    def __init__(self, sources: Sequence[RewardSource], metrics: TrainerMetrics) -> None:
        self.sources = list(sources)
        self.names = [s.name for s in self.sources]
        self.metrics = metrics
        self.results: dict[str, dict[str, SourceReward]] = {}  # sample id -> source -> first answer
        self.expected: set[str] = set()
        self.unavailable: dict[str, float] = {}  # source -> since (monotonic)
        self.condition = threading.Condition()
        self.loop = LoopThread()
        for name in self.names:
            metrics.waiting_for_source.labels(name).set(0)

    def start(self) -> None:
        for source in self.sources:
            self.loop.run(source.start(self))

    # --- RewardSink (called on the loop thread) ---------------------------------------------------------
    def deliver(self, reward: SourceReward) -> None:
        with self.condition:
            answers = self.results.get(reward.sample_id)
            if answers is None or reward.source in answers:
                self.metrics.duplicate_rewards.labels(reward.source).inc()
                return
            answers[reward.source] = reward
            if reward.error is not None:
                self.metrics.reward_errors.labels(reward.source).inc()
                log.info(
                    "sample not scored",
                    extra={"source": reward.source, "sample_id": reward.sample_id, "error": reward.error},
                )
            if reward.out_of_distribution:
                self.metrics.out_of_distribution.labels(reward.source).inc()
            self.condition.notify_all()

    def set_available(self, source: str, available: bool, reason: str = "") -> None:
        with self.condition:
            if not available and source not in self.unavailable:
                self.unavailable[source] = time.monotonic()
                self.metrics.waiting_for_source.labels(source).set(1)
                self.metrics.source_outages.labels(source).inc()
                log.warning(
                    f"reward source {source!r} is unavailable ({reason}); training pauses until it is back, "
                    "and its unanswered samples will be sent again",
                    extra={"source": source, "reason": reason},
                )
            elif available and source in self.unavailable:
                down_s = time.monotonic() - self.unavailable.pop(source)
                self.metrics.waiting_for_source.labels(source).set(0)
                log.warning(
                    f"reward source {source!r} is back after {down_s:.1f} s; training resumes",
                    extra={"source": source, "down_s": round(down_s, 2)},
                )

    # --- the training thread ------------------------------------------------------------------------------
    def submit(self, samples: Sequence[ScoringSample]) -> None:
        """Sends samples to every source; returns at once. Thread-safe (the rollout thread calls it too)."""
        with self.condition:
            for sample in samples:
                self.results.setdefault(sample.id, {})
                self.expected.add(sample.id)
        for source in self.sources:
            self.loop.spawn(source.submit(samples))

    def peek(self, sample_ids: Sequence[str]) -> dict[str, dict[str, SourceReward]]:
        """The answers received so far for these samples, left in place (what a checkpoint saves of them)."""
        with self.condition:
            return {i: dict(self.results.get(i, {})) for i in sample_ids}

    def restore(self, samples: Sequence[ScoringSample], answers: dict[str, dict[str, SourceReward]]) -> None:
        """Samples of a resumed run's in-flight rollouts: the answers a checkpoint saved are taken as received, and
        each sample is sent only to the sources that had not answered it (none is scored twice)."""
        with self.condition:
            for sample in samples:
                self.results[sample.id] = dict(answers.get(sample.id, {}))
                self.expected.add(sample.id)
        for source in self.sources:
            missing = [s for s in samples if source.name not in answers.get(s.id, {})]
            if missing:
                self.loop.spawn(source.submit(missing))

    def forget(self, sample_ids: Sequence[str]) -> None:
        """Drops what is known about samples of an abandoned step (their late answers count as duplicates)."""
        with self.condition:
            for i in sample_ids:
                self.results.pop(i, None)
            self.expected.difference_update(sample_ids)

    def missing(self, sample_ids: Sequence[str]) -> dict[str, int]:
        """Per source, how many of these samples it has not answered."""
        with self.condition:
            return self.missing_locked(sample_ids)

    def wait(
        self, sample_ids: Sequence[str], timeout: float | None = None, should_stop: Callable[[], bool] = lambda: False
    ) -> dict[str, dict[str, SourceReward]]:
        """Blocks until every source answered every sample; returns and forgets their answers.

        Raises RewardWaitTimeout after ``timeout`` seconds, WaitInterrupted as soon as ``should_stop()``."""
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout

        def complete() -> bool:
            return all(len(self.results.get(i, {})) == len(self.names) for i in sample_ids)

        with self.condition:
            while not complete():
                remaining = None if deadline is None else deadline - time.monotonic()
                if should_stop():
                    raise WaitInterrupted("stopped while waiting for rewards")
                if remaining is not None and remaining <= 0:
                    missing = {n: c for n, c in self.missing_locked(sample_ids).items() if c}
                    raise RewardWaitTimeout(f"rewards still missing after {timeout:.0f} s: {missing}")
                self.condition.wait(0.5 if remaining is None else min(remaining, 0.5))
            out = {i: self.results.pop(i) for i in sample_ids}
            self.expected.difference_update(sample_ids)
        self.metrics.reward_wait_seconds.inc(time.monotonic() - started)
        return out

    def missing_locked(self, sample_ids: Sequence[str]) -> dict[str, int]:
        return {n: sum(1 for i in sample_ids if n not in self.results.get(i, {})) for n in self.names}

    @property
    def waiting_for(self) -> list[str]:
        with self.condition:
            return sorted(self.unavailable)

    def close(self) -> None:
        for source in self.sources:
            try:
                self.loop.run(source.close(), timeout=30)
            except Exception:  # closing must not hide the error that ended the run
                log.exception("closing a reward source failed", extra={"source": source.name})
        self.loop.stop()
