"""Reward functions given by import path (``module:function``), with TRL's calling convention.

``fn(prompts=[...], completions=[...], completion_ids=[...], answer=[...], **metadata_columns, **kwargs)``
returns one float per completion (None for "does not apply"). Calls run on the source's own worker threads
(``max_concurrency`` of them) so a slow function never stalls the streams of the remote sources, and a function
that waits on something remote is called for several batches at once.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import logging
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from rewardline.trainer.config import PythonSourceConfig
from rewardline.trainer.rewards.base import RewardSink, ScoringSample, SourceReward

log = logging.getLogger(__name__)


def import_function(path: str) -> Callable[..., Sequence[float | None]]:
    module_name, _, attribute = path.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward function {path!r}: cannot import {module_name!r}: {e}") from e
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ValueError(f"reward function {path!r}: {module_name!r} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"reward function {path!r} is not callable")
    return target


def columns(samples: Sequence[ScoringSample]) -> dict[str, list[Any]]:
    """The per-sample columns passed as keyword arguments, as TRL passes a dataset's columns."""
    keys = sorted({k for s in samples for k in s.metadata})
    out: dict[str, list[Any]] = {"answer": [s.answer for s in samples]}
    for key in keys:
        if key not in ("prompts", "completions", "completion_ids", "answer"):
            out[key] = [s.metadata.get(key) for s in samples]
    return out


class PythonRewardSource:
    def __init__(self, config: PythonSourceConfig) -> None:
        self.name = config.name
        self.config = config
        self.fn = import_function(config.function)
        self.sink: RewardSink | None = None
        self._tasks: set[asyncio.Task] = set()
        self._pool = ThreadPoolExecutor(config.max_concurrency, thread_name_prefix=f"reward-{config.name}")

    async def start(self, sink: RewardSink) -> None:
        self.sink = sink

    async def submit(self, samples: Sequence[ScoringSample]) -> None:
        task = asyncio.get_running_loop().create_task(self._score(list(samples)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _score(self, samples: list[ScoringSample]) -> None:
        assert self.sink is not None
        try:
            call = functools.partial(
                self.fn,
                prompts=[s.prompt for s in samples],
                completions=[s.completion for s in samples],
                completion_ids=[list(s.completion_ids) for s in samples],
                **columns(samples),
                **self.config.kwargs,
            )
            scores = await asyncio.get_running_loop().run_in_executor(self._pool, call)
            scores = list(scores)
            if len(scores) != len(samples):
                raise ValueError(f"returned {len(scores)} scores for {len(samples)} completions")
        except Exception as e:  # a broken reward function must not end the run: its samples are refused
            log.error("reward function failed", extra={"source": self.name, "error": repr(e)})
            for s in samples:
                self.sink.deliver(SourceReward(s.id, self.name, error=f"reward function failed: {e!r}"))
            return
        for sample, score in zip(samples, scores):
            if score is None or not math.isfinite(float(score)):
                self.sink.deliver(SourceReward(sample.id, self.name, error=f"no finite score ({score!r})"))
            else:
                self.sink.deliver(SourceReward(sample.id, self.name, score=float(score)))

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._pool.shutdown(wait=False)
