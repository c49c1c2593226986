"""SSH channels with flow control both ways, and channels joined to TCP
connections inside a pod (``ssh -L`` and ``ssh -R``).

Conch's own forwarding channels lose half-close and buffer without bound;
these do neither:

  - towards the client: when the client's window is full, or the connection's
    own send buffer is (L{PodConnection} is the producer for the client's TCP
    connection), the source (a process or a TCP connection) is paused;
  - from the client: the channel is the producer of what it writes into the
    destination; when the destination stops reading, the channel stops
    granting window (L{PodConnection.adjustWindow}) until it resumes;
  - EOF is sent after buffered data, never before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from twisted.conch.ssh.channel import SSHChannel
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from podshell.core.addresses import host_port
from podshell.core.contracts import Session
from podshell.core.transports import StreamTransport
from podshell.core.twisted_private import log_through
from podshell.gateway.ssh.logs import conch_logger

if TYPE_CHECKING:
    from podshell.gateway.ssh.connection import PodConnection

WINDOW = 2 * 1024 * 1024  # like OpenSSH: throughput is window / round trip
PACKET = 32 * 1024


@implementer(IPushProducer)
@log_through(conch_logger)
class PodChannel(SSHChannel):
    """A channel that flushes before EOF and can hold back the client."""

    inboundPaused = False
    _eofPending = False

    def __init__(self, **kw: Any) -> None:
        kw.setdefault("localWindow", WINDOW)
        kw.setdefault("localMaxPacket", PACKET)
        super().__init__(**kw)

    # Towards the client: the source runs while the client's window is open
    # and the connection is not holding everyone back.
    def pauseSource(self) -> None:
        """Stop reading what goes to the client."""

    def resumeSource(self) -> None:
        """Read what goes to the client again."""

    def sourceStarted(self) -> None:
        """A source that starts while the connection holds everyone back waits too."""
        if self.connection.sendingPaused:
            self.pauseSource()

    def stopWriting(self) -> None:
        self.pauseSource()

    def startWriting(self) -> None:
        if not self.connection.sendingPaused:
            self.resumeSource()

    def sendEOFWhenDrained(self) -> None:
        self._eofPending = True
        self._drain()

    def addWindowBytes(self, data: int) -> None:
        super().addWindowBytes(data)
        self._drain()

    def _drain(self) -> None:
        if self._eofPending and not self.buf and not self.extBuf:
            self._eofPending = False
            self.connection.sendEOF(self)

    def loseConnection(self) -> None:
        """Close once buffered data is out, with the EOF owed before it."""
        self.closing = 1
        if not self.buf and not self.extBuf:
            self._drain()
            self.connection.sendClose(self)

    @property
    def connection(self) -> PodConnection:
        assert self.conn is not None, "the channel is open"
        return cast("PodConnection", self.conn)

    @property
    def peer(self) -> str:
        transport = self.connection.transport
        assert transport is not None and transport.transport is not None
        return host_port(transport.transport.getPeer())

    # IPushProducer, for what the channel writes into its destination.
    def pauseProducing(self) -> None:
        self.inboundPaused = True

    def resumeProducing(self) -> None:
        if self.inboundPaused:
            self.inboundPaused = False
            if self.conn is not None and self in self.conn.channelsToRemoteChannel:
                self.conn.adjustWindow(self, self.localWindowSize - self.localWindowLeft)

    def stopProducing(self) -> None:
        """The destination is gone (a process that exited, a closed socket);
        its owner ends the channel when it sees that end, with its status."""


@implementer(IHalfCloseableProtocol)
class TCPPipe(Protocol):
    """The TCP side of a forwarding channel."""

    channel: StreamChannel | None = None
    _readDone = False
    _writeDone = False

    @property
    def tcp(self) -> StreamTransport:
        assert self.transport is not None, "connected"
        return cast(StreamTransport, self.transport)

    def connectionMade(self) -> None:
        if self.channel is None:
            self.tcp.pauseProducing()  # until the channel exists (ssh -R)

    def attach(self, channel: StreamChannel) -> None:
        self.channel = channel
        self.tcp.registerProducer(channel, True)
        self.tcp.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        assert self.channel is not None
        self.channel.bytes_out += len(data)
        self.channel.write(data)

    def readConnectionLost(self) -> None:
        self._readDone = True
        if self.channel is not None:
            self.channel.sendEOFWhenDrained()
        self._closeWhenBothDone()

    def writeConnectionLost(self) -> None:
        """The destination closed its reading side: nothing more to deliver."""
        self._writeDone = True
        self._closeWhenBothDone()

    def _closeWhenBothDone(self) -> None:
        """Twisted leaves a connection half-closed both ways open: closing it
        is what ends the channel (CHANNEL_CLOSE after the EOF owed)."""
        if self._readDone and self._writeDone:
            self.tcp.loseConnection()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.channel is not None:
            self.channel.tcpClosed()


class StreamChannel(PodChannel):
    """A channel joined to a TCP connection in a pod."""

    def __init__(self, pipe: TCPPipe, audit: Session, **kw: Any) -> None:
        super().__init__(**kw)
        self.pipe = pipe
        self.audit = audit
        self.bytes_in = 0
        self.bytes_out = 0
        self._tcpDone = False

    def channelOpen(self, specificData: bytes) -> None:
        self.pipe.attach(self)
        self.sourceStarted()
        self.audit.serve(self)

    # Door: a forwarded connection has no terminal; stopping it closes both sides.
    def moved(self) -> tuple[int, int]:
        return self.bytes_in, self.bytes_out

    def tell(self, line: str) -> None:
        """A forwarded connection has nobody to read a line."""

    def stop(self, line: str, status: str) -> None:
        self.audit.end(status, self.bytes_in, self.bytes_out)
        self.pipe.tcp.loseConnection()
        self.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.pipe.tcp.write(data)

    def eofReceived(self) -> None:
        # A transport with a producer waits for it before shutting down writes.
        self.pipe.tcp.unregisterProducer()
        self.pipe.tcp.loseWriteConnection()

    def closeReceived(self) -> None:
        self.pipe.tcp.loseConnection()
        super().closeReceived()

    def closed(self) -> None:
        if not self._tcpDone:
            self.pipe.tcp.loseConnection()
        self.audit.end("closed", self.bytes_in, self.bytes_out)

    def tcpClosed(self) -> None:
        self._tcpDone = True
        self.loseConnection()

    def pauseSource(self) -> None:
        self.pipe.tcp.pauseProducing()

    def resumeSource(self) -> None:
        if not self._tcpDone:
            self.pipe.tcp.resumeProducing()
