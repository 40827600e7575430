"""Request bodies in, JSON out: every route reads and writes through here, so each bad body gets a 4xx naming the
field, never a 500.

The proto's messages travel as proto3 JSON through protobuf's own ``json_format`` (so the HTTP face and the proto
cannot drift): field names in lowerCamelCase on the way out, either spelling accepted on the way in, unknown fields
refused. Fields at their default value are written too (a score of exactly 0 is still there to read).
The other contracts' bodies (OpenRLHF's, vLLM's) are pydantic models, whose errors name the field's location.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

from rewardline.services.core import ScoringCore
from rewardline.services.http_face.errors import HttpError, field_error

M = TypeVar("M", bound=Message)
B = TypeVar("B", bound=BaseModel)
T = TypeVar("T")
MAX_BODY_BYTES = web.AppKey("max_body_bytes", int)  # the app's client_max_size, for the 413 message


async def read_parsed(request: web.Request, core: ScoringCore, parse: Callable[[Any], T]) -> tuple[T, int]:
    """The body decoded as JSON and given to ``parse``, and its size in bytes; 413 when it is over the app's size
    limit, 400 when it is not JSON or ``parse`` refuses it.

    Decoding and parsing run where the core renders a request of that size (``ScoringCore.render``: off the event
    loop when large), as for gRPC requests: decoding a 15 MB body on the event loop would delay every other
    request, gRPC's and health checks included, for as long."""
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
    return await core.render(len(body), functools.partial(_decode_and_parse, body, parse)), len(body)


def _decode_and_parse(body: bytes, parse: Callable[[Any], T]) -> T:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise field_error(f"request body is not valid JSON: {e}") from None
    return parse(data)


def parse_message(data: Any, message_type: type[M]) -> M:
    """A proto message from proto3 JSON; 400 with protobuf's message, which names the field.

    Long strings are set on the message after ``json_format`` has parsed the rest: it checks every string for
    unpaired surrogates with a regular expression that held the GIL for about a second per 12 MB (four clients
    posting 12 MB prompts: health p99 0.7-0.9 s on the gRPC port). Setting a string on the message refuses the same
    strings (a lone surrogate is no UTF-8) at the speed of an encoding."""
    if not isinstance(data, dict):
        raise field_error(f"expected a JSON object ({message_type.DESCRIPTOR.name}), got {type(data).__name__}")
    pulled: list[tuple[tuple[tuple[str, int | None], ...], str]] = []
    _pull_long_strings(data, message_type.DESCRIPTOR, (), pulled)
    try:
        message = json_format.ParseDict(data, message_type())
    except json_format.ParseError as e:
        raise field_error(f"invalid {message_type.DESCRIPTOR.name}: {e}") from None
    for path, text in pulled:
        target: Any = message
        for name, index in path[:-1]:
            target = getattr(target, name) if index is None else getattr(target, name)[index]
        try:
            setattr(target, path[-1][0], text)
        except (UnicodeError, ValueError, TypeError):
            where = ".".join(name if index is None else f"{name}[{index}]" for name, index in path)
            raise field_error(f"invalid {message_type.DESCRIPTOR.name}: {where} is no valid UTF-8") from None
    return message


LONG_STRING_CHARS = 64 * 1024


def _pull_long_strings(
    data: dict[str, Any],
    descriptor: Any,
    path: tuple[tuple[str, int | None], ...],
    out: list[tuple[tuple[tuple[str, int | None], ...], str]],
) -> None:
    """Replaces each long string of a singular string field (in ``data`` and the messages in it) by "", and
    records where it goes and what it is."""
    for key, value in data.items():
        field = descriptor.fields_by_camelcase_name.get(key) or descriptor.fields_by_name.get(key)
        if field is None:
            continue  # json_format names it as unknown
        if field.type == field.TYPE_STRING and not field.is_repeated:
            if isinstance(value, str) and len(value) > LONG_STRING_CHARS:
                data[key] = ""
                out.append(((*path, (field.name, None)), value))
        elif field.type == field.TYPE_MESSAGE and not field.message_type.GetOptions().map_entry:
            if field.is_repeated and isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, dict):
                        _pull_long_strings(item, field.message_type, (*path, (field.name, i)), out)
            elif not field.is_repeated and isinstance(value, dict):
                _pull_long_strings(value, field.message_type, (*path, (field.name, None)), out)


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
