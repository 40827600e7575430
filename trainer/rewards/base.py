"""The interface every reward source implements, and what flows through it.

A source is asynchronous and keyed by sample id: the trainer submits samples as the rollout engine finishes
them, and the source delivers one `SourceReward` per sample whenever it is ready, in any order. Everything
that makes a remote source reliable — batching onto a stream, reconnecting, resending what was not
answered — lives inside the source; the trainer only sees deliveries and availability changes.

The contract, for anyone adding a source (a Triton one, say):
- ``submit`` returns quickly (queue the work; never wait for the remote side in it);
- every submitted sample eventually gets a delivery: a score, or ``error`` for a sample that can never be
  scored (a transient failure is retried inside the source, not delivered);
- delivering a sample twice is harmless (the hub keeps the first), but should be rare;
- ``sink.set_available(name, False, reason)`` when the remote side goes away, ``True`` when it is back: the
  trainer logs it, exports it and waits;
- all methods run on the hub's event loop thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class ScoringSample:
    """One completion to score, with its prompt's reference answer and metadata (the JSONL record's columns)."""

    id: str
    prompt: str
    completion: str
    completion_ids: tuple[int, ...] = ()
    answer: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SourceReward:
    """One source's answer for one sample. ``std``/``out_of_distribution`` come from uncertainty-aware sources."""

    sample_id: str
    source: str
    score: float = 0.0
    std: float | None = None
    out_of_distribution: bool = False
    error: str | None = None


class RewardSink(Protocol):
    def deliver(self, reward: SourceReward) -> None: ...

    def set_available(self, source: str, available: bool, reason: str = "") -> None: ...


class RewardSource(Protocol):
    name: str

    async def start(self, sink: RewardSink) -> None: ...

    async def submit(self, samples: Sequence[ScoringSample]) -> None: ...

    async def close(self) -> None: ...
