"""gRPC statuses as HTTP statuses, and the one JSON error body every route answers with.

The mapping is Google's (google.rpc.Code to HTTP, as grpc-gateway applies it), so a request gets the same answer
over either face: INVALID_ARGUMENT is 400, RESOURCE_EXHAUSTED 429 and UNAVAILABLE 503 (both with Retry-After:
the request may succeed later or on another replica). The body is vLLM's (OpenAI's) error shape, which the
clients of /classify already parse: ``{"error": {"message", "type", "param", "code"}}`` with the gRPC status name
as ``type`` and the HTTP status as ``code``.
"""

from __future__ import annotations

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler

from rewardline.services.errors import ServiceError

HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
RETRY_AFTER_S = 1  # 429 and 503: worth retrying soon (a queue drains in moments; another replica is up now)


class HttpError(ServiceError):
    """A ServiceError whose HTTP status is not the mapped one (a body over the size limit is 413, not 429)."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int, param: str | None = None) -> None:
        super().__init__(code, message)
        self.http_status = http_status
        self.param = param


def field_error(message: str, param: str | None = None) -> HttpError:
    """INVALID_ARGUMENT (400) about one field of the request body."""
    return HttpError(grpc.StatusCode.INVALID_ARGUMENT, message, 400, param)


def error_response(status: int, kind: str, message: str, param: str | None = None) -> web.Response:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else None
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return web.json_response(body, status=status, headers=headers)


def service_error_response(error: ServiceError) -> web.Response:
    if isinstance(error, HttpError):
        return error_response(error.http_status, error.code.name, error.message, error.param)
    return error_response(HTTP_STATUS.get(error.code, 500), error.code.name, error.message)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as a JSON error body: ServiceErrors with their mapped status, aiohttp's own (404, 405) alike."""
    try:
        return await handler(request)
    except ServiceError as e:
        return service_error_response(e)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(e.status, e.reason.upper().replace(" ", "_"), e.text or e.reason)
