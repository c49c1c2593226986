"""The registry of live sessions on a Clock: listing and killing through the
gate (verb admin), the idle timeout and its warning, the maximum duration,
the per-user cap, and the drain of a shutdown."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from podshell.auth.audit import AuditLog
from podshell.auth.gate import Denied, Gate
from podshell.auth.identity import Identity
from podshell.auth.live import Limits, LiveSessions
from podshell.auth.policy import Policy, Rule
from podshell.core.contracts import Placement
from podshell.core.denial import DenialKind
from podshell.core.flow import Valve
from podshell.core.metrics import Metrics
from podshell.core.process import ExitStatus
from podshell.kube.command import CommandSession
from podshell.protocols import remotecommand as rc
from podshell.protocols.remotecommand import StreamOptions

from .support.memorynode import CatProcess

ALICE = Identity("alice")
OPS = Identity("ops")


class Runtime:
    def container_names(self, namespace: str, name: str) -> list[str] | None:
        return ["app"]

    def resolve(self, namespace: str, pod: str, container: str | None = None) -> Placement:
        return Placement(namespace, pod, container or "app", "node")

    def unreachable(self) -> list[str]:
        return []


class Door:
    """A front door's side: bytes it moved, lines told, how it was stopped."""

    def __init__(self, session) -> None:
        self.session = session
        self.bytes = (0, 0)
        self.told: list[str] = []
        self.stopped: tuple[str, str] | None = None
        session.serve(self)

    def moved(self) -> tuple[int, int]:
        return self.bytes

    def tell(self, line: str) -> None:
        self.told.append(line)

    def stop(self, line: str, status: str) -> None:
        self.stopped = (line, status)
        self.session.end(status, *self.bytes)


RULES = [
    Rule(subjects=["user:alice"], verbs=["*"], namespaces=["team-a"]),
    Rule(subjects=["user:ops"], verbs=["admin"], namespaces=["team-a"]),
    Rule(subjects=["user:alice"], verbs=["exec"], namespaces=["quiet"], idle_timeout=10),
]


@pytest.fixture
def world(tmp_path):
    clock = Clock()
    metrics = Metrics()
    audit = AuditLog(tmp_path / "audit.jsonl", metrics)
    live = LiveSessions(clock, Limits(idle_timeout=300, max_duration=None, max_per_user=2))
    gate = Gate(Runtime(), Policy(RULES), audit, live)
    yield clock, gate, metrics
    audit.close()


def records(gate: Gate) -> list[dict]:
    return [json.loads(line) for line in gate.audit.path.read_text().splitlines()]


def open_one(gate: Gate, target: str = "team-a/web-0") -> Door:
    return Door(gate.enter(ALICE, "exec", target, "127.0.0.1:5000", "ssh", ["sh"]).session)


def test_an_operator_lists_and_kills_and_the_audit_log_names_them(world):
    clock, gate, _ = world
    door = open_one(gate)
    door.bytes = (5, 70)
    clock.advance(3)
    (listed,) = gate.sessions(OPS, "10.0.0.9:4000", "api")
    fields = listed.fields(clock.seconds())
    assert (fields["user"], fields["target"], fields["via"], fields["command"]) == (
        "alice", "team-a/web-0/app", "ssh", ["sh"]
    )  # fmt: skip
    assert (fields["bytes_in"], fields["bytes_out"], fields["seconds"]) == (5, 70, 3)
    gate.kill(OPS, "10.0.0.9:4000", "api", door.session.id)
    assert door.stopped == ("podshell: an operator ended this session", "ended by an operator")
    end = records(gate)[-1]
    assert end["event"] == "session.end" and end["ended_by"] == {"user": "ops", "from": "10.0.0.9:4000"}
    assert list(gate.live) == []


def test_admin_is_needed_and_is_not_in_an_allowing_star(world):
    _, gate, _ = world
    door = open_one(gate)
    for who in (ALICE, Identity("eve")):
        with pytest.raises(Denied, match="no policy rule gives the verb admin") as e:
            gate.sessions(who, "127.0.0.1:1", "api")
        assert e.value.kind is DenialKind.FORBIDDEN
        with pytest.raises(Denied):
            gate.kill(who, "127.0.0.1:1", "api", door.session.id)
    assert door.stopped is None


def test_admin_is_where_the_rule_says(world):
    _, gate, _ = world
    outside = open_one(gate, "quiet/db-0")
    assert gate.sessions(OPS, "127.0.0.1:1", "api") == []
    with pytest.raises(Denied) as e:
        gate.kill(OPS, "127.0.0.1:1", "api", outside.session.id)
    assert e.value.kind is DenialKind.NOT_FOUND and outside.stopped is None


def test_idle_sessions_are_warned_then_ended_and_activity_resets_the_clock(world):
    clock, gate, _ = world
    door = open_one(gate)
    clock.advance(200)
    door.bytes = (1, 0)  # a keystroke, seen at the next look (201 s)
    clock.advance(1)
    clock.advance(239)
    assert door.told == [] and door.stopped is None
    clock.advance(1)  # 240 s quiet: a minute to go
    assert door.told == ["podshell: this session is idle; it ends in 1m without input or output"]
    clock.advance(59)
    assert door.stopped is None
    clock.advance(1)
    assert door.stopped == ("podshell: this session was idle for 5m, and has ended", "ended: idle timeout")
    assert records(gate)[-1]["status"] == "ended: idle timeout"


def test_a_rule_may_shorten_the_idle_timeout_and_a_short_one_is_warned_halfway(world):
    clock, gate, _ = world
    door = open_one(gate, "quiet/db-0")
    clock.advance(5)
    assert door.told == ["podshell: this session is idle; it ends in 5s without input or output"]
    clock.advance(5)
    assert door.stopped is not None and door.stopped[1] == "ended: idle timeout"


def test_the_maximum_duration_ends_a_busy_session(tmp_path):
    clock = Clock()
    audit = AuditLog(tmp_path / "audit.jsonl")
    gate = Gate(Runtime(), Policy(RULES), audit, LiveSessions(clock, Limits(idle_timeout=None, max_duration=30)))
    door = open_one(gate)
    for i in range(29):
        door.bytes = (i, i)
        clock.advance(1)
    assert door.stopped is None
    clock.advance(1)
    assert door.stopped == ("podshell: this session reached its maximum duration (30s)", "ended: maximum duration")
    audit.close()


def test_the_per_user_cap_refuses_the_next_and_counts_it(world):
    _, gate, metrics = world
    first, _second = open_one(gate), open_one(gate)
    with pytest.raises(Denied, match="alice has 2 sessions open, as many as one user may") as e:
        open_one(gate)
    assert e.value.kind is DenialKind.TOO_MANY
    assert metrics.registry.get_sample_value("podshell_ssh_limits_hit_total", {"limit": "max_sessions_per_user"}) == 1
    assert records(gate)[-1]["event"] == "denied"
    first.stop("bye", "exit code 0")
    open_one(gate)  # one left: room again


def test_no_timer_runs_while_nothing_is_open(world):
    clock, gate, _ = world
    assert clock.getDelayedCalls() == []
    door = open_one(gate)
    assert len(clock.getDelayedCalls()) == 1
    door.session.end("exit code 0")
    assert clock.getDelayedCalls() == []


def test_a_drain_with_nothing_open_is_over_at_once(world):
    _, gate, _ = world
    done = gate.live.drain(30)
    assert done.called
    with pytest.raises(Denied, match="shutting down") as e:
        open_one(gate)
    assert e.value.kind is DenialKind.UNAVAILABLE


def test_a_drain_tells_waits_for_the_grace_then_ends_what_is_left(world):
    clock, gate, _ = world
    stays, leaves = open_one(gate), open_one(gate)
    done = gate.live.drain(30)
    assert stays.told == leaves.told == ["podshell: the server is shutting down; this session ends in 30s"]
    leaves.stop("bye", "exit code 0")
    clock.advance(29)
    assert not done.called and stays.stopped is None
    clock.advance(1)
    assert stays.stopped == ("podshell: the server shut down", "ended: server shutdown")
    assert done.called and clock.getDelayedCalls() == []


def test_a_drain_is_over_when_the_last_session_ends(world):
    clock, gate, _ = world
    door = open_one(gate)
    done = gate.live.drain(30)
    clock.advance(2)
    door.stop("bye", "exit code 0")
    assert done.called and clock.getDelayedCalls() == []


class Output:
    """A command session's transport (WebSocket channels or SPDY streams)."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.finished = False

    def send(self, channel: int, data: bytes) -> None:
        self.sent.append((channel, data))

    def finish(self) -> None:
        self.finished = True


class Holder:
    def registerProducer(self, producer, streaming: bool) -> None:
        self.producer = producer


@pytest.mark.parametrize("tty", [True, False])
def test_an_api_exec_is_told_on_its_terminal_and_stopped_with_its_error(world, tty):
    clock, gate, _ = world
    granted = gate.enter(ALICE, "exec", "team-a/web-0", "127.0.0.1:5000", "api", ["sh"])
    output = Output()
    options = StreamOptions(stdin=True, stdout=True, stderr=not tty, tty=tty)
    session = CommandSession(output, rc.V5, options, granted.session, ["sh"])
    session.begin(lambda sink: CatProcess(clock, sink, ["sh"], {}, tty), Holder(), Valve(Holder()))
    session.stdin(b"abc")
    clock.advance(0)
    (one,) = gate.live
    assert one.bytes == (3, 3)
    one.session.door.tell("podshell: a line")
    told = [(rc.STDOUT, b"\r\npodshell: a line\r\n")] if tty else []
    assert output.sent[1:] == told
    gate.kill(OPS, "10.0.0.9:1", "api", one.session.id)
    assert output.sent[-1] == (rc.ERROR, rc.internal_error("podshell: an operator ended this session", rc.V5))
    assert output.finished
    clock.advance(0)  # the process, hung up, ends: nothing more is sent
    assert session.target.status == ExitStatus(signal="HUP")
    assert output.sent[-1][0] == rc.ERROR
    assert records(gate)[-1]["status"] == "ended by an operator"
