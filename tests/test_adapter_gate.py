"""The gate on nodes in memory: names, policy, existence, unreachable nodes
and the audit log, with no root and no pods."""

from __future__ import annotations

import json

import pytest

from podshell.auth.audit import AuditLog
from podshell.auth.gate import Denied, Gate
from podshell.auth.identity import Identity
from podshell.auth.policy import Policy, Rule
from podshell.core.contracts import Placement
from podshell.core.denial import DenialKind
from podshell.gateway.routing import Cluster

from .support.memorynode import MemoryNode, MemoryPod

ALICE = Identity("alice", frozenset({"dev"}))
EVE = Identity("eve")

RULES = [Rule(subjects=["group:dev"], verbs=["exec", "port-forward"], namespaces=["team-a"], containers=["app"])]


def nodes() -> list[MemoryNode]:
    return [
        MemoryNode(
            "n1",
            [
                MemoryPod("team-a", "web-0", {"app": "Running", "log": "Running"}),
                MemoryPod("team-a", "broken", {"app": "Error"}),
            ],
        ),
        MemoryNode("n2", [MemoryPod("team-b", "db-0", {"db": "Running"})]),
    ]


@pytest.fixture
def audit(tmp_path):
    log = AuditLog(tmp_path / "audit.jsonl")
    yield log
    log.close()


def records(audit: AuditLog) -> list[dict]:
    return [json.loads(line) for line in audit.path.read_text().splitlines()]


def test_a_grant_names_the_node_that_runs_the_container(audit):
    gate = Gate(
        Cluster(nodes()), Policy([*RULES, Rule(subjects=["user:alice"], verbs=["exec"], namespaces=["*"])]), audit
    )
    granted = gate.enter(ALICE, "exec", "team-b.db-0", "10.0.0.1:22", "api", ["ls"])
    assert (granted.handle.path, granted.handle.node) == ("team-b/db-0/db", "n2")
    granted.session.end("exit code 0", bytes_in=1, bytes_out=2)
    start, end = records(audit)
    assert (start["event"], end["event"], start["id"]) == ("session.start", "session.end", end["id"])
    assert (end["target"], end["via"], end["command"], end["bytes_out"]) == ("team-b/db-0/db", "api", ["ls"], 2)


@pytest.mark.parametrize(
    "who, verb, target, message",
    [
        (ALICE, "exec", "team-a.web-0.log", "alice may not exec in team-a/web-0/log"),
        (ALICE, "attach", "team-a/web-0", "alice may not attach in team-a/web-0/app"),
        (ALICE, "exec", "team-b/db-0", "alice may not exec in team-b/db-0/db"),
        (ALICE, "exec", "team-a.web-1", "no pod team-a/web-1"),
        (ALICE, "exec", "team-a/web-0/nope", "pod team-a/web-0 has no container 'nope' (it has: app, log)"),
        (ALICE, "exec", "team-a/broken", "container 'app' of pod team-a/broken is not running (Error)"),
        (EVE, "exec", "team-a.web-1", "eve may not exec in team-a/web-1"),
        (EVE, "exec", "team-a.web-0", "eve may not exec in team-a/web-0"),
    ],
)
def test_denials_are_clear_audited_and_hide_existence_from_strangers(audit, who, verb, target, message):
    gate = Gate(Cluster(nodes()), Policy(RULES), audit)
    with pytest.raises(Denied) as info:
        gate.enter(who, verb, target, "[::1]:4000", "ssh")
    assert str(info.value).startswith(message)
    (record,) = records(audit)
    assert (record["event"], record["user"], record["from"]) == ("denied", who.name, "[::1]:4000")


@pytest.mark.parametrize(
    "who, target, kind",
    [
        (ALICE, "team-a.web-1", DenialKind.NOT_FOUND),
        (ALICE, "team-a/broken", DenialKind.UNAVAILABLE),
        (ALICE, "Team-A.x", DenialKind.INVALID),
    ],
)
def test_denials_say_their_kind_for_front_doors_with_status_codes(audit, who, target, kind):
    with pytest.raises(Denied) as info:
        Gate(Cluster(nodes()), Policy(RULES), audit).enter(who, "exec", target, "127.0.0.1:1", "api")
    assert info.value.kind is kind


def test_a_pod_not_found_may_be_on_a_node_that_cannot_be_reached(audit):
    down = nodes()
    down[1].problem = "connection refused"
    gate = Gate(Cluster(down), Policy(RULES), audit)
    with pytest.raises(Denied) as info:
        gate.enter(ALICE, "exec", "team-a/web-9", "127.0.0.1:1", "ssh")
    assert str(info.value) == "no pod team-a/web-9; node n2 is unreachable (connection refused)"
    with pytest.raises(Denied) as info:  # a container not found is not on another node
        gate.enter(ALICE, "exec", "team-a/web-0/nope", "127.0.0.1:1", "ssh")
    assert "unreachable" not in str(info.value)


def test_a_pod_on_two_nodes_is_refused_with_both_named(audit):
    twice = [*nodes(), MemoryNode("n3", [MemoryPod("team-a", "web-0", {"app": "Running"})])]
    gate = Gate(Cluster(twice), Policy(RULES), audit)
    with pytest.raises(Denied) as info:
        gate.enter(ALICE, "exec", "team-a/web-0", "127.0.0.1:1", "ssh")
    assert "reported by nodes n1 and n3" in str(info.value)


def test_a_login_needs_some_verb_there_and_never_counts_logs(audit):
    gate = Gate(Cluster(nodes()), Policy([Rule(subjects=["user:eve"], verbs=["logs"], namespaces=["team-a"])]), audit)
    with pytest.raises(Denied) as info:
        gate.locate(EVE, "team-a.web-0", "127.0.0.1:1", "ssh")
    assert str(info.value) == "eve has no access to team-a/web-0"
    target = Gate(Cluster(nodes()), Policy(RULES), audit).locate(ALICE, "team-a.web-0", "127.0.0.1:1", "ssh")
    assert (target.namespace, target.pod) == ("team-a", "web-0")


def test_port_forward_is_pod_wide_and_logs_may_reach_a_stopped_container(audit):
    gate = Gate(
        Cluster(nodes()), Policy([*RULES, Rule(subjects=["user:alice"], verbs=["logs"], namespaces=["*"])]), audit
    )
    gate.enter(ALICE, "port-forward", "team-a/web-0", "127.0.0.1:1", "api")
    assert records(audit)[0]["target"] == "team-a/web-0"

    def stopped_too(namespace: str, pod: str, container: str | None) -> Placement:
        """Where a container is, running or not, as pods/log asks."""
        return Placement(namespace, pod, container or "app", "n1")

    granted = gate.enter(ALICE, "logs", "team-a/broken", "127.0.0.1:1", "api", resolve=stopped_too)
    assert granted.handle.path == "team-a/broken/app"
