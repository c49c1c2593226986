"""A gateway's streams to a node agent, for SSH: a command (L{rc.PROCESS})
and a connection to a port (L{rc.PORT}), each one WebSocket over mutual TLS.

They look to the SSH front door exactly like the spawner's local process and
socket: the same calls, the same flow control (a slow SSH client stops us
reading the node, and the node stops reading the process).
"""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IProtocol, IProtocolFactory, ITransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from podshell.core.contracts import Sink
from podshell.core.target import TargetError
from podshell.kube.websocket import WebSocketEndpoint
from podshell.kube.wsclient import LOST, ChannelProcess, ClientApp, ClientWebSocket
from podshell.protocols import channels
from podshell.protocols import remotecommand as rc

__all__ = ["LOST", "NodeApp", "NodeError", "NodeWebSocket", "RemotePort", "RemoteProcess"]


class NodeError(TargetError):
    """The node agent could not be reached, or refused; the message is for the user."""


NodeApp = ClientApp
NodeWebSocket = ClientWebSocket  # its peer is "the node agent" unless told otherwise


class RemoteProcess(ChannelProcess):
    """A command on another node, as the SSH session sees any process."""

    def __init__(self, sink: Sink, tty: bool, node: str) -> None:
        super().__init__(sink, tty, f"lost the connection to node {node} before the command ended")
        self.node = node


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
