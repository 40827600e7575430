"""The gRPC server every service kind runs: health, reflection, metrics, loading, warm-up and drain.

Life of a process:
1. The metrics exporter and the gRPC port (and the HTTP port, with ``http_port``) come up first; health says
   NOT_SERVING and requests answer UNAVAILABLE (HTTP 503), so an orchestrator can tell "loading" from "dead".
2. The model loads (on a worker thread, so health keeps answering) and one warm-up batch runs through the
   whole pipeline; only then health says SERVING.
3. SIGTERM or SIGINT: health goes NOT_SERVING, new requests on either face (and new samples on open streams) get
   UNAVAILABLE so clients retry elsewhere, in-flight work gets ``grace_period_s`` to finish, open streams end as
   soon as what they accepted is answered, and the process exits 0 (``drain`` says in which order, and why).
While serving, a backend that stops being ready (a remote Triton going away) turns health NOT_SERVING
until it is back.

Exposure (``tls_cert``/``tls_key``/``tls_client_ca``, ``auth_tokens``, ``health_port``): both faces take the same
certificate (gRPC's dynamic credentials; the HTTP face's context checked on a timer) and the same token file (the
gRPC interceptor; the HTTP face's middleware); the health-only port is for probes (services/security.py).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection

from rewardline.services import __version__
from rewardline.services.api import REWARD_SERVICE, pb
from rewardline.services.auth import AsyncAuthInterceptor, TokenStore
from rewardline.services.compute_threads import set_compute_nice
from rewardline.services.config import ServeConfig
from rewardline.services.core import ScoringCore, freeze_long_lived
from rewardline.services.health_sidecar import HealthSidecar
from rewardline.services.http_face.app import HttpFace
from rewardline.services.http_face.auth import bearer_auth
from rewardline.services.kinds import load_scorer
from rewardline.services.metrics import ServiceMetrics, start_exporter
from rewardline.services.scorer import Scorer
from rewardline.services.security import add_port, warn_if_exposed
from rewardline.services.servicer import RewardServicer, add_health_to_server, add_to_server
from rewardline.services.tls import ReloadingSSLContext

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
READINESS_POLL_S = 1.0
# After the drain, how long no new call may have come in before the port closes (a call that races the close is
# cancelled by gRPC itself, and CANCELLED is not retried).
DRAIN_QUIET_S = 0.5
TLS_RELOAD_CHECK_S = 1.0  # how often the HTTP face looks at its certificate files (one stat each)


def warmup_request() -> pb.ScoreRequest:
    return pb.ScoreRequest(
        samples=[
            pb.Sample(id="warmup-0", prompt="Warm-up: what is 1 + 1?", response="2"),
            pb.Sample(id="warmup-1", prompt="Warm-up.", response="A longer warm-up response, so that two lengths run."),
        ]
    )


class RewardServer:
    """Owns the scoring core and its faces for one process: the grpc.aio server, and the HTTP face when asked."""

    def __init__(self, config: ServeConfig, loader: Callable[[ServeConfig], Scorer] = load_scorer) -> None:
        self.config = config
        self.loader = loader
        self.metrics = ServiceMetrics()
        self.core = ScoringCore(config, self.metrics)
        self.servicer = RewardServicer(self.core)
        # Tokens and TLS, the same on both faces: one token store (one file, one reload), one certificate.
        tls = config.server_tls
        self.tokens = TokenStore(config.auth_tokens) if config.auth_tokens else None
        self.http_tls = ReloadingSSLContext(tls) if tls and config.http_port is not None else None
        self.http = (
            HttpFace(
                self.core,
                lambda: self._serving,
                [bearer_auth(self.tokens, self.metrics.auth_outcome)] if self.tokens else [],
            )
            if config.http_port is not None
            else None
        )
        self.health = health.aio.HealthServicer()
        max_bytes = int(config.max_message_mb * 1024 * 1024)
        options = [
            ("grpc.max_receive_message_length", max_bytes),
            ("grpc.max_send_message_length", max_bytes),
            ("grpc.so_reuseport", 0),
        ]
        if config.receive_window_kb:  # a window that stays put: no BDP probing, this much look-ahead per stream
            options += [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", config.receive_window_kb * 1024)]
        if config.max_connection_age_s:
            options += [
                ("grpc.max_connection_age_ms", int(config.max_connection_age_s * 1000)),
                ("grpc.max_connection_age_grace_ms", int(config.grace_period_s * 1000)),
            ]
        # With tokens, every method but health needs one (reflection too: it lists what the server serves).
        interceptors = [AsyncAuthInterceptor(self.tokens, self.metrics.auth_outcome)] if self.tokens else []
        self.server = grpc.aio.server(options=options, interceptors=interceptors)
        add_to_server(self.servicer, self.server)  # lenient parsing: malformed bytes get INVALID_ARGUMENT
        self._end_health_watches = add_health_to_server(self.health, self.server)
        reflection.enable_server_reflection((REWARD_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = add_port(self.server, f"{config.host}:{config.port}", tls)
        # The health-only port (probes) is answered by a process of its own, told every status set here: behind a
        # loop busy receiving four 15 MB requests, probes on the main port waited p50 33-47 ms / p99 94-216 ms;
        # answered by threads of this process, p50 11-14 / p99 45-93 ms, since the loop holds the GIL while it
        # receives and parses (bench/reliability.py; services/health_sidecar.py).
        self.health_port: HealthSidecar | None = None
        if config.health_port is not None:
            self.health_port = HealthSidecar(config.host, config.health_port)
        self._stop = asyncio.Event()
        self._serving = False

    async def _set_health(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ("", REWARD_SERVICE):
            await self.health.set(name, status)
            if self.health_port is not None:
                self.health_port.set(name, status)
        self._serving = serving
        self.metrics.serving.set(1 if serving else 0)

    async def start(self) -> None:
        config = self.config
        start_exporter(config.metrics_port, config.metrics_host or config.host)
        await self._set_health(False)
        await self.server.start()
        if self.health_port is not None:
            self.health_port.start()
        if self.http is not None and config.http_port is not None:
            await self.http.start(config.host, config.http_port, self.http_tls.context if self.http_tls else None)
            if self.http_tls is not None:
                asyncio.get_running_loop().create_task(self._reload_http_tls())
        warn_if_exposed(
            f"rewardline serve {config.kind}", config.host, self.port, config.server_tls is not None, bool(self.tokens)
        )
        log.info(
            "listening",
            extra={
                "port": self.port,
                "http_port": config.http_port,
                "metrics_port": config.metrics_port,
                "health_port": self.health_port.port if self.health_port else None,
                "tls": config.server_tls is not None,
                "mutual_tls": config.tls_client_ca is not None,
                "tokens": self.tokens is not None,
                "kind": config.kind,
            },
        )
        started = time.monotonic()
        scorer = await asyncio.get_running_loop().run_in_executor(None, self.loader, self.config)
        self.core.attach(scorer)
        info = scorer.info()
        self.metrics.model_info.info(
            {
                "name": info.model_name,
                "revision": info.revision,
                "kind": pb.ModelKind.Name(info.kind),
                "backend": info.backend,
                "device": info.device,
                "dtype": info.dtype,
                "version": __version__,
            }
        )
        ready = await scorer.ready()
        if ready:
            await self._warm_up()
        else:  # a remote backend (Triton) that is down: serve NOT_SERVING until _watch_backend sees it ready
            log.warning(
                "backend not ready at start; health stays NOT_SERVING until it is", extra={"backend": info.backend}
            )
        freeze_long_lived()
        self.core.gate.ready = True
        await self._set_health(ready)
        log.info(
            "serving",
            extra={"model": info.model_name, "revision": info.revision, "load_s": round(time.monotonic() - started, 2)},
        )

    async def _warm_up(self) -> None:
        """One batch through render, batcher and backend, so the first real request pays no lazy start-up."""
        scorer = self.core.scorer
        assert scorer is not None and self.core.batcher is not None
        samples = list(warmup_request().samples)
        rendered = [r for r in scorer.render(samples) if not isinstance(r, Exception)]
        if not rendered:
            raise RuntimeError("the warm-up samples could not be rendered for this model")
        futures = self.core.batcher.submit([(r, r.num_tokens) for r in rendered])
        await asyncio.gather(*futures)

    async def _watch_backend(self) -> None:
        """Folds the backend's readiness into health while serving."""
        scorer = self.core.scorer
        assert scorer is not None
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), READINESS_POLL_S)
                return
            except TimeoutError:
                pass
            ready = await scorer.ready()
            if ready != self._serving and not self.core.gate.draining:
                log.warning("backend readiness changed", extra={"ready": ready})
                await self._set_health(ready)

    async def _reload_http_tls(self) -> None:
        """Looks at the HTTP face's certificate files on a timer (gRPC's own credentials look at every handshake)."""
        assert self.http_tls is not None
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), TLS_RELOAD_CHECK_S)
                return
            except TimeoutError:
                self.http_tls.maybe_reload()

    async def close_health_port(self) -> None:
        """Stops the health-only port, after the drain (probes see NOT_SERVING there until the end, as on gRPC)."""
        if self.health_port is not None:
            self.health_port.stop(0)

    def request_stop(self) -> None:
        self._stop.set()

    async def drain(self) -> None:
        """Stops taking work, lets admitted work finish within the grace period, then stops.

        In this order, so that no call fails that a retry could have saved:
        1. health NOT_SERVING (clients that watch it, as services/client.py's do, stop sending here) and every new
           call, and every sample sent on an open stream, answered UNAVAILABLE, which retry policies retry elsewhere;
        2. admitted calls finish; an open stream answers what it accepted and then ends with UNAVAILABLE at once,
           so its client moves to another replica (before, it was held for the whole grace period and then cut);
        3. once no call has come in for DRAIN_QUIET_S, gRPC's own graceful stop: answers still being written go out
           (``stop(0)`` cut them: "Cancelling all calls"), and only a call racing the stop itself can be cancelled.
        """
        gate = self.core.gate
        grace = self.config.grace_period_s
        deadline = time.monotonic() + grace
        gate.begin_drain()
        await self.health.enter_graceful_shutdown()
        if self.health_port is not None:
            self.health_port.enter_graceful_shutdown()
        self._serving = False
        self.metrics.serving.set(0)
        log.info("draining", extra={"inflight": gate.inflight, "grace_period_s": grace})
        finished = await gate.wait_idle(grace)
        if finished:
            await gate.wait_quiet(DRAIN_QUIET_S, deadline)
        else:
            log.warning("grace period over; cancelling in-flight RPCs", extra={"inflight": gate.inflight})
        self._end_health_watches()  # open Watch streams would hold the graceful stop for the whole grace period
        await self.server.stop(max(0.0, deadline - time.monotonic()) if finished else 0)
        if self.http is not None:
            await self.http.stop()
        if self.core.batcher:
            await self.core.batcher.close()
        if self.core.scorer:
            await self.core.scorer.close()
        log.info("stopped")

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        starting = loop.create_task(self.start())
        stopping = loop.create_task(self._stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            if starting.exception() is not None:  # a model that failed to load ends the process with its error
                stopping.cancel()
                await self.server.stop(0)
                if self.http is not None:
                    await self.http.stop()
                starting.result()
            watcher = loop.create_task(self._watch_backend())
            await stopping
            await watcher
        else:
            log.warning("stopped while loading the model")
        await self.drain()


def serve(config: ServeConfig) -> None:
    """Runs a service until SIGTERM; returns after a clean drain."""
    set_compute_nice(config.compute_nice)

    async def main() -> None:  # grpc.aio servers belong to the loop they are created in
        server = RewardServer(config)
        try:
            await server.run()
        finally:
            await server.close_health_port()

    asyncio.run(main())
