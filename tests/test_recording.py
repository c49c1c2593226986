"""Session recordings: the asciicast writer and its chain, verify, retention,
and what a rule's record mode does when the disk will not take them (on
Twisted's Clock, with the in-memory node)."""

from __future__ import annotations

import argparse
import io
import json
import os
import stat

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from podshell.auth.audit import AuditLog, Request
from podshell.auth.identity import Identity
from podshell.auth.policy import Access, Policy, Rule
from podshell.auth.recording import FLUSH_BYTES, Recorder, RecordingFailed, Retention, prune
from podshell.core.contracts import Grant, Placement, ProcessRequest, RecordMode
from podshell.core.metrics import Metrics
from podshell.core.process import ExitStatus, WindowSize
from podshell.gateway.routing import Cluster
from podshell.protocols.asciicast import data_bytes, read_events, verify
from podshell.server import recordings
from podshell.server.config import Config
from podshell.server.recordings import RecordingsError
from tests.support.memorynode import MemoryNode, MemoryPod

ALICE = Identity("alice", frozenset({"dev"}))


class Screen:
    """A front door's sink: what the client was sent."""

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.status: ExitStatus | None = None

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, status: ExitStatus) -> None:
        self.status = status


@pytest.fixture
def world(tmp_path):
    node = MemoryNode("n1", [MemoryPod("team-a", "web-0", {"app": "Running"})])
    metrics = Metrics()
    audit = AuditLog(tmp_path / "audit.jsonl", metrics)
    recorder = Recorder(node.clock, tmp_path / "rec", audit)
    yield node, Cluster([node], recorder), audit, recorder, tmp_path
    audit.close()


def grant(audit: AuditLog, mode: RecordMode, record_input: bool = False) -> Grant:
    request = Request(ALICE, "10.0.0.9:5555", "ssh", "exec", "team-a/web-0/app", ["sh"])
    session = audit.session(request, recorded=mode is not RecordMode.OFF)
    return Grant(Placement("team-a", "web-0", "app", "n1"), session, None, mode, record_input)


def audit_lines(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]


def test_a_terminal_session_is_asciicast_v2_equal_to_what_the_client_saw(world):
    node, cluster, audit, _, tmp_path = world
    g = grant(audit, RecordMode.REQUIRED)
    screen = Screen()
    request = ProcessRequest(("sh",), {"TERM": "xterm-256color"}, True, WindowSize(30, 100))
    process = cluster.process(g, request, screen)
    for chunk in (b"hello ", "caf\u00e9 \u2603".encode()[:-1], "caf\u00e9 \u2603".encode()[-1:], b"\xff raw\r\n"):
        process.write(chunk)
    node.clock.advance(0.5)
    process.resize(WindowSize(40, 120))
    process.closeStdin()
    node.clock.advance(1)
    assert screen.status == ExitStatus(code=0)
    path = tmp_path / "rec" / f"{g.session.id}.cast"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    head, events = read_events(path.read_bytes().splitlines())
    assert (head["version"], head["width"], head["height"], head["env"]) == (2, 100, 30, {"TERM": "xterm-256color"})
    fields = head["podshell"]
    assert (fields["kind"], fields["user"], fields["from"], fields["target"]) == (
        "terminal",
        "alice",
        "10.0.0.9:5555",
        "team-a/web-0/app",
    )
    assert (fields["session"], fields["command"], fields["input"]) == (g.session.id, ["sh"], False)
    output = b"".join(data_bytes(d) for _, code, d in events if code == "o")
    assert output == screen.out
    assert [d for _, code, d in events if code == "r"] == ["120x40"]
    assert not [e for e in events if e[1] == "i"]  # the rule did not ask for keystrokes
    assert events[-1][1:] == ("x", "exit code 0")
    assert verify(path.read_bytes(), (tmp_path / "rec" / f"{g.session.id}.cast.chain").read_bytes()).complete
    g.session.end("exit code 0")
    start, end = (a for a in audit_lines(tmp_path) if a["event"] in ("session.start", "session.end"))
    trailer = (tmp_path / "rec" / f"{g.session.id}.cast.chain").read_text().splitlines()[-1]
    assert start["recording"] == end["id"] == g.session.id
    assert trailer == f"end {len(events) + 1} {end['recording_sha256']}"


def test_input_is_recorded_when_the_rule_asks(world):
    node, cluster, audit, _, tmp_path = world
    g = grant(audit, RecordMode.BEST_EFFORT, record_input=True)
    process = cluster.process(g, ProcessRequest(("sh",), tty=True), Screen())
    process.write(b"secret\r")
    process.closeStdin()
    node.clock.advance(1)
    _, events = read_events((tmp_path / "rec" / f"{g.session.id}.cast").read_bytes().splitlines())
    assert [d for _, code, d in events if code == "i"] == ["secret\r"]


def test_a_command_without_a_terminal_keeps_its_streams_apart(world):
    node, cluster, audit, _, tmp_path = world
    g = grant(audit, RecordMode.REQUIRED)
    screen = Screen()
    process = cluster.process(g, ProcessRequest(("cat",)), screen)
    process.write(b"in\n")
    node.processes[-1].sink.errReceived(b"warning\n")
    process.closeStdin()
    node.clock.advance(1)
    head, events = read_events((tmp_path / "rec" / f"{g.session.id}.cast").read_bytes().splitlines())
    assert head["podshell"]["kind"] == "exec" and "env" not in head
    assert [(c, d) for _, c, d in events] == [("i", "in\n"), ("o", "in\n"), ("e", "warning\n"), ("x", "exit code 0")]
    assert screen.err == b"warning\n"


def test_events_are_flushed_within_a_second_and_at_64k(world):
    node, cluster, audit, _, tmp_path = world
    g = grant(audit, RecordMode.REQUIRED)
    process = cluster.process(g, ProcessRequest(("cat",), tty=True), Screen())
    path = tmp_path / "rec" / f"{g.session.id}.cast"
    written = path.stat().st_size  # the header, at once
    process.write(b"x")
    assert path.stat().st_size == written
    node.clock.advance(1)
    assert path.stat().st_size > written
    written = path.stat().st_size
    process.write(b"y" * FLUSH_BYTES)
    assert path.stat().st_size > written + FLUSH_BYTES  # no second waited for
    # Each flush keeps the chain with the cast: a crash now leaves a verifiable prefix.
    verdict = verify(path.read_bytes(), (tmp_path / "rec" / f"{g.session.id}.cast.chain").read_bytes())
    assert verdict.ok and not verdict.complete


def test_verify_notices_one_changed_byte(world):
    node, cluster, audit, _, tmp_path = world
    g = grant(audit, RecordMode.REQUIRED)
    process = cluster.process(g, ProcessRequest(("cat",), tty=True), Screen())
    process.write(b"rm -rf /tmp/evidence\r\n")
    process.closeStdin()
    node.clock.advance(1)
    path = tmp_path / "rec" / f"{g.session.id}.cast"
    args = argparse.Namespace(dir=str(tmp_path / "rec"), config=None, id=g.session.id[:8])
    assert recordings.run_verify(args, io.StringIO()) == 0
    data = bytearray(path.read_bytes())
    where = data.index(b"evidence")
    data[where] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(RecordingsError, match="TAMPERED: line 2: changed"):
        recordings.run_verify(args)
    data[where] ^= 0x01
    path.write_bytes(bytes(data) + b'[9, "o", "appended"]\n')
    with pytest.raises(RecordingsError, match="TAMPERED: line 4: not in the chain"):
        recordings.run_verify(args)


def test_required_with_an_unwritable_directory_refuses_the_session(world):
    node, cluster, audit, _, tmp_path = world
    (tmp_path / "rec").write_text("a file where the directory should be")
    g = grant(audit, RecordMode.REQUIRED)
    with pytest.raises(RecordingFailed, match="must be recorded, and cannot be"):
        cluster.process(g, ProcessRequest(("sh",), tty=True), Screen())
    assert node.processes == []
    failed = [a for a in audit_lines(tmp_path) if a["event"] == "recording.failed"]
    assert failed[0]["mode"] == "required" and failed[0]["id"] == g.session.id
    assert audit.metrics is not None
    assert audit.metrics.recording_failures.labels("required")._value.get() == 1


def test_best_effort_goes_on_without_the_recording(world):
    node, cluster, audit, _, tmp_path = world
    (tmp_path / "rec").write_text("not a directory")
    g = grant(audit, RecordMode.BEST_EFFORT)
    screen = Screen()
    process = cluster.process(g, ProcessRequest(("sh",), tty=True), screen)
    process.write(b"hi")
    process.closeStdin()
    node.clock.advance(1)
    assert screen.out == b"hi" and screen.status == ExitStatus(code=0)
    assert [a["event"] for a in audit_lines(tmp_path)][-1] == "recording.failed"
    assert audit.metrics is not None
    assert audit.metrics.recording_failures.labels("best-effort")._value.get() == 1


def test_a_required_recording_that_fails_mid_session_ends_it(world, monkeypatch):
    node, cluster, audit, recorder, _ = world
    g = grant(audit, RecordMode.REQUIRED)
    screen = Screen()
    process = cluster.process(g, ProcessRequest(("cat",), tty=True), screen)

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    process.write(b"more")
    node.clock.advance(1)
    monkeypatch.undo()
    node.clock.advance(1)
    assert b"session ended: the recording failed: No space left on device" in screen.err
    assert screen.status == ExitStatus(signal="HUP")
    assert recorder.recording == {}


def test_off_records_nothing(world):
    _, cluster, audit, _, tmp_path = world
    cluster.process(grant(audit, RecordMode.OFF), ProcessRequest(("sh",), tty=True), Screen())
    assert not (tmp_path / "rec").exists()


class Client(Protocol):
    """The front door's end of a forwarded connection."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


def test_a_port_forward_records_each_connection_and_its_bytes(world):
    node, cluster, audit, _, tmp_path = world
    node.pods_here[0].listening.add(8080)
    g = grant(audit, RecordMode.REQUIRED)
    for sent, answer in [(b"GET /", b"200 OK, hello"), (b"x" * 10, b"")]:
        protocol = cluster.connect(g, 8080, Factory.forProtocol(Client), "localhost").result
        protocol.transport.write(sent)
        protocol.dataReceived(answer)
        assert node.sockets[-1][1].value() == sent and protocol.received == answer
        protocol.connectionLost(Failure(ConnectionDone()))
    g.session.end("closed")
    path = tmp_path / "rec" / f"{g.session.id}.cast"
    head, events = read_events(path.read_bytes().splitlines())
    assert (head["podshell"]["kind"], head["podshell"]["command"]) == ("forward", ["localhost:8080"])
    assert [(c, d) for _, c, d in events] == [
        ("c", "1 localhost:8080"),
        ("d", "1 5 13"),
        ("c", "2 localhost:8080"),
        ("d", "2 10 0"),
    ]
    assert verify(path.read_bytes(), (tmp_path / "rec" / f"{g.session.id}.cast.chain").read_bytes()).complete
    assert audit_lines(tmp_path)[-1]["recording_sha256"]


def test_a_required_forward_is_refused_when_it_cannot_be_recorded(world):
    node, cluster, audit, _, tmp_path = world
    node.pods_here[0].listening.add(8080)
    (tmp_path / "rec").write_text("not a directory")
    d = cluster.connect(grant(audit, RecordMode.REQUIRED), 8080, Factory.forProtocol(Client), "localhost")
    with pytest.raises(RecordingFailed):
        d.result.raiseException()
    d.addErrback(lambda f: None)
    assert node.sockets == []


def test_the_strictest_allowing_rule_decides(tmp_path):
    rules = [
        Rule(subjects=["*"], verbs=["*"], namespaces=["*"], record=RecordMode.BEST_EFFORT),
        Rule(subjects=["group:dev"], verbs=["exec"], namespaces=["team-a"], record="required", record_input=True),
    ]
    decision = Policy(rules).decide(Access(ALICE, "exec", "team-a", "web-0", "app"))
    assert (decision.record, decision.record_input) == (RecordMode.REQUIRED, True)
    other = Policy(rules).decide(Access(ALICE, "exec", "team-b", "web-0", "app"))
    assert (other.record, other.record_input) == (RecordMode.BEST_EFFORT, False)


def test_retention_by_age_then_size_spares_open_recordings(tmp_path):
    for i, rid in enumerate(["old", "mid", "new", "busy"]):
        (tmp_path / f"{rid}.cast").write_bytes(b"x" * 100)
        (tmp_path / f"{rid}.cast.chain").write_bytes(b"y" * 100)
        os.utime(tmp_path / f"{rid}.cast", (1000 + i * 100, 1000 + i * 100))
    os.utime(tmp_path / "busy.cast", (0, 0))
    removed = prune(tmp_path, Retention(max_age=350, max_bytes=450), now=1400, busy={"busy"})
    assert removed == ["old", "mid"]  # old by age (400s), mid for size (600 bytes > 450)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy.cast", "busy.cast.chain", "new.cast", "new.cast.chain"]


def test_recordings_config_is_checked():
    config = Config.model_validate({"recordings": {"dir": "/var/rec", "retention": {"max_age": "7d"}}})
    assert config.recordings.retention.limits() == Retention(7 * 86400, 10 * 1024**3)
    with pytest.raises(ValueError, match="not a duration like 30d"):
        Config.model_validate({"recordings": {"retention": {"max_age": "a month"}}})
    with pytest.raises(ValueError, match="not a size like 10G"):
        Config.model_validate({"recordings": {"retention": {"max_bytes": "lots"}}})
    with pytest.raises(ValueError, match="record"):
        Config.model_validate({"policy": [{"subjects": ["*"], "verbs": ["*"], "namespaces": ["*"], "record": "yes"}]})


def test_list_filters_by_user_pod_and_time(world, capsys):
    node, cluster, audit, _, tmp_path = world
    g = grant(audit, RecordMode.REQUIRED)
    cluster.process(g, ProcessRequest(("sh",), tty=True), Screen()).closeStdin()
    node.clock.advance(1)

    def listed(**kw) -> str:
        args = argparse.Namespace(dir=str(tmp_path / "rec"), config=None, user=None, pod=None, since=None)
        vars(args).update(kw)
        recordings.run_list(args)
        return capsys.readouterr().out

    assert g.session.id in listed() and "alice  team-a/web-0/app  terminal  sh" in listed()
    assert listed(user="bob") == listed(pod="db-*") == listed(since="2999-01-01") == ""
    assert g.session.id in listed(user="alice", pod="web-*", since="1h")
