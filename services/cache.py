"""A bounded cache of recent rewards, keyed by model revision and the exact tokens the model read.

GRPO samples several responses per prompt and often gets the same response twice; a repeat costs a hash
instead of a forward pass. Keys hash the token ids (not the text) so that two renderings that tokenize the
same share an entry, and they include the revision so a reloaded model never answers from old weights.
"""

from __future__ import annotations

import hashlib
from array import array
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


def cache_key(revision: str, token_ids: tuple[int, ...], extra: str = "") -> bytes:
    digest = hashlib.blake2b(digest_size=16)
    digest.update(revision.encode())
    digest.update(extra.encode())
    digest.update(array("i", token_ids).tobytes())
    return digest.digest()


class LRUCache(Generic[V]):
    """Least-recently-used map holding at most ``capacity`` entries (0 turns it off)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[bytes, V] = OrderedDict()

    def get(self, key: bytes) -> V | None:
        if self.capacity <= 0:
            return None
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes, value: V) -> None:
        if self.capacity <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
