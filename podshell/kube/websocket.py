"""WebSocket for the streaming subresources, on wsproto.

wsproto rather than twisted.web.websocket (26.10): Twisted's resource cannot
negotiate a subprotocol, and client-go refuses a 101 that does not echo one
of the protocols it offered; wsproto is sans-IO and lets us answer with the
one we chose.

L{WebSocketEndpoint} owns the TCP side (pings, close, reassembly, limits);
what runs on it is a L{MessageApp}: exec or attach over channels, port-forward
over channels, or the SPDY tunnel.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol as TypingProtocol
from typing import cast

from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Message, Ping, TextMessage
from wsproto.handshake import H11Handshake
from zope.interface import implementer

from podshell.core.addresses import host_port
from podshell.core.keepalive import Keepalive
from podshell.core.metrics import APILimit
from podshell.core.transports import StreamTransport, abort
from podshell.kube.limits import StreamLimits
from podshell.protocols.wsframe import binary_header

log = Logger()

MAX_MESSAGE = 32 << 20  # a kubelet's (x/net/websocket's default): the Python client writes stdin as one message
CLOSE_GRACE = 5.0
HOLD_LIMIT = 1 << 20  # what a hold may keep back before it lets go early


def accept(raw_headers: Sequence[tuple[bytes, bytes]], target: bytes, subprotocol: str) -> tuple[bytes, Connection]:
    """The 101 answer to a WebSocket upgrade, and the connection after it."""
    handshake = H11Handshake(ConnectionType.SERVER)
    handshake.initiate_upgrade_connection(list(raw_headers), target)
    data = handshake.send(AcceptConnection(subprotocol=subprotocol or None))
    connection = handshake.connection
    assert connection is not None
    return data, connection


class MessageApp(TypingProtocol):
    def opened(self, ws: WebSocketEndpoint) -> None: ...

    def messageReceived(self, payload: bytes, text: bool) -> None: ...

    def closed(self) -> None: ...


class WebSocketEndpoint(Protocol):
    def __init__(self, ws: Connection, app: MessageApp, reactor, limits: StreamLimits | None = None) -> None:
        """C{limits}: its C{keepalive} pings a quiet client."""
        self.ws = ws
        self.app = app
        self.reactor = reactor
        self.limits = limits or StreamLimits()
        self.keepalive: Keepalive | None = None
        self._parts: list[bytes] = []
        self._size = 0
        self._done = False
        self._dropped = False
        self._held: list[Callable[[], None]] = []
        self._heldBytes = 0
        self._holding: IDelayedCall | None = None

    def hold(self, seconds: float) -> None:
        """Keep what is sent (messages and the close) back for a moment after
        the upgrade, for a client that reads before it is ready to receive."""
        self._holding = self.reactor.callLater(seconds, self._release)

    def _release(self) -> None:
        if self._holding is not None and self._holding.active():
            self._holding.cancel()
        self._holding = None
        held, self._held = self._held, []
        for step in held:
            step()

    @property
    def tcp(self) -> StreamTransport:
        assert self.transport is not None, "connected"
        return cast(StreamTransport, self.transport)

    def connectionMade(self) -> None:
        if self.limits.keepalive is not None:
            self.keepalive = Keepalive(self.reactor, self.limits.keepalive, self._ping, self._unanswered)
        self.app.opened(self)

    def _ping(self) -> None:
        if self.ws.state is ConnectionState.OPEN and not self._done:
            self._write(self.ws.send(Ping(payload=b"podshell")))

    def _unanswered(self) -> None:
        """No pong, nor anything else, to several pings: the client is gone,
        and what waits for it to read waits for nobody."""
        self.limits.hit(APILimit.KEEPALIVE)
        log.info("WebSocket client {peer} answered no ping: dropped", peer=host_port(self.tcp.getPeer()))
        self._dropped = True
        self.tcp.unregisterProducer()
        abort(self.tcp)

    def dataReceived(self, data: bytes) -> None:
        if self._dropped:
            return  # what comes while TCP goes down is nobody's
        if self.keepalive is not None:
            self.keepalive.heard()
        self.ws.receive_data(data)
        for event in self.ws.events():
            if self._dropped:  # the app closed on a bad message
                return
            if isinstance(event, CloseConnection):
                self._closeReceived(event)
                return
            if self._done:
                continue
            if isinstance(event, Message):
                # A text frame's payload is what was on the wire: its UTF-8 (wsproto checked it).
                part = event.data.encode() if isinstance(event, TextMessage) else event.data
                self._size += len(part)
                if self._size > MAX_MESSAGE:
                    self.close(1009, "message too big")
                    return
                self._parts.append(part)
                if event.message_finished:
                    payload = b"".join(self._parts)
                    self._parts, self._size = [], 0
                    self.app.messageReceived(payload, isinstance(event, TextMessage))
            elif isinstance(event, Ping):
                self._write(self.ws.send(event.response()))

    def _closeReceived(self, event: CloseConnection) -> None:
        """The client's Close (answered), the answer to ours, or wsproto's
        word that the input is broken: then the client is told why, at once."""
        if self.ws.state is ConnectionState.REMOTE_CLOSING:
            self.tcp.write(self.ws.send(event.response()))
        elif self.ws.state is ConnectionState.OPEN:
            self.tcp.write(self.ws.send(CloseConnection(code=event.code, reason=event.reason)))
        self._drop()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.keepalive is not None:
            self.keepalive.stop()
        if self._holding is not None:
            self._holding.cancel()
            self._holding = None
        self.app.closed()

    def send(self, message: bytes | str) -> None:
        """A binary (bytes) or text (str) message; dropped once closing."""
        if self.ws.state is not ConnectionState.OPEN:
            return
        if self._holding is not None:
            self._held.append(partial(self.send, message))
            self._heldBytes += len(message)
            if self._heldBytes > HOLD_LIMIT:
                self._release()
            return
        if isinstance(message, str):
            self._write(self.ws.send(TextMessage(data=message)))
        elif self.ws.client:  # a client masks what it sends: wsproto frames it
            self._write(self.ws.send(BytesMessage(data=message)))
        else:
            self._write(binary_header(len(message)), message)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a status code (kubectl takes only 1000 as a clean end),
        then give the client a moment to answer before dropping TCP."""
        if self._done:
            return
        if self._holding is not None:
            self._held.append(partial(self.close, code, reason))
            return
        if self.ws.state is ConnectionState.OPEN:
            self._write(self.ws.send(CloseConnection(code=code, reason=reason)))
        self._done = True
        if self.transport is not None:
            if code == 1000:
                self.reactor.callLater(CLOSE_GRACE, self._drop)
            else:
                self._drop()

    def _drop(self) -> None:
        """Close TCP; whatever fed it is done (a TLS transport would wait for
        its producer to go before closing)."""
        self._dropped = True
        if self.transport is not None:
            self.tcp.unregisterProducer()
            self.tcp.loseConnection()

    def _write(self, *pieces: bytes) -> None:
        if self.transport is not None and not self._done:
            self.transport.writeSequence(pieces)


@implementer(IPushProducer)
class MessageTransport:
    """A byte stream carried in binary messages, as a transport (for SPDY
    tunnelled in WebSocket: message boundaries mean nothing there)."""

    def __init__(self, endpoint: WebSocketEndpoint) -> None:
        self.endpoint = endpoint

    def write(self, data: bytes) -> None:
        if data:
            self.endpoint.send(data)

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        self.endpoint.close(1000)

    def getPeer(self) -> IAddress:
        return self.endpoint.tcp.getPeer()

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.endpoint.tcp.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.endpoint.tcp.unregisterProducer()

    def pauseProducing(self) -> None:
        self.endpoint.tcp.pauseProducing()

    def resumeProducing(self) -> None:
        self.endpoint.tcp.resumeProducing()

    def stopProducing(self) -> None:
        self.endpoint.tcp.loseConnection()
