"""A reward model hosted by NVIDIA Triton as a reward source, called directly over KServe v2 gRPC.

For users who run Triton and not rewardline's service. The samples are validated, rendered and tokenized by
the service's own code (``rewardline.services.validation``, ``services.rendering.InputRenderer`` over the model
directory's tokenizer and chat template, left truncation), and the forward call is the service's ``triton``
backend (``services.backends.triton.TritonClassifier``: same tensors, same error mapping, same check that
Triton serves the model directory's weights). So a Triton-hosted model gives the trainer the rewards the
service would give for the same model.

Reliability follows the gRPC source's contract: a sample that can never be scored (an empty response, one
that cannot fit) is delivered with ``error``; when Triton goes away (UNAVAILABLE), the source reports the
outage, stops sending, polls Triton's model readiness with backoff, reports it back and resends exactly the
samples whose call failed. Busy or slow answers (RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED) are retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import grpc
from transformers import AutoConfig

from rewardline.services.backends.triton import TritonClassifier, TritonSampleError
from rewardline.services.backoff import Backoff
from rewardline.services.errors import ServiceError
from rewardline.services.modeling import default_max_length, load_tokenizer
from rewardline.services.rendering import InputRenderer, RenderedInput
from rewardline.services.reward.attributes import attribute_names, combination_weights
from rewardline.services.validation import check_sample
from rewardline.trainer.config import TritonSourceConfig
from rewardline.trainer.rewards.base import RewardSink, ScoringSample, SourceReward
from rewardline.trainer.rewards.grpc_source import to_pb

log = logging.getLogger(__name__)

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED}
RETRY_DELAY_S = 0.5


def refusal(sample: ScoringSample, source: str, error: ServiceError) -> SourceReward:
    return SourceReward(sample.id, source, error=f"{error.code.name}: {error.message}")


class TritonRewardSource:
    def __init__(self, config: TritonSourceConfig) -> None:
        self.name = config.name
        self.config = config
        model_dir = Path(config.model_dir)
        tokenizer = load_tokenizer(model_dir)
        template = {"auto": None, "on": True, "off": False}[config.chat_template]
        self.renderer = InputRenderer(
            tokenizer, config.max_length or default_max_length(model_dir, tokenizer), "left", template
        )
        self.backend = TritonClassifier(
            model_dir, tokenizer, config.url, config.model, timeout_s=config.timeout_s, concurrency=config.concurrency
        )
        names = attribute_names(AutoConfig.from_pretrained(model_dir).id2label, self.backend.num_outputs)
        self.weights = combination_weights(names, config.score_weights)
        self.sink: RewardSink | None = None
        self.outages = 0
        self._queue: asyncio.Queue[ScoringSample] | None = None
        self._up: asyncio.Event | None = None
        self._slots: asyncio.Semaphore | None = None
        self._tasks: set[asyncio.Task] = set()
        self._runner: asyncio.Task | None = None
        self._watcher: asyncio.Task | None = None

    async def start(self, sink: RewardSink) -> None:
        self.sink = sink
        self._queue = asyncio.Queue()
        self._up = asyncio.Event()
        self._slots = asyncio.Semaphore(self.config.concurrency)
        self._watch("not checked yet")
        self._runner = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, samples: Sequence[ScoringSample]) -> None:
        assert self._queue is not None
        for sample in samples:
            self._queue.put_nowait(sample)

    async def _run(self) -> None:
        assert self._queue is not None and self._up is not None and self._slots is not None
        limit = self.config.max_batch_size
        while True:
            batch = [await self._queue.get()]
            while len(batch) < limit and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._up.wait()
            await self._slots.acquire()
            task = asyncio.get_running_loop().create_task(self._score(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _render(self, batch: list[ScoringSample]) -> list[tuple[ScoringSample, RenderedInput]]:
        """The samples that can run; the others are delivered as refused, as the service refuses them."""
        assert self.sink is not None
        valid = []
        for i, sample in enumerate(batch):
            try:
                check_sample(to_pb(sample), i)
                valid.append(sample)
            except ServiceError as e:
                self.sink.deliver(refusal(sample, self.name, e))
        runnable = []
        for sample, rendered in zip(valid, self.renderer.render([to_pb(s) for s in valid])):
            if isinstance(rendered, ServiceError):
                self.sink.deliver(refusal(sample, self.name, rendered))
            else:
                runnable.append((sample, rendered))
        return runnable

    async def _score(self, batch: list[ScoringSample]) -> None:
        assert self._slots is not None
        try:
            runnable = self._render(batch)
            if runnable:
                await self._forward(runnable)
        finally:
            self._slots.release()

    async def _forward(self, runnable: list[tuple[ScoringSample, RenderedInput]]) -> None:
        assert self.sink is not None
        try:
            logits = await self.backend.classify([r.token_ids for _, r in runnable])
        except TritonSampleError:  # Triton refused the batch for a sample in it: find which, alone
            for item in runnable:
                await self._forward([item])
            return
        except ServiceError as e:
            if e.code in RETRYABLE:
                if e.code is grpc.StatusCode.UNAVAILABLE:
                    self._watch(e.message)
                asyncio.get_running_loop().call_later(RETRY_DELAY_S, self._requeue, [s for s, _ in runnable])
                return
            for sample, _ in runnable:
                self.sink.deliver(refusal(sample, self.name, e))
            return
        for (sample, _), score in zip(runnable, logits @ self.weights):
            self.sink.deliver(SourceReward(sample.id, self.name, score=float(score)))

    def _requeue(self, samples: list[ScoringSample]) -> None:
        assert self._queue is not None
        for sample in samples:
            self._queue.put_nowait(sample)

    def _watch(self, reason: str) -> None:
        """Stops sending and polls Triton's readiness until the model is back (one watcher at a time)."""
        assert self._up is not None
        self._up.clear()
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._wait_until_ready(reason))

    async def _wait_until_ready(self, reason: str) -> None:
        assert self.sink is not None and self._up is not None
        backoff, reported = Backoff(maximum=self.config.reconnect_max_backoff_s), False
        while not await self.backend.ready():
            if not reported:
                detail = "; ".join(self.backend.mismatch) or reason
                self.sink.set_available(
                    self.name, False, f"Triton model {self.config.model!r} at {self.config.url}: {detail}"
                )
                self.outages += 1
                reported = True
            await backoff.sleep()
        if reported:
            self.sink.set_available(self.name, True)
        self._up.set()

    async def close(self) -> None:
        tasks = [t for t in (self._runner, self._watcher, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.backend.close()
