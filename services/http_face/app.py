"""The HTTP face's application and its life in the gRPC server's event loop.

aiohttp's ``AppRunner``/``TCPSite`` run an application inside a loop that already exists (the grpc.aio server's),
without taking over signals: the server keeps its own SIGTERM handling and drain. ``handler_cancellation`` is on,
so a client that disconnects cancels its request, and its samples leave the queue as a cancelled gRPC call's do.

Every request passes the middlewares before any route: ``json_errors`` first (every failure is a JSON body), then
whatever the caller adds — the one place where a later check of every request (a bearer token) belongs. TLS
settings go to ``start`` as an ``ssl.SSLContext``, which ``TCPSite`` takes as it is.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Sequence

from aiohttp import web
from aiohttp.typedefs import Middleware

from rewardline.services.core import ScoringCore
from rewardline.services.http_face.bodies import MAX_BODY_BYTES
from rewardline.services.http_face.errors import json_errors
from rewardline.services.http_face.openrlhf import OpenRLHFRoutes
from rewardline.services.http_face.proto_routes import ProtoRoutes
from rewardline.services.http_face.vllm_classify import ClassifyRoutes

log = logging.getLogger(__name__)


def build_app(
    core: ScoringCore, serving: Callable[[], bool], middlewares: Sequence[Middleware] = ()
) -> web.Application:
    """The routes of every contract over one core; ``serving`` says whether health is SERVING now."""
    max_body = int(core.config.max_message_mb * 1024 * 1024)
    app = web.Application(client_max_size=max_body, middlewares=[json_errors, *middlewares])
    app[MAX_BODY_BYTES] = max_body
    ProtoRoutes(core, serving).add_to(app)
    OpenRLHFRoutes(core).add_to(app)
    ClassifyRoutes(core).add_to(app)
    return app


class HttpFace:
    """Starts and stops the HTTP face of one service in the running event loop."""

    def __init__(self, core: ScoringCore, serving: Callable[[], bool], middlewares: Sequence[Middleware] = ()) -> None:
        self.app = build_app(core, serving, middlewares)
        self.runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        self.port = 0

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, ssl_context=ssl_context)
        await site.start()
        self.port = port
        log.info("http face listening", extra={"http_port": port})

    async def stop(self) -> None:
        """Closes the listening socket and the open connections (the gate has let in-flight requests finish)."""
        await self.runner.cleanup()
