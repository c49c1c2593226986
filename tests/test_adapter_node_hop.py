"""A command across a node hop on Twisted's fakes: the gateway's
RemoteProcess and its WebSocket client on one side, the node agent's real
API (agent mode, the gate, a node in memory) on the other, joined by a wire
of StringTransports that honours a paused reader, as TCP does."""

from __future__ import annotations

import pytest
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from podshell.auth.audit import AuditLog
from podshell.auth.gate import Gate
from podshell.auth.identity import Identity
from podshell.auth.policy import Policy, Rule
from podshell.core.process import ExitStatus
from podshell.gateway.node_streams import LOST, NodeWebSocket, RemoteProcess
from podshell.gateway.routing import Cluster
from podshell.kube.front import APIProtocol
from podshell.kube.resources import KubeAPI
from podshell.protocols import remotecommand as rc

from .conftest import Collect
from .support.memorynode import PIPE_SIZE, MemoryNode, MemoryPod

ALICE = Identity("alice")
EXEC = "/api/v1/namespaces/team-a/pods/web-0/exec?container=app&command=cat&stdin=1&stdout=1&stderr=1"


class TCP(StringTransport):
    def unregisterProducer(self) -> None:  # as Twisted's TCP and TLS transports: harmless without one
        self.producer = None


class Wire:
    """Two protocols on StringTransports; L{pump} moves bytes until nothing
    moves, never to a side that paused reading, and passes a close on once
    what was written before it has arrived."""

    def __init__(self, client: Protocol, server: Protocol) -> None:
        self.ends = [(client, TCP()), (server, TCP())]
        self.lost: set[int] = set()
        server.makeConnection(self.ends[1][1])
        client.makeConnection(self.ends[0][1])

    def pump(self) -> None:
        moved = True
        while moved:
            moved = False
            for i in (0, 1):
                (_, source), (reader, sink) = self.ends[i], self.ends[1 - i]
                data = source.value()
                if data and sink.producerState != "paused" and 1 - i not in self.lost:
                    source.clear()
                    reader.dataReceived(data)
                    moved = True
                elif not data and source.disconnecting and 1 - i not in self.lost:
                    self.lost.add(1 - i)
                    reader.connectionLost(Failure(ConnectionError("closed")))
                    self.ends[i][0].connectionLost(Failure(ConnectionError("closed")))
                    self.lost.add(i)
                    moved = True


@pytest.fixture
def node() -> MemoryNode:
    return MemoryNode("n1", [MemoryPod("team-a", "web-0", {"app": "Running"})])


@pytest.fixture
def audit(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    yield log
    log.close()


def hop(node: MemoryNode, audit: AuditLog, target: str = EXEC) -> tuple[RemoteProcess, Collect, Wire]:
    """A gateway's command on node n1, as the SSH front door starts one."""
    cluster = Cluster([node])
    gate = Gate(cluster, Policy([Rule(subjects=["user:alice"], verbs=["exec"], namespaces=["team-a"])]), audit)
    agent = APIProtocol(KubeAPI(gate, cluster, node.clock, agent=True).route, lambda event, transport: ALICE)
    sink = Collect()
    process = RemoteProcess(sink, False, "n1")
    client = NodeWebSocket(node.clock, "n1:10250", target, rc.PROCESS, [], process)
    return process, sink, Wire(client, agent)


def test_stdin_written_before_the_stream_opens_arrives_then_the_status_comes_back(node, audit):
    process, sink, wire = hop(node, audit)
    process.write(b"early ")  # the SSH client may type before the node answers
    process.write(b"bytes")
    process.closeStdin()
    wire.pump()
    (remote,) = node.processes
    assert (remote.argv, remote.bytes_in) == (["cat"], 11)
    node.clock.advance(0)  # cat exits on the node
    wire.pump()
    assert bytes(sink.out) == b"early bytes"
    assert process.status == ExitStatus(code=0) and sink.done.called
    assert (process.bytes_in, process.bytes_out) == (11, 11)


def test_a_signal_crosses_the_hop_and_comes_back_by_name(node, audit):
    process, sink, wire = hop(node, audit)
    wire.pump()
    process.signal("INT")
    wire.pump()
    node.clock.advance(0)
    wire.pump()
    assert node.processes[0].status == ExitStatus(signal="INT")
    assert process.status == ExitStatus(signal="INT") and sink.done.called
    with pytest.raises(ValueError):
        process.signal("NOPE")


def test_a_node_that_refuses_says_why_on_stderr_and_exits_as_lost(node, audit):
    process, sink, wire = hop(node, audit, EXEC.replace("container=app", "container=nope"))
    wire.pump()
    assert bytes(sink.err) == b"podshell: pod team-a/web-0 has no container 'nope' (it has: app)\r\n"
    assert process.status == ExitStatus(LOST)


def test_a_node_that_goes_away_mid_command_ends_it_as_lost(node, audit):
    process, sink, wire = hop(node, audit)
    wire.pump()
    wire.ends[1][1].loseConnection()  # the node agent's side drops
    wire.pump()
    assert bytes(sink.err) == b"podshell: lost the connection to node n1 before the command ended\r\n"
    assert process.status == ExitStatus(LOST)
    node.clock.advance(0)
    assert node.processes[0].status == ExitStatus(signal="HUP")  # the node hung its process up


def test_a_slow_front_door_stops_the_hop_and_the_node_stops_reading_stdin(node, audit):
    process, sink, wire = hop(node, audit)
    wire.pump()
    remote = node.processes[0]
    process.pauseProducing()  # the SSH client's window is full
    process.write(b"x" * (2 * PIPE_SIZE))
    wire.pump()
    assert bytes(sink.out) == b""  # held on the wire, not in the gateway
    # The node's TCP send buffer would fill: as its transport does then.
    wire.ends[1][1].producer.pauseProducing()
    process.write(b"y" * PIPE_SIZE)
    wire.pump()
    assert remote.paused and remote.readingPaused
    wire.ends[1][1].producer.resumeProducing()
    process.resumeProducing()
    wire.pump()
    assert bytes(sink.out) == b"x" * (2 * PIPE_SIZE) + b"y" * PIPE_SIZE
    assert not remote.readingPaused


def test_a_front_door_that_goes_before_the_stream_opens_leaves_nothing_running(node, audit):
    process, sink, wire = hop(node, audit)
    process.write(b"never sent")
    process.hangup()  # the SSH client went away while the node was being dialled
    wire.pump()
    node.clock.advance(0)
    wire.pump()
    # The node started it as the stream opened; the close that came next hung it up.
    assert [(p.bytes_in, p.status) for p in node.processes] == [(0, ExitStatus(signal="HUP"))]
    assert sink.done.called and bytes(sink.err) == b""  # nobody is left to tell
