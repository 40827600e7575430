"""The Python client of RewardService, synchronous and asyncio.

Retries and load balancing are gRPC's own, configured through the channel's service config rather than a
hand-written loop: UNAVAILABLE (a pod starting, draining or gone) is retried with exponential backoff, and a
``dns:///name:port`` target with ``round_robin`` spreads calls over every address the name resolves to —
the pods behind a headless Kubernetes Service. A retried RPC produced no reward on the failed attempt, so a
retry never scores a sample twice into one answer.

``score`` takes any number of samples: more than the server's ``max_samples_per_request`` (read once, from
GetInfo, on the first call) go as several requests sent together, which the server batches
as one; the answer is still one Reward per sample in order, and the call fails if any of the requests does.

Servers that speak TLS or want tokens (``rewardline serve --tls-cert ... --auth-tokens ...``): ``ChannelSettings``
takes a ``ClientTLS`` (the CA to trust, a client certificate for mutual TLS) and a token file, whose token goes as
``authorization: Bearer TOKEN`` metadata on every call, health checks included (a server asks none there; it is
harmless). The token is metadata, not gRPC call credentials, so it also reaches a server that runs without TLS
behind a mesh or on loopback.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rewardline.services.api import REWARD_SERVICE, pb, pb_grpc
from rewardline.services.auth import bearer_metadata
from rewardline.services.tls import ClientTLS, grpc_channel_credentials

SampleLike = pb.Sample | Mapping[str, Any]


@dataclass(frozen=True)
class RetryPolicy:
    """gRPC retry policy for the RewardService methods (see gRFC A6).

    CANCELLED is retried as well as UNAVAILABLE: a replica that stops cancels the calls that reach it in the moment
    between its last refusal and its port closing (3 calls in one CI run of the SIGTERM test). Scoring is
    idempotent, and gRPC never retries a call the caller itself cancelled, so only the server's cancellations are.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    backoff_multiplier: float = 2.0
    retryable_codes: tuple[str, ...] = ("UNAVAILABLE", "CANCELLED")


@dataclass(frozen=True)
class ChannelSettings:
    retry: RetryPolicy | None = field(default_factory=RetryPolicy)
    load_balancing: str = "round_robin"
    max_message_mb: float = 64.0
    keepalive_s: float = 30.0
    tls: ClientTLS | None = None  # None: plaintext
    token_file: Path | None = None  # a bearer token sent on every call
    # Skip replicas whose health says NOT_SERVING; None: only for a target that names several addresses (an
    # ``ipv4:``/``ipv6:`` list, or ``dns:``), where another replica can take the call. A lone server stays reachable
    # while it is not serving (GetInfo while its backend is down, a last retry while it drains).
    health_check: bool | None = None


def names_several(target: str) -> bool:
    return "," in target or target.startswith("dns:")


def service_config(settings: ChannelSettings, target: str = "") -> str:
    method: dict[str, Any] = {"name": [{"service": REWARD_SERVICE}]}
    if settings.retry is not None:
        r = settings.retry
        method["retryPolicy"] = {
            "maxAttempts": r.max_attempts,
            "initialBackoff": f"{r.initial_backoff_s}s",
            "maxBackoff": f"{r.max_backoff_s}s",
            "backoffMultiplier": r.backoff_multiplier,
            "retryableStatusCodes": list(r.retryable_codes),
        }
    # Client-side health checking (gRFC A17): a replica whose health says NOT_SERVING (loading, draining) gets no new
    # calls, so a draining replica is left alone before it stops instead of refusing calls that race its stop.
    config: dict[str, Any] = {"loadBalancingConfig": [{settings.load_balancing: {}}], "methodConfig": [method]}
    health_check = settings.health_check if settings.health_check is not None else names_several(target)
    if health_check:
        config["healthCheckConfig"] = {"serviceName": REWARD_SERVICE}
    return json.dumps(config)


def channel_options(settings: ChannelSettings, target: str = "") -> list[tuple[str, Any]]:
    size = int(settings.max_message_mb * 1024 * 1024)
    options: list[tuple[str, Any]] = [
        ("grpc.service_config", service_config(settings, target)),
        ("grpc.enable_retries", 1 if settings.retry is not None else 0),
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        ("grpc.keepalive_time_ms", int(settings.keepalive_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 0),
    ]
    if settings.tls is not None and settings.tls.server_name:
        options.append(("grpc.ssl_target_name_override", settings.tls.server_name))
    return options


def open_channel(target: str, settings: ChannelSettings) -> grpc.Channel:
    """A blocking channel to ``target``: TLS when ``settings.tls`` is set, else plaintext."""
    options = channel_options(settings, target)
    if settings.tls is None:
        return grpc.insecure_channel(target, options=options)
    return grpc.secure_channel(target, grpc_channel_credentials(settings.tls), options=options)


def open_aio_channel(target: str, settings: ChannelSettings) -> grpc.aio.Channel:
    """The asyncio form of ``open_channel`` (belongs to the running event loop)."""
    options = channel_options(settings, target)
    if settings.tls is None:
        return grpc.aio.insecure_channel(target, options=options)
    return grpc.aio.secure_channel(target, grpc_channel_credentials(settings.tls), options=options)


def call_metadata(settings: ChannelSettings) -> tuple[tuple[str, str], ...]:
    """The metadata of one call: the bearer token, read from its file now (so a rotated token is picked up)."""
    return bearer_metadata(settings.token_file)


def to_sample(sample: SampleLike, index: int = 0) -> pb.Sample:
    """A Sample from a proto or a dict with ``id``, ``prompt``/``response`` or ``messages``, ``reference``."""
    if isinstance(sample, pb.Sample):
        return sample
    messages = [pb.Message(role=m["role"], content=m["content"]) for m in sample.get("messages", ())]
    return pb.Sample(
        id=str(sample.get("id", index)),
        prompt=sample.get("prompt", ""),
        response=sample.get("response", ""),
        messages=messages,
        reference=sample.get("reference", "") or "",
    )


def to_request(samples: Iterable[SampleLike]) -> pb.ScoreRequest:
    return pb.ScoreRequest(samples=[to_sample(s, i) for i, s in enumerate(samples)])


def chunks(samples: Sequence[pb.Sample], size: int) -> list[Sequence[pb.Sample]]:
    """``samples`` in consecutive requests of at most ``size``."""
    return [samples[i : i + size] for i in range(0, len(samples), size)]


def _stream_requests(items: Iterable[SampleLike | Sequence[SampleLike]]) -> Iterator[pb.ScoreRequest]:
    for item in items:
        if isinstance(item, (pb.Sample, Mapping)):
            yield pb.ScoreRequest(samples=[to_sample(item)])
        else:
            yield to_request(item)


class RewardClient:
    """Blocking client. ``timeout`` is each call's deadline in seconds (None: no deadline)."""

    def __init__(self, target: str, timeout: float | None = 60.0, settings: ChannelSettings | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self.settings = settings or ChannelSettings()
        self.channel = open_channel(target, self.settings)
        self.stub = pb_grpc.RewardServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self._max_samples: int | None = None

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return call_metadata(self.settings)

    def max_samples_per_request(self, timeout: float | None = None) -> int:
        """The server's limit on samples per Score request (GetInfo, asked once)."""
        if self._max_samples is None:
            self._max_samples = max(1, self.info(timeout).max_samples_per_request)
        return self._max_samples

    def score(self, samples: Iterable[SampleLike], timeout: float | None = None) -> list[pb.Reward]:
        """One Reward per sample, in order, however many samples there are."""
        request = to_request(samples)
        timeout = timeout or self.timeout
        size = self.max_samples_per_request(timeout)
        if len(request.samples) <= size:
            return list(
                self.stub.Score(request, timeout=timeout, metadata=self._metadata(), wait_for_ready=True).rewards
            )
        calls = [
            self.stub.Score.future(
                pb.ScoreRequest(samples=part), timeout=timeout, metadata=self._metadata(), wait_for_ready=True
            )
            for part in chunks(request.samples, size)
        ]
        try:
            return [reward for call in calls for reward in call.result().rewards]
        finally:
            for call in calls:
                call.cancel()  # after a failure, the rest need not finish (a no-op on those that have)

    def score_stream(
        self, items: Iterable[SampleLike | Sequence[SampleLike]], timeout: float | None = None
    ) -> Iterator[pb.Reward]:
        """Streams samples (one at a time, or in lists) and yields rewards as they are ready, in any order."""
        for response in self.stub.ScoreStream(
            _stream_requests(items), timeout=timeout, metadata=self._metadata(), wait_for_ready=True
        ):
            yield from response.rewards

    def info(self, timeout: float | None = None) -> pb.GetInfoResponse:
        return self.stub.GetInfo(
            pb.GetInfoRequest(), timeout=timeout or self.timeout, metadata=self._metadata(), wait_for_ready=True
        )

    def compare(
        self,
        prompt: str,
        response_a: str,
        response_b: str,
        reference: str = "",
        id: str = "",
        timeout: float | None = None,
    ) -> pb.CompareResponse:
        request = pb.CompareRequest(
            id=id, prompt=prompt, response_a=response_a, response_b=response_b, reference=reference
        )
        return self.stub.Compare(
            request, timeout=timeout or self.timeout, metadata=self._metadata(), wait_for_ready=True
        )

    def health(self, service: str = REWARD_SERVICE, timeout: float = 5.0) -> str:
        """ "SERVING", "NOT_SERVING", ... (raises grpc.RpcError when the server cannot be reached)."""
        response = self.health_stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=self._metadata()
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncRewardClient:
    """asyncio client with the same methods as RewardClient."""

    def __init__(self, target: str, timeout: float | None = 60.0, settings: ChannelSettings | None = None) -> None:
        self.target = target
        self.timeout = timeout
        self.settings = settings or ChannelSettings()
        self.channel = open_aio_channel(target, self.settings)
        self.stub = pb_grpc.RewardServiceStub(self.channel)
        self.health_stub = health_pb2_grpc.HealthStub(self.channel)
        self._max_samples: int | None = None

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return call_metadata(self.settings)

    async def max_samples_per_request(self, timeout: float | None = None) -> int:
        """The server's limit on samples per Score request (GetInfo, asked once)."""
        if self._max_samples is None:
            self._max_samples = max(1, (await self.info(timeout)).max_samples_per_request)
        return self._max_samples

    async def score(self, samples: Iterable[SampleLike], timeout: float | None = None) -> list[pb.Reward]:
        """One Reward per sample, in order, however many samples there are."""
        request = to_request(samples)
        timeout = timeout or self.timeout
        size = await self.max_samples_per_request(timeout)
        if len(request.samples) <= size:
            return list(
                (
                    await self.stub.Score(request, timeout=timeout, metadata=self._metadata(), wait_for_ready=True)
                ).rewards
            )
        calls = [
            asyncio.ensure_future(
                self.stub.Score(
                    pb.ScoreRequest(samples=part), timeout=timeout, metadata=self._metadata(), wait_for_ready=True
                )
            )
            for part in chunks(request.samples, size)
        ]
        try:
            responses = await asyncio.gather(*calls)
        finally:
            for call in calls:
                call.cancel()
        return [reward for response in responses for reward in response.rewards]

    async def score_stream(
        self,
        items: AsyncIterable[SampleLike | Sequence[SampleLike]] | Iterable[SampleLike | Sequence[SampleLike]],
        timeout: float | None = None,
    ) -> AsyncIterator[pb.Reward]:
        async def requests() -> AsyncIterator[pb.ScoreRequest]:
            if isinstance(items, AsyncIterable):
                async for item in items:
                    for request in _stream_requests([item]):
                        yield request
            else:
                for request in _stream_requests(items):
                    yield request

        call = self.stub.ScoreStream(requests(), timeout=timeout, metadata=self._metadata(), wait_for_ready=True)
        async for response in call:
            for reward in response.rewards:
                yield reward

    def open_stream(self, timeout: float | None = None) -> grpc.aio.StreamStreamCall:
        """A raw ScoreStream call: ``await call.write(ScoreRequest)``, ``await call.read()``,
        ``await call.done_writing()`` — for callers that send and receive from separate tasks (the trainer)."""
        return self.stub.ScoreStream(timeout=timeout, metadata=self._metadata(), wait_for_ready=True)

    async def info(self, timeout: float | None = None) -> pb.GetInfoResponse:
        return await self.stub.GetInfo(
            pb.GetInfoRequest(), timeout=timeout or self.timeout, metadata=self._metadata(), wait_for_ready=True
        )

    async def compare(
        self,
        prompt: str,
        response_a: str,
        response_b: str,
        reference: str = "",
        id: str = "",
        timeout: float | None = None,
    ) -> pb.CompareResponse:
        request = pb.CompareRequest(
            id=id, prompt=prompt, response_a=response_a, response_b=response_b, reference=reference
        )
        return await self.stub.Compare(
            request, timeout=timeout or self.timeout, metadata=self._metadata(), wait_for_ready=True
        )

    async def health(self, service: str = REWARD_SERVICE, timeout: float = 5.0) -> str:
        response = await self.health_stub.Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout, metadata=self._metadata()
        )
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
