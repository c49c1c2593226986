"""What every port-forward shares, whatever carries it: the connection to
the port inside the pod, and the words for its failure."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Protocol as TypingProtocol
from typing import cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from podshell.core.flow import Valve
from podshell.core.transports import StreamTransport

Connect = Callable[[int, IProtocolFactory], "Deferred[IProtocol]"]


class Relay(TypingProtocol):
    """Where a backend connection's bytes and end go."""

    def backendData(self, data: bytes) -> None: ...

    def backendEnded(self) -> None: ...


class Backend(Protocol):
    """A TCP connection to a port inside the pod."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.bytes_in = 0
        self.bytes_out = 0
        self.reader: IPushProducer | None = None  # registered while we may write
        self.on_closed: Callable[[], object] | None = None  # both directions are done
        self._ended = False
        self._read_done = False
        self._write_done = False

    @property
    def tcp(self) -> StreamTransport:
        assert self.transport is not None, "connected"
        return cast(StreamTransport, self.transport)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.bytes_in += len(data)
            self.transport.write(data)

    def halfClose(self) -> None:
        """The client has no more to send: FIN towards the pod, keep reading."""
        if self.transport is not None:
            # A transport with a producer waits for it before shutting down
            # writes; nothing more will be written, so let it (and its hold) go.
            if self.reader is not None:
                self.tcp.unregisterProducer()
                self.reader.stopProducing()
                self.reader = None
            self.tcp.loseWriteConnection()

    def dataReceived(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.relay.backendData(data)

    def readConnectionLost(self) -> None:
        self._read_done = True
        self._end()
        self._close_when_both_done()

    def writeConnectionLost(self) -> None:
        """The pod's side stopped reading: nothing more to deliver."""
        self._write_done = True
        self._close_when_both_done()

    def _close_when_both_done(self) -> None:
        """Twisted leaves a connection half-closed both ways open."""
        if self._read_done and self._write_done and self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._end()
        if self.on_closed is not None:
            self.on_closed()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            self.relay.backendEnded()


def open_backend(connect: Connect, port: int, relay: Relay, valve: Valve, key: Hashable) -> Deferred[Backend]:
    """Connect to C{port} in the pod.  The client is not read while the
    connection is being made, nor later while the pod does not read."""
    backend = Backend(relay)
    valve.hold(("connect", key))

    def connected(_: object) -> Backend:
        backend.reader = valve.producer(key)
        backend.tcp.registerProducer(backend.reader, True)
        return backend

    def done(result: object) -> object:
        valve.release(("connect", key))
        return result

    d = connect(port, Factory.forProtocol(lambda: backend)).addCallback(connected)
    d.addBoth(done)
    return d


def failure_text(port: int, pod: str, failure: Failure) -> str:
    return f"error forwarding port {port} to pod {pod}: {failure.getErrorMessage()}"
