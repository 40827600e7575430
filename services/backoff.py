"""Exponential backoff between attempts to reach something that went away (a service, a Triton model).

gRPC retries calls by its service config (client.py); this is for the loops that wait for a remote side's
health or readiness to come back, where each failed check doubles the wait up to a ceiling.
"""

from __future__ import annotations

import asyncio


class Backoff:
    """Delays ``initial``, ``initial * multiplier``, ... capped at ``maximum``; ``reset`` starts over."""

    def __init__(self, initial: float = 0.2, maximum: float = 5.0, multiplier: float = 2.0) -> None:
        if not 0 < initial <= maximum or multiplier < 1:
            raise ValueError(
                f"backoff needs 0 < initial <= maximum and multiplier >= 1, got {initial}, {maximum}, {multiplier}"
            )
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self._next = initial

    def next_delay(self) -> float:
        delay = self._next
        self._next = min(self._next * self.multiplier, self.maximum)
        return delay

    async def sleep(self) -> None:
        await asyncio.sleep(self.next_delay())

    def reset(self) -> None:
        self._next = self.initial
