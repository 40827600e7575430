"""A rewardline service (reward, uncertainty or judge) as a reward source, over one ScoreStream.

Samples are written to the stream as they are submitted and rewards are read back as the service answers
them, so scoring overlaps generation. The source keeps every sample that has not been answered yet
(``pending``); when the stream breaks — the service was killed, is draining, or the network went away — it
reports the outage, waits for the service's health to say SERVING again (with backoff, on a fresh channel so
gRPC's own reconnect backoff does not delay noticing), opens a new stream and resends exactly the pending
samples. A sample is removed from ``pending`` when its reward arrives, so it is never sent again after
being answered; and a sample is written at most once per stream, so the service never sees a duplicate id.

TLS, a client certificate and a bearer token come from the source's config (``ClientSecurity``); each reconnection
opens a fresh channel, so it reads rotated certificates and a rotated token file.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc

from rewardline.services.api import pb
from rewardline.services.backoff import Backoff
from rewardline.services.client import AsyncRewardClient
from rewardline.services.validation import MAX_ID_CHARS
from rewardline.trainer.config import GrpcSourceConfig
from rewardline.trainer.rewards.base import RewardSink, ScoringSample, SourceReward

log = logging.getLogger(__name__)

# Per-sample errors that say "not now" rather than "never": the sample is sent again.
RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE.value[0],
    grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
}
RETRY_DELAY_S = 0.5
# The service is up but refuses this client (its token or certificate): an outage until someone fixes the token file
# on either side, so it is reported like one and retried with backoff instead of at once.
REFUSED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
HEALTH_TIMEOUT_S = 2.0


def to_pb(sample: ScoringSample) -> pb.Sample:
    return pb.Sample(id=sample.id, prompt=sample.prompt, response=sample.completion, reference=sample.answer or "")


def from_pb(reward: pb.Reward, source: str) -> SourceReward:
    if reward.HasField("uncertainty"):
        u = reward.uncertainty
        return SourceReward(reward.id, source, score=reward.score, std=u.std, out_of_distribution=u.out_of_distribution)
    return SourceReward(reward.id, source, score=reward.score)


class GrpcRewardSource:
    def __init__(self, config: GrpcSourceConfig) -> None:
        self.name = config.name
        self.config = config
        self.sink: RewardSink | None = None
        self.pending: dict[str, ScoringSample] = {}  # submitted, not answered; insertion-ordered
        self.queued: set[str] = set()  # in the outbox
        self.inflight: set[str] = set()  # written on the current stream, not answered
        self.outbox: asyncio.Queue[str] = asyncio.Queue()
        self.client: AsyncRewardClient | None = None
        self.closing = False
        self.task: asyncio.Task | None = None
        self.call: grpc.aio.StreamStreamCall | None = None
        self.streams_opened = 0
        self.refused = False  # the last stream was refused for its token or certificate; no answer since
        self.refused_backoff = Backoff(maximum=config.reconnect_max_backoff_s)

    async def start(self, sink: RewardSink) -> None:
        self.sink = sink
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, samples: Sequence[ScoringSample]) -> None:
        assert self.sink is not None
        for sample in samples:
            if len(sample.id) > MAX_ID_CHARS:  # the service would answer under a cut id that matches no sample
                error = f"INVALID_ARGUMENT: the sample id is longer than the service's {MAX_ID_CHARS} characters"
                self.sink.deliver(SourceReward(sample.id, self.name, error=error))
                continue
            self.pending[sample.id] = sample
            self._enqueue(sample.id)

    def _enqueue(self, sample_id: str) -> None:
        if sample_id in self.pending and sample_id not in self.queued and sample_id not in self.inflight:
            self.queued.add(sample_id)
            self.outbox.put_nowait(sample_id)

    async def _run(self) -> None:
        assert self.sink is not None
        while not self.closing:
            was_down = await self._connect()
            if self.closing:
                return
            if was_down:
                self.sink.set_available(self.name, True)
            try:
                await self._stream()
                reason = "the stream ended"
            except grpc.aio.AioRpcError as e:
                reason = f"{e.code().name}: {e.details()}"
                if e.code() in REFUSED and not self.closing:
                    self.refused = True
                    self.sink.set_available(self.name, False, f"the service refuses this client: {reason}")
                    await self.refused_backoff.sleep()
                    continue
            except asyncio.CancelledError:
                raise
            if not self.closing:
                log.info(
                    "score stream broke; reconnecting",
                    extra={"source": self.name, "reason": reason, "pending": len(self.pending)},
                )

    async def _connect(self) -> bool:
        """Waits until the service answers SERVING; returns whether it had to report an outage."""
        assert self.sink is not None
        backoff, reported = Backoff(maximum=self.config.reconnect_max_backoff_s), False
        while not self.closing:
            client = AsyncRewardClient(self.config.target, timeout=None, settings=self.config.channel_settings())
            try:
                status = await client.health(timeout=HEALTH_TIMEOUT_S)
                reason = f"health is {status}"
            except grpc.aio.AioRpcError as e:
                status, reason = "", f"{e.code().name}: {e.details()}"
            if status == "SERVING":
                if self.client is not None:
                    await self.client.close()
                self.client = client
                return reported
            await client.close()
            if not reported:
                self.sink.set_available(self.name, False, reason)
                reported = True
            await backoff.sleep()
        return reported

    async def _stream(self) -> None:
        """One ScoreStream: resend what is pending, then write and read until it breaks."""
        assert self.client is not None
        self.inflight.clear()
        self.queued.clear()
        self.outbox = asyncio.Queue()
        for sample_id in self.pending:
            self._enqueue(sample_id)
        call = self.call = self.client.open_stream()
        self.streams_opened += 1
        writer = asyncio.get_running_loop().create_task(self._write(call))
        try:
            while True:
                response = await call.read()
                if response is grpc.aio.EOF:
                    await call  # raises the stream's error status, if any
                    return
                for reward in response.rewards:
                    self._answer(reward)
        finally:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            call.cancel()

    async def _write(self, call: grpc.aio.StreamStreamCall) -> None:
        limit = self.config.max_samples_per_request
        while True:
            batch = [await self.outbox.get()]
            while len(batch) < limit and not self.outbox.empty():
                batch.append(self.outbox.get_nowait())
            self.queued.difference_update(batch)
            samples = [self.pending[i] for i in batch if i in self.pending and i not in self.inflight]
            if not samples:
                continue
            self.inflight.update(s.id for s in samples)
            await call.write(pb.ScoreRequest(samples=[to_pb(s) for s in samples]))

    def _answer(self, reward: pb.Reward) -> None:
        assert self.sink is not None
        if self.refused:  # answered again: whatever refused this client was fixed
            self.refused = False
            self.refused_backoff.reset()
            self.sink.set_available(self.name, True)
        self.inflight.discard(reward.id)
        if reward.HasField("error"):
            if reward.error.code in RETRYABLE and reward.id in self.pending:
                asyncio.get_running_loop().call_later(RETRY_DELAY_S, self._enqueue, reward.id)
                return
            self.pending.pop(reward.id, None)
            code = grpc.StatusCode.UNKNOWN.name
            for status in grpc.StatusCode:
                if status.value[0] == reward.error.code:
                    code = status.name
            self.sink.deliver(SourceReward(reward.id, self.name, error=f"{code}: {reward.error.message}"))
            return
        self.pending.pop(reward.id, None)
        self.sink.deliver(from_pb(reward, self.name))

    async def close(self) -> None:
        self.closing = True
        if self.call is not None:
            self.call.cancel()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.client is not None:
            await self.client.close()
