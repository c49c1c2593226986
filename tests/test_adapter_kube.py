"""The Kubernetes API's streaming adapters on Twisted's fakes: a client's
real upgrade request and frames in (kubectl's, as in the streaming spec),
the bytes out checked, a node in memory behind the real gate.  WebSocket
(v5, base64) and SPDY exec, flow control both ways, a client that leaves;
port-forward over SPDY (kubectl 1.20) and WebSocket channels (Python client)."""

from __future__ import annotations

import base64
import json

import pytest
from twisted.internet.testing import StringTransport
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from podshell.auth.audit import AuditLog
from podshell.auth.gate import Gate
from podshell.auth.identity import Identity
from podshell.auth.policy import Policy, Rule
from podshell.core.keepalive import KeepaliveSettings
from podshell.core.metrics import APILimit
from podshell.core.process import ExitStatus, WindowSize
from podshell.gateway.routing import Cluster
from podshell.kube import spdy as kube_spdy
from podshell.kube import websocket
from podshell.kube.front import APIProtocol
from podshell.kube.limits import StreamLimits
from podshell.kube.resources import KubeAPI
from podshell.protocols import spdy

from .support.memorynode import PIPE_SIZE, MemoryNode, MemoryPod

ALICE = Identity("alice", frozenset({"dev"}))
PATH = b"/api/v1/namespaces/team-a/pods/web-0/exec"
# RFC 6455's sample key and its accept value.
KEY, ACCEPT = b"dGhlIHNhbXBsZSBub25jZQ==", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
SUCCESS = b'{"metadata":{},"status":"Success"}'


def websocket_request(
    query: bytes, protocol: bytes, agent: bytes = b"kubectl/v1.33.1 (linux/amd64) kubernetes/abc", path: bytes = PATH
) -> bytes:
    """An exec upgrade as kubectl 1.29+ sends it (spec 2.3)."""
    return (
        b"GET " + path + b"?" + query + b" HTTP/1.1\r\nHost: 127.0.0.1:8443\r\nUser-Agent: " + agent + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + KEY + b"\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: " + protocol + b"\r\n\r\n"
    )


EXEC_VERSIONS = (b"v5.channel.k8s.io", b"v4.channel.k8s.io", b"v3.channel.k8s.io", b"v2.channel.k8s.io")


def spdy_request(query: bytes, versions: tuple[bytes, ...] = EXEC_VERSIONS, path: bytes = PATH) -> bytes:
    """An upgrade as kubectl's SPDY path sends it (spec 2.2)."""
    offered = b"".join(b"X-Stream-Protocol-Version: " + v + b"\r\n" for v in versions)
    return (
        b"POST " + path + b"?" + query + b" HTTP/1.1\r\nHost: 127.0.0.1:8443\r\n"
        b"User-Agent: kubectl/v1.20.5 (linux/amd64) kubernetes/abc\r\nContent-Length: 0\r\n"
        b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n" + offered + b"\r\n"
    )


class TCP(StringTransport):
    def unregisterProducer(self) -> None:  # as Twisted's TCP and TLS transports: harmless without one
        self.producer = None


@pytest.fixture
def node() -> MemoryNode:
    return MemoryNode("n1", [MemoryPod("team-a", "web-0", {"app": "Running"}, listening={8080})])


@pytest.fixture
def audit(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    yield log
    log.close()


def serve(node: MemoryNode, audit: AuditLog, limits: StreamLimits | None = None) -> tuple[APIProtocol, TCP]:
    cluster = Cluster([node])
    gate = Gate(
        cluster, Policy([Rule(subjects=["user:alice"], verbs=["exec", "port-forward"], namespaces=["team-a"])]), audit
    )
    api = KubeAPI(gate, cluster, node.clock, limits=limits)
    protocol = APIProtocol(api.route, lambda event, transport: ALICE)
    tcp = TCP()
    protocol.makeConnection(tcp)
    return protocol, tcp


def split_head(wire: bytes) -> tuple[list[bytes], bytes]:
    head, _, rest = wire.partition(b"\r\n\r\n")
    return head.split(b"\r\n"), rest


class WebSocketClient:
    """The client's side after the 101: wsproto frames (and masks) what it
    sends and reads what the server sent."""

    def __init__(self, protocol: APIProtocol, tcp: TCP) -> None:
        self.protocol = protocol
        self.tcp = tcp
        self.ws = Connection(ConnectionType.CLIENT)
        lines, rest = split_head(tcp.value())
        assert lines[0].startswith(b"HTTP/1.1 101 ")
        self.head = {k.lower(): v.strip() for k, _, v in (line.partition(b":") for line in lines[1:])}
        self.tcp.clear()
        self.ws.receive_data(rest)

    def send(self, message: bytes | str) -> None:
        event = TextMessage(data=message) if isinstance(message, str) else BytesMessage(data=message)
        self.protocol.dataReceived(self.ws.send(event))

    def events(self) -> list:
        self.ws.receive_data(self.tcp.value())
        self.tcp.clear()
        return list(self.ws.events())


def messages(events: list) -> list[bytes | str]:
    return [e.data for e in events if isinstance(e, BytesMessage | TextMessage)]


def test_websocket_v5_exec_stdin_half_close_then_status_and_close_1000(node, audit):
    protocol, tcp = serve(node, audit)
    protocol.dataReceived(websocket_request(b"command=cat&stdin=true&stdout=true&stderr=true", b"v5.channel.k8s.io"))
    client = WebSocketClient(protocol, tcp)
    assert (client.head[b"sec-websocket-accept"], client.head[b"sec-websocket-protocol"]) == (
        ACCEPT,
        b"v5.channel.k8s.io",
    )
    (process,) = node.processes
    assert (process.argv, process.tty) == (["cat"], False)
    assert messages(client.events()) == [b"\x01"]  # the "ready" marker
    client.send(b"\x00hi\n")
    client.send(b"\x04" + b'{"Width":120,"Height":40}\n')
    client.send(b"\xff\x00")  # v5: no more stdin
    node.clock.advance(0)  # cat exits
    events = client.events()
    assert messages(events) == [b"\x01hi\n", b"\x03" + SUCCESS]
    assert isinstance(events[-1], CloseConnection) and events[-1].code == 1000
    assert process.sizes == [WindowSize(40, 120)]
    assert not tcp.disconnecting  # the client has a moment to answer the close
    node.clock.advance(websocket.CLOSE_GRACE)
    assert tcp.disconnecting


def test_websocket_base64_exec_without_stdin_reads_eof_at_once(node, audit):
    protocol, tcp = serve(node, audit)
    protocol.dataReceived(websocket_request(b"command=true&stdout=true", b"v4.base64.channel.k8s.io"))
    client = WebSocketClient(protocol, tcp)
    assert client.head[b"sec-websocket-protocol"] == b"v4.base64.channel.k8s.io"
    node.clock.advance(0)
    assert node.processes[0].status == ExitStatus(code=0)
    assert messages(client.events()) == ["1", "3" + base64.b64encode(SUCCESS).decode()]


def test_websocket_client_that_goes_away_hangs_the_process_up(node, audit):
    protocol, tcp = serve(node, audit)
    protocol.dataReceived(websocket_request(b"command=cat&stdin=true&stdout=true", b"v5.channel.k8s.io"))
    WebSocketClient(protocol, tcp)
    protocol.connectionLost(None)
    node.clock.advance(0)
    assert node.processes[0].status == ExitStatus(signal="HUP")
    end = json.loads(audit.path.read_text().splitlines()[-1])
    assert (end["event"], end["status"]) == ("session.end", "client went away")


def test_websocket_slow_reader_pauses_the_process_and_a_full_pipe_stops_reading_the_client(node, audit):
    protocol, tcp = serve(node, audit)
    protocol.dataReceived(websocket_request(b"command=cat&stdin=true&stdout=true", b"v5.channel.k8s.io"))
    client = WebSocketClient(protocol, tcp)
    process = node.processes[0]
    assert tcp.producer is process and tcp.streaming  # the client's TCP buffer drives the process
    tcp.producer.pauseProducing()  # what a TCP transport does when its send buffer is full
    client.send(b"\x00" + b"a" * PIPE_SIZE)
    assert process.readingPaused and tcp.producerState == "paused"  # stdin is no longer read
    assert messages(client.events()) == [b"\x01"]
    tcp.producer.resumeProducing()
    assert messages(client.events()) == [b"\x01" + b"a" * PIPE_SIZE]
    assert tcp.producerState == "producing"


def test_websocket_refusals_are_statuses_before_the_upgrade(node, audit):
    protocol, tcp = serve(node, audit)
    protocol.dataReceived(websocket_request(b"command=cat&stdout=true&container=nope", b"v5.channel.k8s.io"))
    lines, body = split_head(tcp.value())
    assert lines[0] == b"HTTP/1.1 400 "
    assert json.loads(body)["message"] == "pod team-a/web-0 has no container 'nope' (it has: app)"
    assert tcp.disconnecting  # an upgrade refused: the connection is not reused
    protocol, tcp = serve(node, audit)
    protocol.dataReceived(websocket_request(b"command=cat&stdout=true", b"v9.channel.k8s.io"))
    lines, _ = split_head(tcp.value())
    assert lines[0] == b"HTTP/1.1 403 "
    assert b"x-accepted-stream-protocol-versions: v5.channel.k8s.io" in lines
    assert node.processes == []


class SpdyClient:
    """kubectl's SPDY side after the 101: streams opened one at a time."""

    def __init__(self, protocol: APIProtocol, tcp: TCP, version: bytes = b"v4.channel.k8s.io") -> None:
        self.protocol = protocol
        self.tcp = tcp
        lines, rest = split_head(tcp.value())
        assert lines == [
            b"HTTP/1.1 101 Switching Protocols",
            b"Connection: Upgrade",
            b"Upgrade: SPDY/3.1",
            b"X-Stream-Protocol-Version: " + version,
        ]
        assert rest == b""  # nothing unasked after the 101 (spec 2.2)
        self.tcp.clear()
        self.core = spdy.SpdyConnection(client=True)
        self.streams: dict[str, int] = {}

    def flush(self) -> list:
        self.protocol.dataReceived(self.core.data_to_send())
        events = self.core.receive_data(self.tcp.value())
        self.tcp.clear()
        return events

    def open(self, kind: str, **headers: str) -> list:
        self.streams[kind] = self.core.open_stream({"streamtype": kind, **headers})
        return self.flush()


def test_spdy_exec_streams_answered_one_by_one_then_output_status_and_goaway(node, audit):
    protocol, tcp = serve(node, audit)
    protocol.dataReceived(spdy_request(b"command=cat&stdin=true&stdout=true&stderr=true"))
    client = SpdyClient(protocol, tcp)
    for kind in ("error", "stdin", "stdout"):
        assert client.open(kind) == [spdy.SynReply(client.streams[kind], {})]  # each at once, as kubectl waits
        assert node.processes == []
    client.open("stderr")
    (process,) = node.processes
    client.core.send_data(client.streams["stdin"], b"over spdy", fin=True)
    assert client.flush() == [spdy.Data(client.streams["stdout"], b"over spdy")]
    node.clock.advance(0)
    ids = client.streams
    assert client.core.receive_data(tcp.value()) == [
        spdy.Data(ids["error"], SUCCESS),
        spdy.Data(ids["stdout"], b"", True),
        spdy.Data(ids["stderr"], b"", True),
        spdy.Data(ids["error"], b"", True),
    ]
    assert process.status == ExitStatus(code=0) and not tcp.disconnecting
    tcp.clear()
    node.clock.advance(kube_spdy.CLOSE_GRACE)  # the client did not tear down: we do
    assert client.core.receive_data(tcp.value()) == [spdy.GoAway(ids["stderr"], 0)] and tcp.disconnecting


def test_spdy_streams_that_never_come_fail_the_exec_with_a_status(node, audit):
    protocol, tcp = serve(node, audit)
    protocol.dataReceived(spdy_request(b"command=cat&stdin=true&stdout=true"))
    client = SpdyClient(protocol, tcp)
    client.open("error")
    node.clock.advance(kube_spdy.STREAM_CREATION_TIMEOUT)
    (status,) = [e for e in client.core.receive_data(tcp.value()) if isinstance(e, spdy.Data) and e.data]
    body = json.loads(status.data)
    assert (body["reason"], body["code"]) == ("InternalError", 500)
    assert "timed out waiting for the client to create streams (stdin, stdout)" in body["message"]
    assert node.processes == []


FORWARD = b"/api/v1/namespaces/team-a/pods/web-0/portforward"


def spdy_forward(
    node: MemoryNode, audit: AuditLog, port: str, limits: StreamLimits | None = None
) -> tuple[SpdyClient, list]:
    """kubectl 1.20's port-forward: one error and one data stream per
    connection; what came back once both were open."""
    protocol, tcp = serve(node, audit, limits)
    protocol.dataReceived(spdy_request(b"", (b"portforward.k8s.io",), FORWARD))
    client = SpdyClient(protocol, tcp, b"portforward.k8s.io")
    client.open("error", port=port, requestid="0")
    return client, client.open("data", port=port, requestid="0")


def test_spdy_port_forward_carries_bytes_and_half_close_both_ways(node, audit):
    client, opened = spdy_forward(node, audit, "8080")
    assert opened == [spdy.SynReply(client.streams["data"], {})]
    ((pod_side, socket),) = node.sockets
    client.core.send_data(client.streams["data"], b"GET / HTTP/1.0\r\n\r\n", fin=True)
    assert client.flush() == []
    assert socket.value() == b"GET / HTTP/1.0\r\n\r\n" and socket.writeClosed  # the client's FIN reached the pod
    pod_side.dataReceived(b"HTTP/1.0 200 OK\r\n\r\nhello")
    pod_side.readConnectionLost()  # the server in the pod closes its side
    data, error = client.streams["data"], client.streams["error"]
    assert client.core.receive_data(client.tcp.value()) == [
        spdy.Data(data, b"HTTP/1.0 200 OK\r\n\r\nhello"),
        spdy.Data(data, b"", True),
        spdy.Data(error, b"", True),
    ]


def test_spdy_port_forward_to_a_port_nobody_listens_on_tells_old_kubectl_why(node, audit):
    client, opened = spdy_forward(node, audit, "7009")
    assert node.sockets == []
    error, data = client.streams["error"], client.streams["data"]
    assert opened == [
        spdy.SynReply(data, {}),
        spdy.Data(
            error,
            b"error forwarding port 7009 to pod team-a/web-0: nothing listens on localhost:7009 in pod team-a/web-0",
        ),
        spdy.Data(data, b"", True),
        spdy.Data(error, b"", True),
    ]


def test_spdy_port_forward_streams_without_a_valid_port_are_reset(node, audit):
    protocol, tcp = serve(node, audit)
    protocol.dataReceived(spdy_request(b"", (b"portforward.k8s.io",), FORWARD))
    client = SpdyClient(protocol, tcp, b"portforward.k8s.io")
    events = client.open("data", port="99999", requestid="0")
    assert events == [spdy.StreamReset(client.streams["data"], spdy.Status.CANCEL)]


def test_websocket_port_forward_as_the_python_client_speaks_it(node, audit):
    protocol, tcp = serve(node, audit)
    protocol.dataReceived(
        websocket_request(b"ports=8080", b"v4.channel.k8s.io", b"OpenAPI-Generator/31.0.0/python", FORWARD)
    )
    client = WebSocketClient(protocol, tcp)
    assert messages(client.events()) == [b"\x00\x90\x1f", b"\x01\x90\x1f"]  # each channel opened by its port
    ((pod_side, socket),) = node.sockets
    client.send(b"\x00ping")
    assert socket.value() == b"ping"
    pod_side.dataReceived(b"pong")
    assert messages(client.events()) == [b"\x00pong"]
    pod_side.connectionLost(None)  # the pod closed the connection: every port is done
    events = client.events()
    assert isinstance(events[-1], CloseConnection) and events[-1].code == 1000
    end = json.loads(audit.path.read_text().splitlines()[-1])
    assert end["event"] == "session.start" and end["command"] == ["ports 8080"]
    protocol.connectionLost(None)
    end = json.loads(audit.path.read_text().splitlines()[-1])
    assert (end["event"], end["bytes_in"], end["bytes_out"]) == ("session.end", 4, 4)


# Limits of one upgraded connection.


def limits(hits: list, **kw) -> StreamLimits:
    return StreamLimits(hit=hits.append, **kw)


PINGS = KeepaliveSettings(interval=10, count_max=2)


def test_spdy_connections_beyond_max_forward_connections_are_refused_and_the_first_goes_on(node, audit):
    hits: list = []
    client, opened = spdy_forward(node, audit, "8080", limits(hits, max_forward_connections=1))
    assert opened == [spdy.SynReply(client.streams["data"], {})]
    client.open("error", port="8080", requestid="1")
    events = client.open("data", port="8080", requestid="1")
    error, data = client.streams["error"], client.streams["data"]
    text = b"port-forward to team-a/web-0:8080: 1 connections open already (api.max_forward_connections)"
    assert events == [
        spdy.SynReply(data, {}),
        spdy.Data(error, text),
        spdy.Data(data, b"", True),
        spdy.Data(error, b"", True),
    ]
    assert hits == [APILimit.MAX_FORWARD_CONNECTIONS]
    ((_, socket),) = node.sockets  # the first connection, and only it
    client.core.send_data(3, b"going")  # on the first pair's data stream
    client.flush()
    assert socket.value() == b"going"


def test_spdy_streams_beyond_max_streams_are_refused(node, audit):
    hits: list = []
    protocol, tcp = serve(node, audit, limits(hits, max_streams=2))
    protocol.dataReceived(spdy_request(b"", (b"portforward.k8s.io",), FORWARD))
    client = SpdyClient(protocol, tcp, b"portforward.k8s.io")
    client.open("error", port="8080", requestid="0")
    client.open("data", port="8080", requestid="0")
    events = client.open("error", port="8080", requestid="1")
    assert events == [spdy.StreamReset(client.streams["error"], spdy.Status.REFUSED_STREAM)]
    assert hits == [APILimit.MAX_STREAMS]


def test_a_spdy_client_that_answers_pings_is_kept_and_one_that_stops_is_dropped(node, audit):
    hits: list = []
    protocol, tcp = serve(node, audit, limits(hits, keepalive=PINGS))
    protocol.dataReceived(spdy_request(b"", (b"portforward.k8s.io",), FORWARD))
    client = SpdyClient(protocol, tcp, b"portforward.k8s.io")
    for _ in range(5):
        node.clock.advance(10)
        assert client.flush() == []  # the core answered the PING; flush sends the answer
        assert tcp.value() == b""
    for _ in range(2):  # the client stops answering
        node.clock.advance(10)
        assert tcp.value() and client.core.receive_data(tcp.value()) == []  # a PING
        assert client.core.data_to_send()  # its answer, never sent
        tcp.clear()
        assert not tcp.disconnecting
    node.clock.advance(10)
    assert tcp.disconnected and hits == [APILimit.KEEPALIVE]


def test_a_websocket_client_that_answers_pings_is_kept_and_one_that_stops_is_dropped(node, audit):
    hits: list = []
    protocol, tcp = serve(node, audit, limits(hits, keepalive=PINGS))
    protocol.dataReceived(websocket_request(b"command=cat&stdin=true&stdout=true", b"v5.channel.k8s.io"))
    client = WebSocketClient(protocol, tcp)
    client.events()
    for _ in range(5):
        node.clock.advance(10)
        (ping,) = client.events()
        assert isinstance(ping, Ping)
        protocol.dataReceived(client.ws.send(ping.response()))
    node.clock.advance(10)
    node.clock.advance(10)
    assert not tcp.disconnecting
    node.clock.advance(10)
    assert tcp.disconnected and hits == [APILimit.KEEPALIVE]  # aborted: nothing waits on the dead
    protocol.connectionLost(None)  # what the aborted TCP connection says next
    node.clock.advance(0)
    assert node.processes[0].status == ExitStatus(signal="HUP")
