"""The client side of a streaming WebSocket: the handshake on wsproto, then
the same L{WebSocketEndpoint} the API serves with; and L{ChannelProcess},
a command or attachment at the other end of a channel stream, as front doors
see any process.

Two peers use it: a node agent (a gateway's stream to it, L{podshell.gateway})
and a CRI runtime's streaming server (attach to a container's own stdio,
L{podshell.node.runtime.cri}).  Only what they say differently is theirs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Protocol as TypingProtocol

from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError

from podshell.core.addresses import set_keepalive, set_no_delay
from podshell.core.contracts import Sink
from podshell.core.flow import Pausable
from podshell.core.process import ExitStatus, WindowSize, signal_name, signal_number
from podshell.core.transports import StreamTransport
from podshell.kube.websocket import MessageApp, WebSocketEndpoint
from podshell.protocols import channels
from podshell.protocols import remotecommand as rc

LOST = 255  # the exit status of a command whose stream went away, as ssh reports a lost connection
MAX_REJECTION = 64 * 1024


class ChannelStream(TypingProtocol):
    """What a channel stream's app sends on: a WebSocket endpoint, or the
    streams of a SPDY connection (L{podshell.kube.spdyclient})."""

    @property
    def tcp(self) -> StreamTransport: ...

    def send(self, message: bytes) -> None: ...

    def close(self, code: int = 1000) -> None: ...


class ClientApp(MessageApp, TypingProtocol):
    def failed(self, message: str) -> None:
        """The stream never opened."""


class ClientWebSocket(Protocol):
    """A WebSocket client of C{target} on C{host}, offering one subprotocol;
    C{peer} names the server in what the user is told (C{"the node agent"})."""

    def __init__(
        self,
        reactor,
        host: str,
        target: str,
        subprotocol: str,
        headers: list[tuple[str, str]],
        app: ClientApp,
        peer: str = "the node agent",
    ) -> None:
        self.reactor = reactor
        self.app = app
        self.peer = peer
        extra = [(k.encode(), v.encode()) for k, v in headers]
        self.request = Request(host=host, target=target, subprotocols=[subprotocol], extra_headers=extra)
        self.handshake = H11Handshake(ConnectionType.CLIENT)
        self.endpoint: WebSocketEndpoint | None = None
        self.rejected: list[bytes] = []
        self.done = False
        self.why_lost: Callable[[Failure], str] = lambda reason: reason.getErrorMessage()

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        set_keepalive(self.transport)
        assert self.transport is not None
        self.transport.write(self.handshake.send(self.request))

    def dataReceived(self, data: bytes) -> None:
        if self.endpoint is not None:
            self.endpoint.dataReceived(data)
            return
        try:
            self.handshake.receive_data(data)
            events = list(self.handshake.events())
        except RemoteProtocolError as e:
            return self.fail(f"{self.peer} answered with a bad handshake: {e}")
        for event in events:
            if isinstance(event, AcceptConnection):
                connection = self.handshake.connection
                assert connection is not None and self.transport is not None
                self.endpoint = WebSocketEndpoint(connection, self.app, self.reactor)
                self.endpoint.makeConnection(self.transport)
                self.endpoint.dataReceived(b"")  # what came with the 101
                return
            if isinstance(event, RejectConnection) and not event.has_body:
                return self.fail(f"{self.peer} refused the stream (HTTP {event.status_code})")
            if isinstance(event, RejectData):
                self.rejected.append(event.data)
                if event.body_finished or sum(map(len, self.rejected)) > MAX_REJECTION:
                    return self.fail(status_message(b"".join(self.rejected), self.peer))

    def fail(self, message: str) -> None:
        """The stream did not open (or the connection could not be made): say why, once."""
        if not self.done:
            self.done = True
            self.app.failed(message)
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.endpoint is not None:
            self.endpoint.connectionLost(reason)
        else:
            self.fail(self.why_lost(reason))


def status_message(body: bytes, peer: str = "the node agent") -> str:
    """The message of a refusal's body: a metav1.Status, else its text."""
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else body.decode(errors="replace")[:200] or f"{peer} refused the stream"


class ChannelProcess:
    """A command or attachment at the other end of a channel stream (v4, v5
    or podshell's own), as a front door sees any process: its output to the
    L{Sink}, an IPushProducer of it (pausing stops reading the stream, and
    the peer stops reading its process), its end from the final Status.

    Input written before the stream opens is kept and sent once it does; a
    stream that fails or is lost says why on stderr and ends with L{LOST}.
    C{lost} is what to say when the stream closes without a final Status.
    This base speaks v5's half-close and podshell's signal channel;
    subclasses change what their protocol cannot carry."""

    def __init__(self, sink: Sink, tty: bool, lost: str) -> None:
        self.sink = sink
        self.tty = tty
        self.lost = lost
        self.status: ExitStatus | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.ws: ChannelStream | None = None
        self._pending: list[bytes] = []  # messages before the stream opened
        self._producer: Pausable | None = None
        self._paused = False
        self._final: ExitStatus | None = None
        self._failure: str | None = None
        self.gone = False  # hung up: a stream that opens after that is closed at once

    # MessageApp
    def opened(self, ws: ChannelStream) -> None:
        self.ws = ws
        if self.gone:
            ws.close(1000)
            return
        for message in self._pending:
            ws.send(message)
        self._pending = []
        if self._producer is not None:
            ws.tcp.registerProducer(self._producer, True)
            self._producer.resumeProducing()
        if self._paused:
            ws.tcp.pauseProducing()

    def messageReceived(self, payload: bytes, text: bool) -> None:
        channel, data = channels.decode(payload, False) if payload else (-1, b"")
        if channel == rc.STDOUT and data:
            self.bytes_out += len(data)
            self.sink.outReceived(data)
        elif channel == rc.STDERR and data:
            self.bytes_out += len(data)
            self.sink.errReceived(data)
        elif channel == rc.ERROR and data:
            try:
                self._final = ExitStatus(*rc.exit_status(data))
            except rc.RemoteFailure as e:
                self._failure = str(e)
            self._end()  # the peer closes the stream next

    def closed(self) -> None:
        if self._final is None and self._failure is None:
            self._failure = self.lost
        self._end()

    def failed(self, message: str) -> None:
        self._failure = message
        self._end()

    def _end(self) -> None:
        if self.status is not None:
            return
        if self._final is not None:
            self.status = self._final
        elif self.gone and self._failure == self.lost:
            self.status = ExitStatus(LOST)  # we closed it: nobody is left to tell
        else:
            self.sink.errReceived(f"podshell: {self._failure}\r\n".encode())
            self.status = ExitStatus(LOST)
        if self.ws is not None:
            self.ws.tcp.unregisterProducer()
            self.ws = None
        self.sink.processEnded(self.status)

    # Input and control, from the front door.
    def send(self, channel: int, data: bytes) -> None:
        message = bytes((channel,)) + data
        if self.ws is not None:
            self.ws.send(message)
        elif self.status is None:
            self._pending.append(message)

    def write(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self.send(rc.STDIN, data)

    def closeStdin(self) -> None:
        if not self.tty:  # as locally: a terminal has no EOF of its own
            self.send(rc.CLOSE, bytes((rc.STDIN,)))

    def resize(self, size: WindowSize) -> None:
        if self.tty:
            self.send(rc.RESIZE, json.dumps({"Width": size.cols, "Height": size.rows}).encode())

    def signal(self, sig: str | int) -> None:
        name = signal_name(signal_number(sig))  # ValueError for a name that is not a signal
        self.send(rc.SIGNAL, name.encode())

    def hangup(self) -> None:
        """The client went away: close the stream (the peer decides what
        that means: a node agent hangs its command up, an attachment detaches)."""
        self.gone = True
        self._pending = []
        if self.ws is not None:
            self.ws.close(1000)

    def registerProducer(self, producer: Pausable, streaming: bool) -> None:
        self._producer = producer
        if self.ws is not None:
            self.ws.tcp.registerProducer(producer, True)
        else:
            producer.pauseProducing()  # until the stream is open

    def unregisterProducer(self) -> None:
        if self.ws is not None and self._producer is not None:
            self.ws.tcp.unregisterProducer()
        self._producer = None

    def pauseProducing(self) -> None:
        self._paused = True
        if self.ws is not None:
            self.ws.tcp.pauseProducing()

    def resumeProducing(self) -> None:
        self._paused = False
        if self.ws is not None:
            self.ws.tcp.resumeProducing()

    def stopProducing(self) -> None:
        self.hangup()
