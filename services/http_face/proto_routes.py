"""The contract itself over HTTP: Score, Compare and GetInfo as proto3 JSON, and health for load balancers.

POST /v1/score    ScoreRequest   -> ScoreResponse     (atomic, as the RPC: one bad sample fails the request)
POST /v1/compare  CompareRequest -> CompareResponse
GET  /v1/info                    -> GetInfoResponse
GET  /health      200 while the process serves HTTP (liveness; the body says SERVING or NOT_SERVING)
GET  /ready       200 when the model is loaded, the backend up and the server not draining; else 503
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from rewardline.services.api import pb
from rewardline.services.core import ScoringCore
from rewardline.services.http_face.bodies import message_json, parse_message, read_parsed
from rewardline.services.http_face.errors import error_response


class ProtoRoutes:
    def __init__(self, core: ScoringCore, serving: Callable[[], bool]) -> None:
        self.core = core
        self.serving = serving

    def add_to(self, app: web.Application) -> None:
        app.router.add_post("/v1/score", self.score)
        app.router.add_post("/v1/compare", self.compare)
        app.router.add_get("/v1/info", self.info)
        app.router.add_get("/health", self.health)
        app.router.add_get("/ready", self.ready)

    async def score(self, request: web.Request) -> web.Response:
        method = "http:/v1/score"
        async with self.core.admitted(method):
            message, size = await read_parsed(request, self.core, lambda data: parse_message(data, pb.ScoreRequest))
            rewards = await self.core.score(message.samples, None, method, size)
            return web.json_response(message_json(pb.ScoreResponse(rewards=rewards)))

    async def compare(self, request: web.Request) -> web.Response:
        async with self.core.admitted("http:/v1/compare"):
            message, size = await read_parsed(request, self.core, lambda data: parse_message(data, pb.CompareRequest))
            return web.json_response(message_json(await self.core.compare(message, None, size)))

    async def info(self, request: web.Request) -> web.Response:
        async with self.core.admitted("http:/v1/info"):
            return web.json_response(message_json(self.core.info()))

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "SERVING" if self.serving() else "NOT_SERVING"})

    async def ready(self, request: web.Request) -> web.Response:
        if self.serving() and not self.core.gate.draining:
            return web.json_response({"status": "SERVING"})
        why = "draining" if self.core.gate.draining else "not serving (loading, or the backend is down)"
        return error_response(503, "UNAVAILABLE", f"not ready: {why}")
