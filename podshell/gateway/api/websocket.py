"""exec over WebSocket: the Kubernetes channel protocol (v5, v4, v1 and the
base64 variants) on wsproto.

wsproto rather than twisted.web.websocket (26.10): Twisted's resource cannot
negotiate a subprotocol, and client-go refuses a 101 that does not echo one
of the protocols it offered; wsproto is sans-IO and lets us answer with the
one we chose.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import cast

from twisted.internet.interfaces import IPushProducer, ITransport
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.handshake import H11Handshake
from zope.interface import implementer

from podshell.auth.audit import AuditedSession
from podshell.gateway.api import streams
from podshell.gateway.api.streams import StreamOptions
from podshell.node.spawner import ExitStatus, ProcessSession, ProcessSink
from podshell.transports import StreamTransport

log = Logger()
MAX_MESSAGE = 1 << 20
CLOSE_GRACE = 5.0


def accept(raw_headers: Sequence[tuple[bytes, bytes]], target: bytes, subprotocol: str) -> tuple[bytes, Connection]:
    """The 101 answer to a WebSocket upgrade, and the connection after it."""
    handshake = H11Handshake(ConnectionType.SERVER)
    handshake.initiate_upgrade_connection(list(raw_headers), target)
    data = handshake.send(AcceptConnection(subprotocol=subprotocol or None))
    connection = handshake.connection
    assert connection is not None
    return data, connection


@implementer(IPushProducer)
class ChannelSession(Protocol):
    """One exec (or attach) over the channel protocol: the WebSocket side is
    this protocol, the process side its L{ProcessSink}."""

    def __init__(
        self,
        ws: Connection,
        protocol: str,
        options: StreamOptions,
        start: Callable[[ProcessSink], ProcessSession],
        audit: AuditedSession,
        command: list[str],
        reactor,
    ) -> None:
        self.ws = ws
        self.protocol = protocol
        self.base64 = protocol in (streams.B64, streams.V4_B64)
        self.options = options
        self.start = start
        self.audit = audit
        self.command = command
        self.reactor = reactor
        self.process: ProcessSession | None = None
        self.resizes = streams.ResizeDecoder()
        self._message: list[bytes] = []
        self._size = 0
        self._done = False

    @property
    def tcp(self) -> StreamTransport:
        assert self.transport is not None, "connected"
        return cast(StreamTransport, self.transport)

    # WebSocket side.
    def connectionMade(self) -> None:
        first = streams.STDOUT if self.options.stdout else streams.STDERR if self.options.stderr else streams.ERROR
        self._send(first, b"")  # the "ready" marker real servers send
        self.process = self.start(self)
        self.tcp.registerProducer(self.process, True)  # a slow client pauses the process
        self.process.registerProducer(self, True)  # a process that does not read pauses the client

    def dataReceived(self, data: bytes) -> None:
        self.ws.receive_data(data)
        for event in self.ws.events():
            if isinstance(event, Message):
                self._size += len(event.data)
                if self._size > MAX_MESSAGE:
                    self._close(1009, "message too big")
                    return
                chunk = event.data.encode("latin-1") if isinstance(event, TextMessage) else event.data
                self._message.append(chunk)
                if event.message_finished:
                    payload = b"".join(self._message)
                    self._message, self._size = [], 0
                    self._received(payload)
            elif isinstance(event, Ping):
                self._write(self.ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                if self.ws.state is ConnectionState.REMOTE_CLOSING:
                    self._write(self.ws.send(event.response()))
                assert self.transport is not None
                self.transport.loseConnection()

    def _received(self, payload: bytes) -> None:
        if not payload or self.process is None:
            return
        if self.base64:
            channel = payload[0] - ord("0")
            try:
                data = base64.b64decode(payload[1:], validate=True)
            except ValueError:
                self._close(1007, "bad base64 payload")
                return
        else:
            channel, data = payload[0], payload[1:]
        if channel == streams.STDIN and self.options.stdin:
            self.process.write(data)
        elif channel == streams.RESIZE:
            try:
                for size in self.resizes.feed(data):
                    self.process.resize(size)
            except ValueError:
                self._close(1007, "bad resize message")
        elif channel == streams.CLOSE and self.protocol == streams.V5:
            if len(data) != 1 or data[0] > streams.RESIZE:
                self._close(1002, "bad close message")
            elif data[0] == streams.STDIN:
                self.process.closeStdin()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.process is not None and self.process.status is None:
            self.process.hangup()
            self.audit.end("client went away", self.process.bytes_in, self.process.bytes_out)

    # Process side.
    def outReceived(self, data: bytes) -> None:
        self._send(streams.STDOUT, data)

    def errReceived(self, data: bytes) -> None:
        self._send(streams.STDERR if self.options.stderr else streams.STDOUT, data)

    def processEnded(self, status: ExitStatus) -> None:
        assert self.process is not None
        self.audit.end(str(status), self.process.bytes_in, self.process.bytes_out)
        payload = streams.final_status(status, self.command, self.protocol)
        if payload:
            self._send(streams.ERROR, payload)
        self._close(1000, "")

    # Output.
    def _send(self, channel: int, data: bytes) -> None:
        if self.base64:
            self._write(self.ws.send(TextMessage(data=chr(ord("0") + channel) + base64.b64encode(data).decode())))
        else:
            self._write(self.ws.send(BytesMessage(data=bytes((channel,)) + data)))

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self._done:
            self.transport.write(data)

    def _close(self, code: int, reason: str) -> None:
        """Close with a status code (kubectl takes only 1000 as a clean end),
        then give the client a moment to answer before dropping TCP."""
        if self._done:
            return
        if self.ws.state is ConnectionState.OPEN:
            self._write(self.ws.send(CloseConnection(code=code, reason=reason)))
        self._done = True
        transport: ITransport | None = self.transport
        if transport is not None:
            self.reactor.callLater(CLOSE_GRACE, transport.loseConnection)
            if code != 1000:
                transport.loseConnection()

    # IPushProducer: stop reading the client while the process does not read.
    def pauseProducing(self) -> None:
        self.tcp.pauseProducing()

    def resumeProducing(self) -> None:
        self.tcp.resumeProducing()

    def stopProducing(self) -> None:
        """The process's stdin is gone; its end arrives through processEnded."""
