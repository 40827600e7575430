"""The sizes of a Score request's texts, read from its wire bytes before it is parsed.

A request whose response alone cannot fit the model is refused whatever else it holds, and its size says so: a
text of ``n`` UTF-8 bytes has at least ``n / 4`` characters. Learning that from a parsed message cost a parse and
a Python string of the whole text, both holding the GIL (about 6 ms for a 15 MB response on this project's
2-core machines), which every other request and the forward pass waited behind: bench/reliability.py stall, four
clients sending 15 MB responses back to back. The protobuf wire format gives every text's length in the prefix
before it, so reading the prefixes finds the sizes in microseconds and copies nothing.

Only the length prefixes are read. Bytes that are not a well-formed message give None, and the parser, which
checks everything, then says what is wrong with them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from rewardline.services.api import pb

_SAMPLES = pb.ScoreRequest.DESCRIPTOR.fields_by_name["samples"].number
_SAMPLE = {name: pb.Sample.DESCRIPTOR.fields_by_name[name].number for name in ("id", "prompt", "response", "messages")}
_CONTENT = pb.Message.DESCRIPTOR.fields_by_name["content"].number
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5
# Only the start of an id is decoded: it names the sample in a message, which quotes at most that much of it.
_ID_BYTES = 1024


@dataclass(frozen=True)
class SampleSizes:
    """What the wire says of one sample: its id (for messages) and the size of its response in UTF-8 bytes (the
    last message's content, for a conversation)."""

    id: str
    response_bytes: int


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def length_delimited_fields(data: memoryview) -> Iterator[tuple[int, memoryview]]:
    """The (field number, payload) of every length-delimited field of a message, in order; the other fields are
    skipped. ValueError where the bytes are not a well-formed message (groups included: no message here has one)."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire_type == _LENGTH_DELIMITED:
            size, pos = _varint(data, pos)
            if pos + size > end:
                raise ValueError("a field runs past the end of its message")
            yield number, data[pos : pos + size]
            pos += size
        elif wire_type == _VARINT:
            _, pos = _varint(data, pos)
        elif wire_type in (_FIXED64, _FIXED32):
            pos += 8 if wire_type == _FIXED64 else 4
            if pos > end:
                raise ValueError("a field runs past the end of its message")
        else:
            raise ValueError(f"wire type {wire_type}")


def sample_sizes(data: bytes) -> list[SampleSizes] | None:
    """The sizes of a serialized ScoreRequest's samples, in order; None when the bytes are not well-formed.

    A sample that gives both a response and messages (which validation refuses) is given response size 0: what
    it gets told is the parser's business, not a size's."""
    try:
        out: list[SampleSizes] = []
        for number, sample in length_delimited_fields(memoryview(data)):
            if number != _SAMPLES:
                continue
            sample_id = b""
            response = last_content = 0
            has_plain = has_messages = False
            for field, value in length_delimited_fields(sample):
                if field == _SAMPLE["id"]:
                    sample_id = bytes(value[:_ID_BYTES])
                elif field in (_SAMPLE["prompt"], _SAMPLE["response"]):
                    has_plain = True
                    if field == _SAMPLE["response"]:
                        response = len(value)
                elif field == _SAMPLE["messages"]:
                    has_messages = True
                    last_content = 0
                    for part, text in length_delimited_fields(value):
                        if part == _CONTENT:
                            last_content = len(text)
            size = 0 if has_plain and has_messages else (last_content if has_messages else response)
            out.append(SampleSizes(sample_id.decode("utf-8", "replace"), size))
        return out
    except ValueError:
        return None
