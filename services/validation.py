"""Checks of incoming requests, before any work is queued.

A request that can never succeed is refused here with INVALID_ARGUMENT and a message naming the sample, so
that a bad sample never reaches the batcher where it could spoil a batch shared with other requests.

Text from the request is quoted in messages only in part (``quoted``): a status message travels in a header,
and a client refuses headers over a few KB, which once turned a refusal of a 100 KB id into RESOURCE_EXHAUSTED.
Ids themselves are limited to ``MAX_ID_CHARS``: an id is echoed on every reward and kept while its sample waits.
"""

from __future__ import annotations

from collections.abc import Sequence

from rewardline.services.api import pb
from rewardline.services.errors import ServiceError, invalid_argument

KNOWN_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})
MAX_ID_CHARS = 256
QUOTED_CHARS = 64


def quoted(text: str, limit: int = QUOTED_CHARS) -> str:
    """``repr(text)`` for a message, cut to about ``limit`` characters (the cut says how long the whole was)."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}... ({len(text)} characters)"


def sample_label(sample: pb.Sample, index: int) -> str:
    return label_of(sample.id, index)


def label_of(sample_id: str, index: int) -> str:
    return f"sample {quoted(sample_id)}" if sample_id else f"sample at index {index}"


def check_sample(sample: pb.Sample, index: int, allow_empty_response: bool = False) -> None:
    """Raises INVALID_ARGUMENT unless ``sample`` has an id and exactly one well-formed input form.

    An empty (or blank) response is refused unless ``allow_empty_response``: services allow it by default
    (``ServeConfig.empty_response``), since a policy that ends at once produces one and a trainer must score it.
    """
    label = sample_label(sample, index)
    if not sample.id:
        raise invalid_argument(f"{label}: missing id")
    if len(sample.id) > MAX_ID_CHARS:
        raise invalid_argument(f"{label}: the id is longer than {MAX_ID_CHARS} characters")
    if sample.messages:
        if sample.prompt or sample.response:
            raise invalid_argument(f"{label}: give either prompt/response or messages, not both")
        for i, message in enumerate(sample.messages):
            if message.role not in KNOWN_ROLES:
                raise invalid_argument(f"{label}: messages[{i}] has unknown role {quoted(message.role)}")
        last = sample.messages[-1]
        if last.role != "assistant":
            raise invalid_argument(
                f"{label}: the last message must be the assistant's response, got role {quoted(last.role)}"
            )
        if not allow_empty_response and not last.content.strip():
            raise invalid_argument(f"{label}: empty response (the last message has no content)")
        return
    if not allow_empty_response and not sample.response.strip():
        raise invalid_argument(f"{label}: empty response")


def check_size(samples: Sequence[pb.Sample], max_samples: int) -> None:
    """The checks that need no look inside a sample: at least one, at most ``max_samples``."""
    if not samples:
        raise invalid_argument("empty request: no samples")
    if len(samples) > max_samples:
        raise invalid_argument(f"too many samples: {len(samples)} > max_samples_per_request={max_samples}")


def check_request(samples: Sequence[pb.Sample], max_samples: int, allow_empty_response: bool = False) -> None:
    """Whole-request checks for Score: at least one and at most ``max_samples`` samples, ids unique."""
    check_size(samples, max_samples)
    seen: set[str] = set()
    for i, sample in enumerate(samples):
        check_sample(sample, i, allow_empty_response)
        if sample.id in seen:
            raise invalid_argument(f"duplicate sample id {quoted(sample.id)} (index {i})")
        seen.add(sample.id)


__all__ = ["check_request", "check_sample", "check_size", "quoted", "sample_label", "ServiceError", "MAX_ID_CHARS"]
