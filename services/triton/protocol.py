"""The tensors rewardline exchanges with a Triton-hosted classifier, and Triton's errors as gRPC statuses.

One definition for every caller (the service's ``triton`` backend, the trainer's Triton reward source, the
benchmark), matching deploy/triton/model.py: ``input_ids`` and ``attention_mask`` INT64 [batch, length],
right-padded; ``logits`` FP32 [batch, num_outputs], raw.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
import numpy as np

from rewardline.services.errors import ServiceError

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
LOGITS = "logits"
MAX_MESSAGE_BYTES = 2**31 - 1

# Triton down, its model unloaded or still loading: the caller should retry (elsewhere or later).
_UNAVAILABLE = {"UNAVAILABLE", "NOT_FOUND", "CANCELLED", "ABORTED"}
_BY_NAME = {
    "INVALID_ARGUMENT": grpc.StatusCode.INVALID_ARGUMENT,
    "OUT_OF_RANGE": grpc.StatusCode.INVALID_ARGUMENT,
    "FAILED_PRECONDITION": grpc.StatusCode.INVALID_ARGUMENT,
    "RESOURCE_EXHAUSTED": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "DEADLINE_EXCEEDED": grpc.StatusCode.DEADLINE_EXCEEDED,
}


def channel_args(max_reconnect_backoff_ms: int = 1000) -> list[tuple[str, int]]:
    """gRPC channel options for a Triton client.

    gRPC's default reconnect backoff grows to two minutes, so a Triton that was down for a while would be
    noticed long after it came back; capping it at a second lets readiness follow Triton closely.
    """
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", max_reconnect_backoff_ms),
    ]


def pad_batch(batch: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """``input_ids`` right-padded with ``pad_id`` and its ``attention_mask``, both int64 [len(batch), longest]."""
    longest = max(len(ids) for ids in batch)
    input_ids = np.full((len(batch), longest), pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(batch), longest), dtype=np.int64)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def status_name(error: Exception) -> str:
    """The gRPC status name tritonclient reports (``"StatusCode.UNAVAILABLE"`` -> ``"UNAVAILABLE"``)."""
    status = getattr(error, "status", lambda: None)() or ""
    return str(status).rsplit(".", 1)[-1].upper()


def status_code(error: Exception) -> grpc.StatusCode:
    """The status our client should see for a failed Triton call."""
    name = status_name(error)
    if name in _UNAVAILABLE:
        return grpc.StatusCode.UNAVAILABLE
    return _BY_NAME.get(name, grpc.StatusCode.INTERNAL)


def service_error(error: Exception, url: str, model: str) -> ServiceError:
    """A tritonclient error as the ServiceError the servicer turns into this status, naming Triton."""
    message = getattr(error, "message", lambda: str(error))() or str(error)
    code = status_code(error)
    if code is grpc.StatusCode.UNAVAILABLE:
        return ServiceError(code, f"Triton at {url} cannot serve model {model!r} now: {message}")
    return ServiceError(code, f"Triton model {model!r} at {url}: {message}")
