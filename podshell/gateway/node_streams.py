"""A gateway's streams to a node agent, for SSH: a command (L{rc.PROCESS})
and a connection to a port (L{rc.PORT}), each one WebSocket over mutual TLS.

They look to the SSH front door exactly like the spawner's local process and
socket: the same calls, the same flow control (a slow SSH client stops us
reading the node, and the node stops reading the process).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IProtocol, IProtocolFactory, ITransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from wsproto import ConnectionType
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request
from wsproto.handshake import H11Handshake
from wsproto.utilities import RemoteProtocolError
from zope.interface import implementer

from podshell.core.addresses import set_keepalive, set_no_delay
from podshell.core.contracts import Sink
from podshell.core.flow import Pausable
from podshell.core.process import ExitStatus, WindowSize, signal_name, signal_number
from podshell.core.target import TargetError
from podshell.kube.websocket import MessageApp, WebSocketEndpoint
from podshell.protocols import channels
from podshell.protocols import remotecommand as rc

LOST = 255  # the exit status of a command whose node went away, as ssh reports a lost connection
MAX_REJECTION = 64 * 1024


class NodeError(TargetError):
    """The node agent could not be reached, or refused; the message is for the user."""


class NodeApp(MessageApp, TypingProtocol):
    def failed(self, message: str) -> None:
        """The stream never opened."""


class NodeWebSocket(Protocol):
    """The client side: a WebSocket handshake on wsproto, then the same
    L{WebSocketEndpoint} the API serves with."""

    def __init__(
        self, reactor, host: str, target: str, subprotocol: str, headers: list[tuple[str, str]], app: NodeApp
    ) -> None:
        self.reactor = reactor
        self.app = app
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
            return self._fail(f"the node agent answered with a bad handshake: {e}")
        for event in events:
            if isinstance(event, AcceptConnection):
                connection = self.handshake.connection
                assert connection is not None and self.transport is not None
                self.endpoint = WebSocketEndpoint(connection, self.app, self.reactor)
                self.endpoint.makeConnection(self.transport)
                self.endpoint.dataReceived(b"")  # what came with the 101
                return
            if isinstance(event, RejectConnection) and not event.has_body:
                return self._fail(f"the node agent refused the stream (HTTP {event.status_code})")
            if isinstance(event, RejectData):
                self.rejected.append(event.data)
                if event.body_finished or sum(map(len, self.rejected)) > MAX_REJECTION:
                    return self._fail(_status_message(b"".join(self.rejected)))

    def _fail(self, message: str) -> None:
        if not self.done:
            self.done = True
            self.app.failed(message)
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.endpoint is not None:
            self.endpoint.connectionLost(reason)
        else:
            self._fail(self.why_lost(reason))


def _status_message(body: bytes) -> str:
    try:
        message = json.loads(body).get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else body.decode(errors="replace")[:200] or "the node agent refused the stream"


class RemoteProcess:
    """A command on another node, as the SSH session sees any process."""

    def __init__(self, sink: Sink, tty: bool, node: str) -> None:
        self.sink = sink
        self.tty = tty
        self.node = node
        self.status: ExitStatus | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.ws: WebSocketEndpoint | None = None
        self._pending: list[bytes] = []  # messages before the stream opened
        self._producer: Pausable | None = None
        self._paused = False
        self._final: ExitStatus | None = None
        self._failure: str | None = None

    # MessageApp
    def opened(self, ws: WebSocketEndpoint) -> None:
        self.ws = ws
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
            self._end()  # the node closes the stream next

    def closed(self) -> None:
        if self._final is None and self._failure is None:
            self._failure = f"lost the connection to node {self.node} before the command ended"
        self._end()

    def failed(self, message: str) -> None:
        self._failure = message
        self._end()

    def _end(self) -> None:
        if self.status is not None:
            return
        if self._final is not None:
            self.status = self._final
        else:
            self.sink.errReceived(f"podshell: {self._failure}\r\n".encode())
            self.status = ExitStatus(LOST)
        if self.ws is not None:
            self.ws.tcp.unregisterProducer()
            self.ws = None
        self.sink.processEnded(self.status)

    # Input and control, from the front door.
    def _send(self, channel: int, data: bytes) -> None:
        message = bytes((channel,)) + data
        if self.ws is not None:
            self.ws.send(message)
        elif self.status is None:
            self._pending.append(message)

    def write(self, data: bytes) -> None:
        self.bytes_in += len(data)
        self._send(rc.STDIN, data)

    def closeStdin(self) -> None:
        if not self.tty:  # as locally: a terminal has no EOF of its own
            self._send(rc.CLOSE, bytes((rc.STDIN,)))

    def resize(self, size: WindowSize) -> None:
        if self.tty:
            self._send(rc.RESIZE, json.dumps({"Width": size.cols, "Height": size.rows}).encode())

    def signal(self, sig: str | int) -> None:
        name = signal_name(signal_number(sig))  # ValueError for a name that is not a signal
        self._send(rc.SIGNAL, name.encode())

    def hangup(self) -> None:
        """The client went away: the node hangs the command up when we close."""
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


class RemotePort:
    """A connection to a port in a pod on another node; C{connected} fires
    with the protocol once the node has connected (or fails with why not)."""

    def __init__(self, factory: IProtocolFactory) -> None:
        self.factory = factory
        self.connected: Deferred[IProtocol] = Deferred()
        self.protocol: IProtocol | None = None
        self.ws: WebSocketEndpoint | None = None

    def opened(self, ws: WebSocketEndpoint) -> None:
        self.ws = ws  # the node sends nothing but the verdict until it has connected

    def messageReceived(self, payload: bytes, text: bool) -> None:
        channel, data = channels.decode(payload, False) if payload else (-1, b"")
        if channel == rc.PORT_ERROR and self.protocol is None and self.ws is not None:
            if data:
                self.ws.close(1000)
                self._refuse(data.decode(errors="replace"))
                return
            protocol = self.factory.buildProtocol(None)  # type: ignore[arg-type]
            assert protocol is not None
            self.protocol = protocol
            protocol.makeConnection(_PortTransport(self.ws))
            self.connected.callback(protocol)
        elif channel == rc.PORT_DATA and self.protocol is not None:
            self.protocol.dataReceived(data)
        elif (
            channel == rc.CLOSE and data == bytes((rc.PORT_DATA,)) and IHalfCloseableProtocol.providedBy(self.protocol)
        ):
            self.protocol.readConnectionLost()

    def closed(self) -> None:
        if self.protocol is not None:
            self.protocol.connectionLost(Failure(connectionDone))
        else:
            self._refuse("the node agent closed the stream before connecting")

    def failed(self, message: str) -> None:
        self._refuse(message)

    def _refuse(self, message: str) -> None:
        if not self.connected.called:
            self.connected.errback(NodeError(message))


@implementer(ITransport)
class _PortTransport:
    """What the forwarded connection's protocol writes to: the WebSocket."""

    def __init__(self, ws: WebSocketEndpoint) -> None:
        self.ws = ws

    def write(self, data: bytes) -> None:
        self.ws.send(bytes((rc.PORT_DATA,)) + data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseWriteConnection(self) -> None:
        self.ws.send(bytes((rc.CLOSE, rc.PORT_DATA)))

    def loseConnection(self) -> None:
        self.ws.close(1000)

    def getPeer(self) -> IAddress:
        return self.ws.tcp.getPeer()

    def getHost(self) -> IAddress:
        return self.ws.tcp.getHost()

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.ws.tcp.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.ws.tcp.unregisterProducer()

    def pauseProducing(self) -> None:
        self.ws.tcp.pauseProducing()

    def resumeProducing(self) -> None:
        self.ws.tcp.resumeProducing()

    def stopProducing(self) -> None:
        self.ws.close(1000)
