"""A small cache of answers that go stale: each entry lives for the time it
was put with, and past C{size} entries the least recently used goes first,
so a flood of distinct keys (made-up tokens) costs bounded memory."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

from twisted.internet.interfaces import IReactorTime

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Expiring(Generic[K, V]):
    def __init__(self, clock: IReactorTime, size: int) -> None:
        self.clock = clock
        self.size = size
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        """The value, if it was put less than its time ago."""
        found = self._entries.get(key)
        if found is None:
            return None
        until, value = found
        if self.clock.seconds() >= until:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def put(self, key: K, value: V, ttl: float) -> None:
        if ttl <= 0 or self.size <= 0:
            return
        self._entries[key] = (self.clock.seconds() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
