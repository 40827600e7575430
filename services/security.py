"""What a server's TLS, token and health-port settings make of its ports, written once for every server: the
services (grpc.aio, with their HTTP face) and the trainer's control API (a threaded grpc.server).

- ``add_port``: the listening port, TLS (``tls.grpc_server_credentials``: gRPC's dynamic credentials, which follow
  rotated files) when a certificate is set, plaintext otherwise.
- ``HealthPort``: a second, plaintext server on ``health_port`` serving only ``grpc.health.v1.Health``, on
  threads of its own (a threaded grpc.server), from a servicer its owner sets wherever it sets the main port's
  health, so both say the same: the trainer's. The services run theirs in a process of their own instead
  (services/health_sidecar.py), since their event loop, receiving large requests, holds the GIL those threads need.
  Kubelet's native gRPC probes cannot speak TLS or send a token; this port gives them nothing else to reach: no
  scoring, no reflection, no control.
- ``warn_if_exposed``: a server that listens beyond loopback with neither TLS nor tokens says so at start.
"""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from rewardline.services.config import beyond_loopback
from rewardline.services.tls import ServerTLS, grpc_server_credentials

log = logging.getLogger(__name__)


def add_port(server: grpc.Server | grpc.aio.Server, address: str, tls: ServerTLS | None) -> int:
    """Binds ``address`` (TLS with ``tls``); OSError when the port cannot be bound. Returns the port."""
    port = server.add_secure_port(address, grpc_server_credentials(tls)) if tls else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    return port


def warn_if_exposed(what: str, host: str, port: int, tls: bool, tokens: bool) -> None:
    """The start-up warning of a server that anyone who can reach ``host`` may call, unencrypted."""
    if beyond_loopback(host) and not tls and not tokens:
        log.warning(
            f"{what} listens beyond loopback with neither TLS nor tokens: anyone who reaches it can call it, in clear "
            "(set tls_cert/tls_key and auth_tokens, or bind to 127.0.0.1)",
            extra={"host": host, "port": port},
        )


class HealthPort:
    """The plaintext health-only port: a threaded grpc.server of its own (the services' and the trainer's)."""

    def __init__(self, servicer: health.HealthServicer, host: str, port: int) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="health"))
        health_pb2_grpc.add_HealthServicer_to_server(servicer, self.server)
        self.port = add_port(self.server, f"{host}:{port}", None)

    def start(self) -> HealthPort:
        self.server.start()
        return self

    def stop(self, grace: float | None = None) -> Any:
        return self.server.stop(grace)
