"""A gateway's stream to a port in a pod on another node, as its protocol sees it."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from wsproto import ConnectionType
from wsproto.connection import Connection

from podshell.gateway.node_streams import RemotePort
from podshell.kube.websocket import WebSocketEndpoint
from podshell.protocols import remotecommand as rc


class _Ends(Protocol):
    def connectionMade(self) -> None:
        assert self.transport is not None
        self.ends = (self.transport.getHost(), self.transport.getPeer())


@pytest_twisted.ensureDeferred
async def test_forwarded_connection_knows_which_end_is_which():
    accepted: Deferred[Protocol] = Deferred()

    class Agent(Protocol):
        def connectionMade(self) -> None:
            accepted.callback(self)

    listener = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Agent))
    remote = RemotePort(Factory.forProtocol(_Ends))
    ws = WebSocketEndpoint(Connection(ConnectionType.CLIENT), remote, reactor)
    try:
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", listener.getHost().port), ws)
        agent = await accepted
        remote.messageReceived(bytes((rc.PORT_ERROR,)), False)  # the node's verdict: connected
        protocol = await remote.connected
        assert isinstance(protocol, _Ends)
        assert protocol.ends == (ws.tcp.getHost(), ws.tcp.getPeer())
        assert protocol.ends[0].port != listener.getHost().port and protocol.ends[1].port == listener.getHost().port
    finally:
        if ws.transport is not None:
            ws.transport.loseConnection()
        if accepted.called:
            agent.transport.loseConnection()
        await listener.stopListening()
