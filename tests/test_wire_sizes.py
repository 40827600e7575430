"""wire_sizes.py reads a ScoreRequest's text sizes from its wire bytes: checked against protobuf's own parser on
generated requests and on near-valid garbage (the strategies of tests/fuzzing.py)."""

from __future__ import annotations

from fuzzing import raw_bytes, score_requests
from hypothesis import HealthCheck, given, settings

from rewardline.services.api import pb
from rewardline.services.wire_sizes import SampleSizes, sample_sizes

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def expected(request: pb.ScoreRequest) -> list[SampleSizes]:
    out = []
    for s in request.samples:
        both = bool(s.messages) and bool(s.prompt or s.response)
        size = len(s.messages[-1].content.encode()) if s.messages else len(s.response.encode())
        out.append(SampleSizes(s.id.encode()[:1024].decode("utf-8", "replace"), 0 if both else size))
    return out


@SETTINGS
@given(score_requests)
def test_sizes_are_those_of_the_parsed_request(request: pb.ScoreRequest) -> None:
    assert sample_sizes(request.SerializeToString()) == expected(request)


@SETTINGS
@given(raw_bytes(score_requests))
def test_garbage_gives_no_sizes_or_the_parsers(data: bytes) -> None:
    sizes = sample_sizes(data)
    try:
        parsed = pb.ScoreRequest.FromString(data)
    except Exception:
        return  # the parser refuses them: whatever the sizes, the request is refused as malformed after them
    assert sizes is None or sizes == expected(parsed)


def test_a_cut_message_gives_no_sizes() -> None:
    data = pb.ScoreRequest(samples=[pb.Sample(id="a", prompt="p", response="r" * 300)]).SerializeToString()
    assert sample_sizes(data) == [SampleSizes("a", 300)]
    assert sample_sizes(data[:-1]) is None
    assert sample_sizes(data + b"\x0a") is None  # a field key with no length after it


def test_a_conversation_counts_its_last_message_and_other_fields_are_skipped() -> None:
    sample = pb.Sample(
        id="c",
        messages=[pb.Message(role="user", content="q" * 70), pb.Message(role="assistant", content="é" * 10)],
        reference="x" * 500,
    )
    data = pb.ScoreRequest(samples=[sample, pb.Sample(response="y")]).SerializeToString()
    assert sample_sizes(data) == [SampleSizes("c", 20), SampleSizes("", 1)]
