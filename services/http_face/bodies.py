"""Request bodies in, JSON out: every route reads and writes through here, so each bad body gets a 4xx naming the
field, never a 500.

The proto's messages travel as proto3 JSON through protobuf's own ``json_format`` (so the HTTP face and the proto
cannot drift): field names in lowerCamelCase on the way out, either spelling accepted on the way in, unknown fields
refused. Fields at their default value are written too (a score of exactly 0 is still there to read).
The other contracts' bodies (OpenRLHF's, vLLM's) are pydantic models, whose errors name the field's location.
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

from rewardline.services.http_face.errors import HttpError, field_error

M = TypeVar("M", bound=Message)
B = TypeVar("B", bound=BaseModel)
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)  # the app's client_max_size, for the 413 message


async def read_json(request: web.Request) -> Any:
    """The body as JSON; 413 when it is over the app's size limit, 400 when it is not JSON."""
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as e:
        raise HttpError(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"request body over the limit of {request.app[MAX_BODY_BYTES]} bytes (max_message_mb): {e.text}",
            413,
        ) from None
    if not body:
        raise field_error("empty request body: expected a JSON object")
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise field_error(f"request body is not valid JSON: {e}") from None


def parse_message(data: Any, message_type: type[M]) -> M:
    """A proto message from proto3 JSON; 400 with protobuf's message, which names the field."""
    if not isinstance(data, dict):
        raise field_error(f"expected a JSON object ({message_type.DESCRIPTOR.name}), got {type(data).__name__}")
    try:
        return json_format.ParseDict(data, message_type())
    except json_format.ParseError as e:
        raise field_error(f"invalid {message_type.DESCRIPTOR.name}: {e}") from None


def message_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def parse_model(data: Any, model: type[B]) -> B:
    """A pydantic model from JSON; 400 naming the first offending field (and how many others there are)."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = e.errors()
        first = errors[0]
        where = ".".join(str(p) for p in first["loc"]) or "(body)"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise field_error(f"{where}: {first['msg']}{more}", where) from None
