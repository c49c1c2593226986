"""The SPDY adapters (port-forward, exec) over real loopback TCP: a client
that resets or breaks its streams at awkward moments must never make us
send on a finished stream."""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from podshell.auth.audit import AuditLog, Request
from podshell.auth.gate import Gate
from podshell.auth.identity import Identity
from podshell.auth.policy import Policy, Rule
from podshell.core.contracts import ProcessRequest
from podshell.gateway.routing import Cluster
from podshell.kube.spdy import SpdyCommand, SpdyPortForward, SpdyServer, StreamHandler
from podshell.node.inprocess import LocalNode
from podshell.protocols import remotecommand as rc
from podshell.protocols import spdy

from .conftest import needs_root, pod, sleep, wait_for


class _Client(Protocol):
    """The client end: a sans-IO core and every event it saw."""

    def __init__(self) -> None:
        self.core = spdy.SpdyConnection(client=True)
        self.events: list[spdy.Event] = []
        self.lost: Deferred[None] = Deferred()

    def send(self) -> None:
        assert self.transport is not None
        self.transport.write(self.core.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        self.events += self.core.receive_data(data)
        self.send()  # a reset for late data, if the server broke SPDY

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(None)

    async def until(self, check, seconds: float = 5.0) -> None:
        for _ in range(int(seconds / 0.02)):
            if check():
                return
            await sleep(0.02)
        raise AssertionError(f"not seen: {self.events}")


class _Pod(Protocol):
    """A port inside the pod that talks without pause until it is closed."""

    def connectionMade(self) -> None:
        self.factory.connections.append(self)  # type: ignore[attr-defined]
        self.gone: Deferred[None] = Deferred()
        self.talk()

    def talk(self) -> None:
        if self.transport is not None and self.gone is not None and not self.gone.called:
            self.transport.write(b"x" * 4096)
            reactor.callLater(0.001, self.talk)

    def connectionLost(self, reason=None) -> None:
        self.gone.callback(None)


@pytest.fixture
def audit(tmp_path):
    log = AuditLog(tmp_path / "audit.log")
    yield log
    log.close()


@pytest.fixture
def failures():
    """Every failure logged meanwhile (an errback's exception is only logged)."""
    seen: list[Failure] = []

    def observe(event: dict) -> None:
        if "log_failure" in event:
            seen.append(event["log_failure"])

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


async def _forward(audit: AuditLog, pod_port: int):
    """A SPDY port-forward server whose pod port is C{pod_port} on loopback, and a client on it."""

    def connect(port: int, factory: IProtocolFactory) -> Deferred[IProtocol]:
        return connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", pod_port), factory.buildProtocol(None))

    session = audit.session(Request(None, "127.0.0.1:1", "api", "port-forward", "team-a/web-0"))
    return await _serve(lambda s: SpdyPortForward(s, connect, "team-a/web-0", session, True))


async def _serve(handler: Callable[[SpdyServer], StreamHandler]):
    """A SPDY server on loopback whose streams go to C{handler}, and a client on it."""
    servers: list[SpdyServer] = []

    def make() -> SpdyServer:
        server = SpdyServer(reactor, handler)
        servers.append(server)
        return server

    listener = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(make))
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", listener.getHost().port), _Client())
    return listener, client, servers


def _pair(client: _Client, port: int, error_fin: bool = True) -> tuple[int, int]:
    """Open a stream pair; kubectl finishes the error stream at once, a client may not."""
    headers = {"port": str(port), "requestid": "0"}
    error = client.core.open_stream({"streamtype": "error", **headers}, fin=error_fin)
    return error, client.core.open_stream({"streamtype": "data", **headers})


def _no_late_data(client: _Client) -> bool:
    return not any(isinstance(e, spdy.StreamReset) and not e.by_peer for e in client.events)


@pytest_twisted.ensureDeferred
async def test_reset_while_the_pod_port_is_connecting(audit, failures):
    """The failure to connect comes after the client gave up and the error
    stream has our FIN: the failure is not sent."""
    closed = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(Factory.forProtocol(Protocol))
    port = closed.getHost().port
    await maybeDeferred(closed.stopListening)  # nothing listens there now: the connection is refused
    listener, client, servers = await _forward(audit, port)
    try:
        error, data = _pair(client, port, error_fin=False)  # the error stream stays open our way
        client.core.reset(data)
        client.send()  # both SYN_STREAMs and the reset in one read: the connect is still under way
        await client.until(lambda: any(isinstance(e, spdy.Data) and e.fin for e in client.events))
        ping = client.core.ping()
        client.send()
        await client.until(lambda: spdy.PingAcknowledged(ping) in client.events)
        assert [e for e in client.events if isinstance(e, spdy.Data)] == [spdy.Data(error, b"", True)]
        assert _no_late_data(client)
        gc.collect()  # a Deferred logs its unhandled failure when collected
        assert failures == []
    finally:
        for server in servers:
            server.close()
        await client.lost
        await maybeDeferred(listener.stopListening)


@pytest_twisted.ensureDeferred
async def test_reset_while_the_pod_keeps_talking(audit, failures):
    """The client resets the data stream mid-flow: the pod's connection is
    closed, what it still sends is dropped, and the SPDY connection goes on."""
    factory = Factory.forProtocol(_Pod)
    factory.connections = []  # type: ignore[attr-defined]
    pod = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
    listener, client, servers = await _forward(audit, pod.getHost().port)
    try:
        _, data = _pair(client, pod.getHost().port)
        client.send()
        await client.until(lambda: sum(len(e.data) for e in client.events if isinstance(e, spdy.Data)) > 64 * 1024)
        client.core.reset(data)
        client.send()
        await factory.connections[0].gone
        ping = client.core.ping()
        client.send()
        await client.until(lambda: spdy.PingAcknowledged(ping) in client.events)
        assert _no_late_data(client)
        gc.collect()  # a Deferred logs its unhandled failure when collected
        assert failures == []
    finally:
        for connection in factory.connections:
            if connection.transport is not None:
                connection.transport.loseConnection()
        for server in servers:
            server.close()
        await client.lost
        await maybeDeferred(listener.stopListening)
        await maybeDeferred(pod.stopListening)


@needs_root
@pytest_twisted.ensureDeferred
async def test_exec_that_fails_while_its_command_still_writes(start_pods, spawner, audit, failures):
    """A resize stream that cannot be read ends the session with an error: the command,
    which was still writing, is hung up, and nothing follows our FINs."""
    runtime = await start_pods([pod("web-0", {"name": "app", "command": ["sleep", "600"]}, namespace="team-a")])
    policy = Policy([Rule(subjects=["user:alice"], verbs=["exec"], namespaces=["team-a"])])
    cluster = Cluster([LocalNode("podshell", runtime, spawner)])
    argv = ["sh", "-c", "while :; do echo x; sleep 0.01; done"]
    granted = Gate(cluster, policy, audit).enter(Identity("alice"), "exec", "team-a/web-0", "127.0.0.1:1", "api", argv)
    options = rc.StreamOptions.fromQuery({"stdout": ["1"], "tty": ["1"]})
    commands: list[SpdyCommand] = []

    def handler(server: SpdyServer) -> SpdyCommand:
        start = lambda sink: cluster.process(granted, ProcessRequest(tuple(argv), tty=True), sink)  # noqa: E731
        commands.append(SpdyCommand(server, rc.V4, options, granted.session, argv, start))
        return commands[-1]

    listener, client, servers = await _serve(handler)
    try:
        ids = {kind: client.core.open_stream({"streamtype": kind}) for kind in ("error", "stdout", "resize")}
        client.send()
        await client.until(
            lambda: any(isinstance(e, spdy.Data) and e.stream_id == ids["stdout"] for e in client.events)
        )
        client.core.send_data(ids["resize"], b"x" * 5000)  # no JSON, and too long to become any
        client.send()
        finished = {ids["error"], ids["stdout"]}
        await client.until(
            lambda: finished <= {e.stream_id for e in client.events if isinstance(e, spdy.Data) and e.fin}
        )
        error = b"".join(e.data for e in client.events if isinstance(e, spdy.Data) and e.stream_id == ids["error"])
        assert b"bad resize message" in error
        target = commands[0].session.target
        assert target is not None
        await wait_for(lambda: target.status is not None)  # hung up, not left running
        await sleep(0.1)  # what it wrote meanwhile is dropped, not sent after the FIN
        assert _no_late_data(client)
        gc.collect()
        assert failures == []
    finally:
        for server in servers:
            server.close()
        await client.lost
        await maybeDeferred(listener.stopListening)


@pytest_twisted.ensureDeferred
async def test_unidirectional_streams_are_refused(audit, failures):
    """Every Kubernetes stream is answered on: one we could not answer is reset, the connection goes on."""
    listener, client, servers = await _forward(audit, 1)
    try:
        sid = client.core.open_stream({"streamtype": "data", "port": "80", "requestid": "0"})
        syn = bytearray(client.core.data_to_send())
        syn[4] |= spdy.FLAG_UNIDIRECTIONAL
        assert client.transport is not None
        client.transport.write(bytes(syn))
        await client.until(lambda: spdy.StreamReset(sid, spdy.Status.PROTOCOL_ERROR) in client.events)
        ping = client.core.ping()
        client.send()
        await client.until(lambda: spdy.PingAcknowledged(ping) in client.events)
        assert not any(isinstance(e, spdy.SynReply) for e in client.events)
        gc.collect()
        assert failures == []
    finally:
        for server in servers:
            server.close()
        await client.lost
        await maybeDeferred(listener.stopListening)
