"""Flow control where one connection carries many streams.

A Twisted transport has one producer slot and one reader to pause; a
multiplexed connection (SPDY port-forward, an exec with three streams) has
many sources writing into it and many destinations it writes to.  These two
small pieces keep "a slow reader never makes memory grow" true there.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


class Pausable(Protocol):
    """Anything that can be paused: a transport, a process, a producer."""

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


@implementer(IPushProducer)
class FanOut:
    """Register this as a transport's producer: when the transport's buffer
    is full, every source writing into it is paused, new ones included."""

    def __init__(self) -> None:
        self.paused = False
        self._sources: list[Pausable] = []

    def add(self, source: Pausable) -> None:
        self._sources.append(source)
        if self.paused:
            source.pauseProducing()

    def registerProducer(self, producer: Pausable, streaming: bool) -> None:
        """So a session can treat this as the transport it writes into."""
        self.add(producer)

    def remove(self, source: Pausable) -> None:
        if source in self._sources:
            self._sources.remove(source)

    def pauseProducing(self) -> None:
        self.paused = True
        for source in list(self._sources):
            source.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        for source in list(self._sources):
            source.resumeProducing()

    def stopProducing(self) -> None:
        self._sources.clear()


class Valve:
    """Stops reading a connection while any destination asks (head-of-line,
    as spdystream does: there are no per-stream windows to do better)."""

    def __init__(self, reader: Pausable) -> None:
        self._reader = reader
        self._holds: set[Hashable] = set()

    def hold(self, key: Hashable) -> None:
        if not self._holds:
            self._reader.pauseProducing()
        self._holds.add(key)

    def release(self, key: Hashable) -> None:
        if key in self._holds:
            self._holds.discard(key)
            if not self._holds:
                self._reader.resumeProducing()

    def producer(self, key: Hashable) -> IPushProducer:
        """A producer to register with one destination: its pauses hold the valve."""
        return _Hold(self, key)


@implementer(IPushProducer)
class _Hold:
    def __init__(self, valve: Valve, key: Hashable) -> None:
        self.valve = valve
        self.key = key

    def pauseProducing(self) -> None:
        self.valve.hold(self.key)

    def resumeProducing(self) -> None:
        self.valve.release(self.key)

    def stopProducing(self) -> None:
        self.valve.release(self.key)
