"""The gate every front door uses: names, policy, existence, and the audit log."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from podshell.auth.audit import AuditLog
from podshell.auth.gate import Denied, Gate
from podshell.auth.identity import Identity
from podshell.auth.policy import Policy, Rule
from podshell.core.denial import DenialKind
from podshell.gateway.routing import Cluster
from podshell.node.inprocess import LocalNode

from .conftest import needs_root, pod, wait_for

pytestmark = needs_root

ALICE = Identity("alice", frozenset({"dev"}))
EVE = Identity("eve")

PODS = [
    pod(
        "web-0",
        {"name": "app", "command": ["sleep", "600"]},
        {"name": "log", "command": ["sleep", "600"]},
        namespace="team-a",
    ),
    pod("broken", {"name": "app", "command": ["false"]}, namespace="team-a", restartPolicy="Never"),
    pod("db-0", {"name": "db", "command": ["sleep", "600"]}, namespace="team-b"),
]


@pytest_twisted.async_yield_fixture
async def gate(start_pods, spawner, tmp_path):
    runtime = await start_pods(PODS)
    await wait_for(lambda: runtime.pod("team-a", "broken").phase == "Failed")
    policy = Policy(
        [
            Rule(subjects=["group:dev"], verbs=["exec", "port-forward"], namespaces=["team-a"], containers=["app"]),
        ]
    )
    audit = AuditLog(tmp_path / "audit.jsonl")
    yield Gate(Cluster([LocalNode("podshell", runtime, spawner)]), policy, audit)
    audit.close()


def records(gate: Gate) -> list[dict]:
    return [json.loads(line) for line in gate.audit.path.read_text().splitlines()]


@pytest_twisted.ensureDeferred
async def test_granted_sessions_are_audited_from_start_to_end(gate):
    granted = gate.enter(ALICE, "exec", "team-a.web-0", "127.0.0.1:5000", "ssh", ["ls", "-l"])
    assert granted.handle.path == "team-a/web-0/app"  # the default container
    granted.session.end("exit code 0", bytes_in=3, bytes_out=10)
    granted.session.end("exit code 1")  # only the first end counts
    start, end = records(gate)
    assert start["event"] == "session.start" and end["event"] == "session.end"
    assert start["id"] == end["id"]
    for r in (start, end):
        assert (r["user"], r["groups"], r["from"], r["via"], r["verb"], r["target"], r["command"]) == (
            "alice",
            ["dev"],
            "127.0.0.1:5000",
            "ssh",
            "exec",
            "team-a/web-0/app",
            ["ls", "-l"],
        )
    assert (end["status"], end["bytes_in"], end["bytes_out"]) == ("exit code 0", 3, 10)
    assert end["seconds"] >= 0 and end["start"] == start["start"]


@pytest.mark.parametrize(
    "who, verb, target, message, kind",
    [
        (ALICE, "exec", "team-a.web-0.log", "alice may not exec in team-a/web-0/log", DenialKind.FORBIDDEN),
        (ALICE, "attach", "team-a/web-0", "alice may not attach in team-a/web-0/app", DenialKind.FORBIDDEN),
        (ALICE, "exec", "team-b/db-0", "alice may not exec in team-b/db-0/db", DenialKind.FORBIDDEN),
        (
            ALICE,
            "exec",
            "team-a.web-1",
            "no pod team-a/web-1",
            DenialKind.NOT_FOUND,
        ),  # allowed there: existence may be told
        (ALICE, "exec", "team-a/web-0/nope", "pod team-a/web-0 has no container 'nope'", DenialKind.INVALID),
        (
            ALICE,
            "exec",
            "team-a/broken",
            "container 'app' of pod team-a/broken is not running (Error)",
            DenialKind.UNAVAILABLE,
        ),
        (
            EVE,
            "exec",
            "team-a.web-1",
            "eve may not exec in team-a/web-1",
            DenialKind.FORBIDDEN,
        ),  # not allowed: no hint of existence
        (EVE, "exec", "team-z/anything", "eve may not exec in team-z/anything", DenialKind.FORBIDDEN),
        (
            ALICE,
            "exec",
            "Team-A.web",
            "invalid target 'Team-A.web': namespace 'Team-A' must be lower-case",
            DenialKind.INVALID,
        ),
    ],
)
def test_denials_are_clear_and_audited(gate, who, verb, target, message, kind):
    with pytest.raises(Denied) as info:
        gate.enter(who, verb, target, "[::1]:4000", "ssh")
    assert str(info.value).startswith(message) and info.value.kind is kind
    (record,) = records(gate)
    assert record["event"] == "denied" and record["user"] == who.name and record["from"] == "[::1]:4000"
    assert record["reason"]


def test_port_forward_is_pod_wide(gate):
    granted = gate.enter(ALICE, "port-forward", "team-a/web-0", "127.0.0.1:1", "api")
    assert records(gate)[0]["target"] == "team-a/web-0"
    assert (granted.handle.pod, granted.handle.node) == ("web-0", "podshell")


@pytest_twisted.ensureDeferred
async def test_a_user_to_run_as_is_checked_at_the_gate_for_every_front_door(gate):
    # A group after the user, or a uid spelt twice, would run as another than the policy saw.
    for bad in ("app:0", "00", "a b", ""):
        with pytest.raises(Denied) as denied:
            gate.enter(ALICE, "exec", "team-a.web-0", "127.0.0.1:5000", "api", ["id"], run_as=bad or "-")
        assert denied.value.kind is DenialKind.INVALID
        assert "must be a uid (no leading zeros) or a name" in str(denied.value)
    with pytest.raises(Denied) as denied:
        gate.enter(ALICE, "exec", "team-a.web-0", "127.0.0.1:5000", "api", ["id"], run_as="0")
    assert (
        denied.value.kind is DenialKind.FORBIDDEN and str(denied.value) == "alice may not exec in team-a/web-0/app as 0"
    )
    assert records(gate)[-1]["run_as"] == "0"
