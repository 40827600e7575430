"""Checks of incoming requests, before any work is queued.

A request that can never succeed is refused here with INVALID_ARGUMENT and a message naming the sample, so
that a bad sample never reaches the batcher where it could spoil a batch shared with other requests.
"""

from __future__ import annotations

from collections.abc import Sequence

from rewardline.services.api import pb
from rewardline.services.errors import ServiceError, invalid_argument

KNOWN_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


def sample_label(sample: pb.Sample, index: int) -> str:
    return f"sample {sample.id!r}" if sample.id else f"sample at index {index}"


def check_sample(sample: pb.Sample, index: int, allow_empty_response: bool = False) -> None:
    """Raises INVALID_ARGUMENT unless ``sample`` has an id and exactly one well-formed input form.

    An empty (or blank) response is refused unless ``allow_empty_response``: services allow it by default
    (``ServeConfig.empty_response``), since a policy that ends at once produces one and a trainer must score it.
    """
    label = sample_label(sample, index)
    if not sample.id:
        raise invalid_argument(f"{label}: missing id")
    if sample.messages:
        if sample.prompt or sample.response:
            raise invalid_argument(f"{label}: give either prompt/response or messages, not both")
        for i, message in enumerate(sample.messages):
            if message.role not in KNOWN_ROLES:
                raise invalid_argument(f"{label}: messages[{i}] has unknown role {message.role!r}")
        last = sample.messages[-1]
        if last.role != "assistant":
            raise invalid_argument(
                f"{label}: the last message must be the assistant's response, got role {last.role!r}"
            )
        if not allow_empty_response and not last.content.strip():
            raise invalid_argument(f"{label}: empty response (the last message has no content)")
        return
    if not allow_empty_response and not sample.response.strip():
        raise invalid_argument(f"{label}: empty response")


def check_request(samples: Sequence[pb.Sample], max_samples: int, allow_empty_response: bool = False) -> None:
    """Whole-request checks for Score: at least one and at most ``max_samples`` samples, ids unique."""
    if not samples:
        raise invalid_argument("empty request: no samples")
    if len(samples) > max_samples:
        raise invalid_argument(f"too many samples: {len(samples)} > max_samples_per_request={max_samples}")
    seen: set[str] = set()
    for i, sample in enumerate(samples):
        check_sample(sample, i, allow_empty_response)
        if sample.id in seen:
            raise invalid_argument(f"duplicate sample id {sample.id!r} (index {i})")
        seen.add(sample.id)


__all__ = ["check_request", "check_sample", "sample_label", "ServiceError"]
