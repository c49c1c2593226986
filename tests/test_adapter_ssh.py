"""The SSH connection and session channel on Twisted's fakes: packets in as a
client sends them, packets out as the client reads them, a node in memory
behind the real gate.  Flow control both ways, with no sockets or pods."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field

import pytest
from twisted.conch.ssh import common, connection, forwarding, transport
from twisted.conch.ssh.transport import MSG_DEBUG
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from podshell.auth.audit import AuditLog
from podshell.auth.gate import Gate
from podshell.auth.identity import Identity
from podshell.auth.live import LiveSessions
from podshell.auth.policy import Policy, Rule
from podshell.core.keepalive import KeepaliveSettings
from podshell.core.metrics import SSHLimit
from podshell.core.process import ExitStatus, WindowSize
from podshell.gateway.routing import Cluster
from podshell.gateway.ssh.avatar import PodUser
from podshell.gateway.ssh.channels import PACKET, WINDOW
from podshell.gateway.ssh.connection import ConnectionLimits, PodConnection

from .support.memorynode import PIPE_SIZE, CatProcess, MemoryNode, MemoryPod

ALICE = Identity("alice", frozenset({"dev"}))


class SSHTransport:
    """The SSH transport as a connection service sees it: the packets it is
    given to send, and the client's TCP connection beneath it."""

    def __init__(self, avatar: PodUser, factory: Factory | None = None) -> None:
        self.avatar = avatar
        self.factory = factory
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.9", 5000))
        self.packets: list[tuple[int, bytes]] = []

    def sendPacket(self, kind: int, payload: bytes) -> None:
        self.packets.append((kind, payload))

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        self.sendPacket(transport.MSG_DISCONNECT, struct.pack(">L", reason) + common.NS(desc) + common.NS(b""))
        self.transport.loseConnection()


@dataclass
class Factory:
    """What a connection service takes from the SSH factory: its limits, its
    clock, and where it reports a limit hit."""

    connectionLimits: ConnectionLimits
    clock: Clock = field(default_factory=Clock)
    hits: list[tuple[SSHLimit, str]] = field(default_factory=list)

    def limitHit(self, limit: SSHLimit, source: str) -> None:
        self.hits.append((limit, source))

    def loseConnection(self) -> None:
        self.transport.loseConnection()


class Client:
    """One SSH client's side of the connection service: what it sends, and
    what it has received, decoded."""

    def __init__(self, conn: PodConnection, transport: SSHTransport) -> None:
        self.conn = conn
        self.transport = transport
        self.seen = 0

    def send(self, kind: int, payload: bytes) -> None:
        self.conn.packetReceived(kind, payload)

    def received(self) -> list[tuple]:
        """Packets out since the last call, as (name, fields...)."""
        new, self.seen = self.transport.packets[self.seen :], len(self.transport.packets)
        return [decode(kind, payload) for kind, payload in new]

    def open_session(self, window: int = WINDOW, packet: int = PACKET) -> int:
        self.send(connection.MSG_CHANNEL_OPEN, common.NS(b"session") + struct.pack(">3L", 7, window, packet))
        ((name, recipient, local, *_),) = self.received()
        assert (name, recipient) == ("open-confirmation", 7)
        return local

    def request(self, channel: int, kind: bytes, data: bytes = b"") -> list[tuple]:
        self.send(connection.MSG_CHANNEL_REQUEST, struct.pack(">L", channel) + common.NS(kind) + b"\x01" + data)
        return self.received()

    def data(self, channel: int, data: bytes) -> None:
        self.send(connection.MSG_CHANNEL_DATA, struct.pack(">L", channel) + common.NS(data))

    def eof(self, channel: int) -> None:
        self.send(connection.MSG_CHANNEL_EOF, struct.pack(">L", channel))

    def close(self, channel: int) -> None:
        self.send(connection.MSG_CHANNEL_CLOSE, struct.pack(">L", channel))

    def global_request(self, kind: bytes, data: bytes) -> list[tuple]:
        self.send(connection.MSG_GLOBAL_REQUEST, common.NS(kind) + b"\x01" + data)
        return self.received()

    def open_direct(self, host: bytes, port: int) -> list[tuple]:
        """ssh -L's channel, for a connection from the client's 127.0.0.1:50000."""
        where = forwarding.packOpen_direct_tcpip((host, port), (b"127.0.0.1", 50000))
        self.send(
            connection.MSG_CHANNEL_OPEN, common.NS(b"direct-tcpip") + struct.pack(">3L", 9, WINDOW, PACKET) + where
        )
        return self.received()

    def confirm(self, channel: int, mine: int = 11) -> None:
        """Accept a channel the server opened (ssh -R's forwarded-tcpip)."""
        self.send(connection.MSG_CHANNEL_OPEN_CONFIRMATION, struct.pack(">4L", channel, mine, WINDOW, PACKET))

    def adjust(self, channel: int, size: int) -> None:
        self.send(connection.MSG_CHANNEL_WINDOW_ADJUST, struct.pack(">2L", channel, size))


def decode(kind: int, payload: bytes) -> tuple:
    if kind == connection.MSG_CHANNEL_OPEN_CONFIRMATION:
        return ("open-confirmation", *struct.unpack(">4L", payload[:16]))
    if kind == connection.MSG_CHANNEL_DATA:
        return ("data", common.getNS(payload[4:])[0])
    if kind == connection.MSG_CHANNEL_EXTENDED_DATA:
        return ("stderr", common.getNS(payload[8:])[0])
    if kind == connection.MSG_CHANNEL_OPEN:
        name, rest = common.getNS(payload)
        return ("open", name.decode(), *struct.unpack(">3L", rest[:12]), rest[12:])
    if kind == connection.MSG_REQUEST_SUCCESS:
        return ("request-success", payload)
    if kind == connection.MSG_REQUEST_FAILURE:
        return ("request-failure",)
    if kind == MSG_DEBUG:
        return ("debug", common.getNS(payload[1:])[0])
    if kind == connection.MSG_CHANNEL_REQUEST:
        name, rest = common.getNS(payload[4:])
        return (name.decode(), rest[1:])
    names = {
        connection.MSG_CHANNEL_SUCCESS: "success",
        connection.MSG_CHANNEL_FAILURE: "failure",
        connection.MSG_CHANNEL_EOF: "eof",
        connection.MSG_CHANNEL_CLOSE: "close",
        connection.MSG_CHANNEL_WINDOW_ADJUST: "window-adjust",
    }
    if kind == connection.MSG_CHANNEL_OPEN_FAILURE:
        recipient, reason = struct.unpack(">2L", payload[:8])
        return ("open-failure", recipient, reason, common.getNS(payload[8:])[0])
    if kind == connection.MSG_GLOBAL_REQUEST:
        name, rest = common.getNS(payload)
        return ("global-request", name, bool(rest[0]))
    if kind == transport.MSG_DISCONNECT:
        return ("disconnect", struct.unpack(">L", payload[:4])[0], common.getNS(payload[4:])[0])
    if kind == connection.MSG_CHANNEL_WINDOW_ADJUST:
        return ("window-adjust", struct.unpack(">L", payload[4:8])[0])
    return (names.get(kind, kind),)


def output(packets: list[tuple]) -> bytes:
    return b"".join(p[1] for p in packets if p[0] == "data")


@pytest.fixture
def node() -> MemoryNode:
    return MemoryNode("n1", [MemoryPod("team-a", "web-0", {"app": "Running", "log": "Running"})])


@pytest.fixture
def audit(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    yield log
    log.close()


def connect(
    node: MemoryNode,
    audit: AuditLog,
    verbs: list[str],
    target: str = "team-a.web-0",
    factory: Factory | None = None,
    live: LiveSessions | None = None,
) -> Client:
    """A logged-in client of PodConnection, as the SSH transport starts it."""
    cluster = Cluster([node])
    gate = Gate(cluster, Policy([Rule(subjects=["user:alice"], verbs=verbs, namespaces=["team-a"])]), audit, live)
    found = gate.locate(ALICE, target, "10.0.0.9:5000", "ssh")
    avatar = PodUser(ALICE, found, "10.0.0.9:5000", gate, cluster, ["LANG", "LC_*"])
    ssh = SSHTransport(avatar, factory)
    conn = PodConnection()
    conn.transport = ssh  # type: ignore[assignment]
    conn.serviceStarted()
    return Client(conn, ssh)


def audited(audit: AuditLog) -> list[dict]:
    return [json.loads(line) for line in audit.path.read_text().splitlines()]


def test_exec_data_eof_then_exit_status_eof_and_close_in_order(node, audit):
    client = connect(node, audit, ["exec"])
    channel = client.open_session()
    assert client.request(channel, b"exec", common.NS(b"cat")) == [("success",)]
    (process,) = node.processes
    assert (process.argv, process.tty) == (["/bin/sh", "-c", "cat"], False)
    client.data(channel, b"hello ")
    client.data(channel, b"world")
    client.eof(channel)
    assert client.received() == [("data", b"hello "), ("data", b"world")]
    node.clock.advance(0)  # cat exits
    assert client.received() == [
        ("exit-status", struct.pack(">L", 0)),
        ("eof",),
        ("close",),
    ]
    client.close(channel)
    assert client.conn.channels == {}
    start, end = audited(audit)
    assert (start["verb"], start["target"], start["command"]) == ("exec", "team-a/web-0/app", ["cat"])
    assert (end["status"], end["bytes_in"], end["bytes_out"]) == ("exit code 0", 11, 11)


def test_eof_before_the_command_reaches_it_once_it_starts(node, audit):
    client = connect(node, audit, ["exec"])
    channel = client.open_session()
    client.eof(channel)
    assert client.request(channel, b"exec", common.NS(b"true")) == [("success",)]
    node.clock.advance(0)
    assert node.processes[0].status == ExitStatus(code=0)
    assert [p[0] for p in client.received()] == ["exit-status", "eof", "close"]


def test_a_terminal_its_size_its_changes_and_the_env_sshd_would_accept(node, audit):
    client = connect(node, audit, ["exec"])
    channel = client.open_session()
    modes = common.NS(b"")
    pty = common.NS(b"xterm-256color") + struct.pack(">4L", 120, 40, 0, 0) + modes
    assert client.request(channel, b"pty-req", pty) == [("success",)]
    assert client.request(channel, b"env", common.NS(b"LC_ALL") + common.NS(b"C.UTF-8")) == [("success",)]
    assert client.request(channel, b"env", common.NS(b"LD_PRELOAD") + common.NS(b"/x.so")) == [("failure",)]
    assert client.request(channel, b"shell") == [("success",)]
    (process,) = node.processes
    assert process.tty and process.env == {"LC_ALL": "C.UTF-8", "TERM": "xterm-256color"}
    assert client.request(channel, b"window-change", struct.pack(">4L", 132, 50, 0, 0)) == [("success",)]
    assert process.sizes == [WindowSize(40, 120), WindowSize(50, 132)]
    assert client.request(channel, b"exec", common.NS(b"ls")) == [("failure",)]  # one command per channel


def test_a_signal_reaches_the_process_and_its_end_comes_back_as_exit_signal(node, audit):
    client = connect(node, audit, ["exec"])
    channel = client.open_session()
    client.request(channel, b"exec", common.NS(b"sleep 60"))
    assert client.request(channel, b"signal", common.NS(b"NOPE")) == [("failure",)]
    assert client.request(channel, b"signal", common.NS(b"TERM")) == [("success",)]
    node.clock.advance(0)
    packets = client.received()
    assert packets[0] == ("exit-signal", common.NS(b"TERM") + b"\0" + common.NS(b"") + common.NS(b""))
    assert [p[0] for p in packets[1:]] == ["eof", "close"]


def test_a_refused_exec_says_why_on_stderr_and_exits_1(node, audit):
    client = connect(node, audit, ["port-forward"])  # may log in, may not exec
    channel = client.open_session()
    packets = client.request(channel, b"exec", common.NS(b"id"))
    assert packets[:2] == [
        ("stderr", b"podshell: alice may not exec in team-a/web-0/app\r\n"),
        ("exit-status", struct.pack(">L", 1)),
    ]
    assert node.processes == []
    assert audited(audit)[0]["event"] == "denied"


def test_a_container_that_stopped_since_login_is_refused_like_a_denial(node, audit):
    client = connect(node, audit, ["exec"])
    node.pods_here[0].containers["app"] = "Completed"
    channel = client.open_session()
    packets = client.request(channel, b"exec", common.NS(b"id"))
    assert packets[0] == ("stderr", b"podshell: container 'app' of pod team-a/web-0 is not running (Completed)\r\n")


def test_a_terminal_is_told_of_a_shutdown_then_ended_with_a_line_and_status_255(node, audit):
    live = LiveSessions(node.clock)
    client = connect(node, audit, ["exec"], live=live)
    channel = client.open_session()
    pty = common.NS(b"xterm") + struct.pack(">4L", 80, 24, 0, 0) + common.NS(b"")
    client.request(channel, b"pty-req", pty)
    assert client.request(channel, b"shell") == [("success",)]
    client.data(channel, b"ls\r")
    done = live.drain(5)
    told = b"\r\npodshell: the server is shutting down; this session ends in 5s\r\n"
    assert client.received()[-1] == ("data", told)
    node.clock.advance(5)
    assert done.called
    assert client.received() == [
        ("stderr", b"\r\npodshell: the server shut down\r\n"),
        ("exit-status", struct.pack(">L", 255)),
        ("eof",),
        ("close",),
    ]
    node.clock.advance(0)  # the process, hung up, ends: nothing more is said
    assert node.processes[0].status == ExitStatus(signal="HUP")
    assert client.received() == []
    end = audited(audit)[-1]
    assert (end["status"], end["bytes_in"]) == ("ended: server shutdown", 3)


def test_a_command_without_a_terminal_is_not_told_but_gets_the_line_when_stopped(node, audit):
    live = LiveSessions(node.clock)
    client = connect(node, audit, ["exec"], live=live)
    channel = client.open_session()
    client.request(channel, b"exec", common.NS(b"sleep 60"))
    (one,) = live
    assert one.session.door is not None
    one.session.door.tell("podshell: a line for terminals")
    assert client.received() == []
    live.kill(one, "ops", "10.0.0.1:1")
    assert client.received()[:2] == [
        ("stderr", b"\r\npodshell: an operator ended this session\r\n"),
        ("exit-status", struct.pack(">L", 255)),
    ]
    assert audited(audit)[-1]["ended_by"] == {"user": "ops", "from": "10.0.0.1:1"}


def test_a_client_that_closes_first_hangs_the_process_up(node, audit):
    client = connect(node, audit, ["exec"])
    channel = client.open_session()
    client.request(channel, b"exec", common.NS(b"cat"))
    client.close(channel)
    assert client.received() == [("close",)]
    assert client.conn.channels == {}
    node.clock.advance(0)
    assert node.processes[0].status == ExitStatus(signal="HUP")
    assert client.received() == []  # no exit status on a channel the client has closed
    assert audited(audit)[-1]["status"] == "hung up"


def test_a_slow_reader_pauses_the_process_and_its_window_lets_it_go_on(node, audit):
    client = connect(node, audit, ["exec"])
    channel = client.open_session(window=10, packet=PACKET)
    client.request(channel, b"exec", common.NS(b"cat"))
    process: CatProcess = node.processes[0]
    client.data(channel, b"x" * 100)
    assert output(client.received()) == b"x" * 10  # what the client's window lets out
    assert process.paused
    client.adjust(channel, 1000)
    assert output(client.received()) == b"x" * 90
    assert not process.paused
    client.data(channel, b"y" * 1000)
    assert output(client.received()) == b"y" * 910
    assert process.paused


def test_a_process_that_stops_reading_stops_the_clients_window(node, audit):
    """The client's stdin fills the process's pipe (its output is held by the
    client's closed window): the channel grants no more window until the
    process reads again, so what waits in the server is bounded."""
    client = connect(node, audit, ["exec"])
    channel = client.open_session(window=0)
    client.request(channel, b"exec", common.NS(b"cat"))
    process: CatProcess = node.processes[0]
    chunk = b"z" * PACKET
    for _ in range(WINDOW // PACKET // 2 + 1):  # past half the window: Conch would adjust
        client.data(channel, chunk)
    assert process.readingPaused and process.bytes_in > PIPE_SIZE
    assert client.received() == []  # no output (window 0) and no window-adjust
    client.adjust(channel, 4 * WINDOW)
    packets = client.received()
    assert len(output(packets)) == process.bytes_in
    assert not process.readingPaused
    assert ("window-adjust", process.bytes_in) in packets


def test_a_full_tcp_send_buffer_pauses_every_channel_even_new_ones(node, audit):
    client = connect(node, audit, ["exec"])
    tcp = client.transport.transport
    first = client.open_session()
    client.request(first, b"exec", common.NS(b"cat"))
    tcp.producer.pauseProducing()  # what the TCP transport does when its buffer is full
    second = client.open_session()
    client.request(second, b"exec", common.NS(b"cat"))
    assert [p.paused for p in node.processes] == [True, True]
    client.data(first, b"waits")
    assert output(client.received()) == b""
    tcp.producer.resumeProducing()
    assert [p.paused for p in node.processes] == [False, False]
    assert output(client.received()) == b"waits"


def test_ssh_L_carries_bytes_and_each_half_close_then_closes_once_both_are_done(node, audit):
    node.pods_here[0].listening.add(8080)
    client = connect(node, audit, ["port-forward"])
    ((kind, recipient, channel, *_),) = client.open_direct(b"localhost", 8080)
    assert (kind, recipient) == ("open-confirmation", 9)
    ((pipe, socket),) = node.sockets
    client.data(channel, b"GET /")
    assert socket.value() == b"GET /"
    pipe.dataReceived(b"200 OK")
    assert client.received() == [("data", b"200 OK")]
    client.eof(channel)
    assert socket.writeClosed and client.received() == []
    pipe.readConnectionLost()  # the program in the pod closed its side
    assert client.received() == [("eof",)]
    pipe.writeConnectionLost()
    pipe.connectionLost(None)  # Twisted's TCP ends the connection once both halves are done
    assert socket.disconnecting
    assert client.received() == [("close",)]
    client.close(channel)
    assert client.conn.channels == {}
    start, end = audited(audit)
    assert (start["verb"], start["command"]) == ("port-forward", ["-L localhost:8080"])
    assert (end["bytes_in"], end["bytes_out"]) == (5, 6)


def test_ssh_L_refusals_say_why_in_the_open_failure(node, audit):
    client = connect(node, audit, ["port-forward"])
    assert client.open_direct(b"localhost", 9) == [
        (
            "open-failure",
            9,
            connection.OPEN_CONNECT_FAILED,
            b"podshell: nothing listens on localhost:9 in pod team-a/web-0",
        )
    ]
    ((_, _, code, why),) = client.open_direct(b"10.1.2.3", 80)
    assert (code, why) == (
        connection.OPEN_ADMINISTRATIVELY_PROHIBITED,
        b"podshell: only ports inside the pod can be forwarded: use localhost:80, not 10.1.2.3:80",
    )
    exec_only = connect(node, audit, ["exec"])
    ((_, _, code, why),) = exec_only.open_direct(b"localhost", 8080)
    assert code == connection.OPEN_ADMINISTRATIVELY_PROHIBITED and b"may not port-forward" in why


def test_ssh_R_listens_in_the_pod_and_each_connection_there_opens_a_channel(node, audit):
    client = connect(node, audit, ["port-forward"])
    ((kind, data),) = client.global_request(b"tcpip-forward", common.NS(b"localhost") + struct.pack(">L", 0))
    (listener,) = node.listeners
    assert (kind, data) == ("request-success", struct.pack(">L", listener.getHost().port))
    pipe, socket = listener.dial()
    ((kind, name, server_channel, window, packet, where),) = client.received()
    assert (kind, name) == ("open", "forwarded-tcpip") and window > 0 and packet > 0
    bound, rest = common.getNS(where)
    assert (bound, struct.unpack(">L", rest[:4])[0]) == (b"localhost", listener.getHost().port)
    assert common.getNS(rest[4:])[0] == b"127.0.0.1"  # the pod-side peer
    assert socket.producerState == "paused"  # nothing is read until the client accepts
    client.confirm(server_channel)
    pipe.dataReceived(b"ping")
    assert client.received() == [("data", b"ping")]
    client.data(server_channel, b"pong")
    assert socket.value() == b"pong"
    cancel = client.global_request(b"cancel-tcpip-forward", common.NS(b"localhost") + struct.pack(">L", 0))
    assert cancel == [("request-success", b"")] and not listener.listening


def test_ssh_R_outside_the_pod_or_without_the_verb_is_refused_with_a_line(node, audit):
    client = connect(node, audit, ["port-forward"])
    assert client.global_request(b"tcpip-forward", common.NS(b"10.1.2.3") + struct.pack(">L", 80)) == [
        ("debug", b"podshell: -R can only listen inside the pod (localhost), not on 10.1.2.3"),
        ("request-failure",),
    ]
    exec_only = connect(node, audit, ["exec"])
    (line, failure) = exec_only.global_request(b"tcpip-forward", common.NS(b"localhost") + struct.pack(">L", 0))
    assert line[0] == "debug" and b"may not port-forward" in line[1] and failure == ("request-failure",)
    assert node.listeners == []


KEEPALIVE = KeepaliveSettings(interval=15, count_max=3)


def test_a_client_that_answers_keepalives_is_kept(node, audit):
    factory = Factory(ConnectionLimits(keepalive=KEEPALIVE))
    client = connect(node, audit, ["exec"], factory=factory)
    for _ in range(10):
        factory.clock.advance(15)
        assert client.received() == [("global-request", b"keepalive@openssh.com", True)]
        client.send(connection.MSG_REQUEST_FAILURE, b"")  # what OpenSSH answers
    assert not client.transport.transport.disconnecting and factory.hits == []


def test_a_client_busy_with_other_traffic_is_not_probed(node, audit):
    factory = Factory(ConnectionLimits(keepalive=KEEPALIVE))
    client = connect(node, audit, ["exec"], factory=factory)
    channel = client.open_session()
    client.request(channel, b"exec", common.NS(b"cat"))
    client.received()
    for _ in range(10):
        factory.clock.advance(10)
        client.data(channel, b"x")
    assert [p for p in client.received() if p[0] == "global-request"] == []


def test_a_client_that_stops_answering_is_dropped_after_count_max_probes(node, audit):
    factory = Factory(ConnectionLimits(keepalive=KEEPALIVE))
    client = connect(node, audit, ["exec"], factory=factory)
    factory.clock.advance(15)
    assert client.received() == [("global-request", b"keepalive@openssh.com", True)]
    factory.clock.advance(5)
    client.send(connection.MSG_REQUEST_FAILURE, b"")  # answered: the next probe is 15 s of silence away
    for _ in range(3):
        factory.clock.advance(15)
        assert client.received() == [("global-request", b"keepalive@openssh.com", True)]
        assert not client.transport.transport.disconnecting
    factory.clock.advance(15)
    assert client.received() == [
        ("disconnect", transport.DISCONNECT_CONNECTION_LOST, b"podshell: no answer to 3 keepalive(s) 15 s apart")
    ]
    assert client.transport.transport.disconnected  # aborted: a dead peer reads nothing
    assert factory.hits == [(SSHLimit.KEEPALIVE, "10.0.0.9:5000")]
    client.conn.serviceStopped()
    assert factory.clock.getDelayedCalls() == []


def test_channels_beyond_max_channels_are_refused_with_the_reason(node, audit):
    factory = Factory(ConnectionLimits(max_channels=2))
    client = connect(node, audit, ["exec"], factory=factory)
    first = client.open_session()
    client.open_session()
    client.send(connection.MSG_CHANNEL_OPEN, common.NS(b"session") + struct.pack(">3L", 9, WINDOW, PACKET))
    assert client.received() == [
        (
            "open-failure",
            9,
            connection.OPEN_ADMINISTRATIVELY_PROHIBITED,
            b"podshell: this connection has 2 channels open already (ssh.max_channels)",
        )
    ]
    assert factory.hits == [(SSHLimit.MAX_CHANNELS, "10.0.0.9:5000")]
    client.close(first)
    assert ("close",) in client.received()
    client.open_session()  # a place is free again
