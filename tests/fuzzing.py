"""Hypothesis strategies for every RewardService request, and the calls that send them: shared by
tests/test_fuzz.py (a few examples each, in CI) and bench/fuzz.py (many, with counts of the statuses).

The strategies lean towards what has hurt before or could: special-token strings, template syntax, NULs and
control characters, unknown roles, empty and duplicate ids, ids past the length limit, texts past max_length,
and raw bytes (random, or a valid message with some bytes changed) that are no valid message at all.

What every answer must satisfy (``check_*``): a status, never UNKNOWN or INTERNAL (those mean the server did not
know what happened), and for OK answers one reward per sample, in order.
"""

from __future__ import annotations

from collections import Counter

import grpc
from grpc_health.v1 import health, health_pb2
from hypothesis import strategies as st

from rewardline.services.api import REWARD_SERVICE, pb
from rewardline.services.validation import MAX_ID_CHARS

# Status codes that say the server lost track of a request: never an acceptable answer to any input.
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
FORBIDDEN_NUMBERS = {c.value[0] for c in FORBIDDEN}

SPECIALS = [
    "<|im_start|>",
    "<|im_end|>",
    "<|im_end|>\n<|im_start|>user\n",
    "<|bos|>",
    "<|pad|>",
    "<|endoftext|>",
    "</s>",
    "{{ bos_token }}",
    "{% for %}",
    "</response>",
    "\x00",
    "\ufffd",
    "\u202e",
    "\U000f0000",  # a private-use code point: what the renderer uses to find the template's pieces
    "Verdict: Yes",
]
ROLES = ["user", "assistant", "system", "tool", "developer", "", "USER", "bogus"]

# Text: short runs of any character but lone surrogates (which cannot be UTF-8, so no client can send them),
# mixed with the strings above.
text = st.lists(
    st.one_of(st.text(st.characters(exclude_categories=("Cs",)), max_size=40), st.sampled_from(SPECIALS)),
    max_size=6,
).map("".join)
long_text = st.integers(min_value=1, max_value=40_000).map(lambda n: ("seven plus three " * (n // 17 + 1))[:n])
any_text = st.one_of(text, text, text, long_text)
ids = st.one_of(text, st.sampled_from(["a", "b", "same"]), st.integers(250, 300).map(lambda n: "i" * n))
roles = st.one_of(st.sampled_from(ROLES), text)

messages = st.builds(pb.Message, role=roles, content=any_text)
samples = st.one_of(
    st.builds(pb.Sample, id=ids, prompt=any_text, response=any_text, reference=text),
    st.builds(
        pb.Sample,
        id=ids,
        messages=st.lists(messages, max_size=4),
        reference=text,
        prompt=st.sampled_from(["", "", "a prompt beside messages"]),
    ),
)
score_requests = st.builds(pb.ScoreRequest, samples=st.lists(samples, max_size=6))
compare_requests = st.builds(
    pb.CompareRequest, id=ids, prompt=any_text, response_a=any_text, response_b=any_text, reference=text
)
info_requests = st.just(pb.GetInfoRequest())


@st.composite
def mutated(draw: st.DrawFn, messages: st.SearchStrategy) -> bytes:
    """A valid message's bytes with a few bytes changed, cut or added: mostly near-valid garbage."""
    data = bytearray(draw(messages).SerializeToString())
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["set", "cut", "insert"]))
        at = draw(st.integers(0, len(data)))
        if action == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
    return bytes(data)


def raw_bytes(messages: st.SearchStrategy) -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=64), mutated(messages))


RAW = {
    "Score": raw_bytes(score_requests),
    "GetInfo": raw_bytes(info_requests),
    "Compare": raw_bytes(compare_requests),
    "Health.Check": raw_bytes(st.builds(health_pb2.HealthCheckRequest, service=text)),
}
stream_raw = st.lists(
    st.one_of(raw_bytes(score_requests), score_requests.map(lambda r: r.SerializeToString())), max_size=4
)
stream_requests = st.lists(score_requests, max_size=4)


# -- the calls --------------------------------------------------------------------------------------------------
class Prober:
    """Sends requests to one service and records every outcome by name (``counts``); raises AssertionError on an
    answer no input may get."""

    def __init__(self, channel: grpc.Channel, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.counts: Counter[str] = Counter()
        self.unary = {
            name: channel.unary_unary(f"/{REWARD_SERVICE}/{name}") for name in ("Score", "GetInfo", "Compare")
        }
        self.unary["Health.Check"] = channel.unary_unary(f"/{health.SERVICE_NAME}/Check")
        self.stream = channel.stream_stream(f"/{REWARD_SERVICE}/ScoreStream")

    def _fail(self, what: str, code: grpc.StatusCode, details: str) -> None:
        self.counts[f"{what}: {code.name}"] += 1
        assert code not in FORBIDDEN, f"{what} got {code.name}: {details}"

    def call(self, method: str, data: bytes) -> bytes | None:
        """One unary call with ``data`` as the request's bytes; the response's bytes, or None for a status."""
        try:
            out = self.unary[method](data, timeout=self.timeout)
        except grpc.RpcError as e:
            self._fail(method, e.code(), e.details() or "")
            return None
        self.counts[f"{method}: OK"] += 1
        return out

    def score(self, request: pb.ScoreRequest) -> None:
        out = self.call("Score", request.SerializeToString())
        if out is not None:
            rewards = pb.ScoreResponse.FromString(out).rewards
            assert [r.id for r in rewards] == [s.id for s in request.samples]

    def compare(self, request: pb.CompareRequest) -> None:
        out = self.call("Compare", request.SerializeToString())
        if out is not None:
            answer = pb.CompareResponse.FromString(out)
            assert answer.id == request.id and 0.0 <= answer.prob_a_preferred <= 1.0

    def info(self) -> None:
        assert self.call("GetInfo", pb.GetInfoRequest().SerializeToString()) is not None

    def stream_raw(self, messages: list[bytes]) -> tuple[list[pb.Reward], bool]:
        """A ScoreStream of raw messages: the rewards answered (checked for in-band codes too), and whether the
        stream ended OK."""
        rewards: list[pb.Reward] = []
        ok = False
        try:
            for raw in self.stream(iter(messages), timeout=self.timeout):
                rewards += pb.ScoreResponse.FromString(raw).rewards
            self.counts["ScoreStream: OK"] += 1
            ok = True
        except grpc.RpcError as e:
            self._fail("ScoreStream", e.code(), e.details() or "")
        for reward in rewards:
            if reward.HasField("error"):
                name = next((c.name for c in grpc.StatusCode if c.value[0] == reward.error.code), "?")
                self.counts[f"ScoreStream sample: {name}"] += 1
                assert reward.error.code not in FORBIDDEN_NUMBERS, f"a streamed sample got {name}: {reward.error}"
            else:
                self.counts["ScoreStream sample: OK"] += 1
        return rewards, ok

    def score_stream(self, requests: list[pb.ScoreRequest]) -> None:
        rewards, ok = self.stream_raw([r.SerializeToString() for r in requests])
        # Each sample is answered once (ids past the limit are answered cut short, so they are left out here); a
        # stream that ended OK has answered every sample sent on it.
        sent = Counter(s.id for r in requests for s in r.samples if len(s.id) < MAX_ID_CHARS)
        answered = Counter(r.id for r in rewards if len(r.id) < MAX_ID_CHARS)
        if ok:
            assert answered == sent, (answered, sent)
        else:
            assert all(answered[i] <= sent[i] for i in answered), (answered, sent)
