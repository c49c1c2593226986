"""What podshell uses of a TCP (or TLS) transport: more than C{ITransport}
promises, and exactly what Twisted's TCP and TLS transports provide."""

from __future__ import annotations

from typing import Protocol

from twisted.internet.interfaces import IAddress


class StreamTransport(Protocol):
    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def loseWriteConnection(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def registerProducer(self, producer: object, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def getPeer(self) -> IAddress: ...

    def getHost(self) -> IAddress: ...


def abort(transport: object) -> None:
    """Close at once, dropping what the peer has not read: for a peer that is
    gone, whose unread data would otherwise hold the connection open.  A
    transport that cannot abort (one carried in messages) closes as usual."""
    close = getattr(transport, "abortConnection", None) or getattr(transport, "loseConnection", None)
    if close is not None:
        close()
