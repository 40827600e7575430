"""Bearer tokens on the HTTP face: the same token file, scopes and refusals as gRPC, at the face's one middleware point.

Every route that scores or describes the model (``/v1/*``, ``/get_reward``, ``/classify``, and any path the face
does not know, so nothing new is open by accident) needs a token with the ``score`` scope, exactly as the gRPC
methods they mirror; ``/health`` and ``/ready`` stay open for load balancers and probes. A refusal is the JSON error
body every route answers with: 401 with ``WWW-Authenticate: Bearer`` (RFC 6750) for a missing or unknown token, 403
for one without the scope, counted and logged by token name as on gRPC.
"""

from __future__ import annotations

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from rewardline.services.auth import AuthError, Observer, TokenStore, note_outcome
from rewardline.services.http_face.errors import HTTP_STATUS, error_response

OPEN_PATHS = frozenset({"/health", "/ready"})
SCORE = frozenset({"score"})


def bearer_auth(store: TokenStore, observe: Observer | None = None) -> Middleware:
    """The middleware that checks ``Authorization: Bearer TOKEN`` before any route that needs it."""

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        resource = request.match_info.route.resource  # the route, not the raw path a caller chose, goes to the log
        method = f"http:{resource.canonical}" if resource is not None else "http:(no route)"
        try:
            name = store.check(request.headers.get("Authorization"), SCORE)
        except AuthError as e:
            note_outcome(observe, e.token, e.code, method)
            response = error_response(HTTP_STATUS[e.code], e.code.name, e.message)
            if e.code is grpc.StatusCode.UNAUTHENTICATED:
                response.headers["WWW-Authenticate"] = 'Bearer realm="rewardline"'
            return response
        note_outcome(observe, name, grpc.StatusCode.OK, method)
        return await handler(request)

    return check_token
