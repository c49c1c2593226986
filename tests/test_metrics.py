"""The server's metrics, counted where the audit log writes, and readiness,
on fakes (no root, no reactor)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

import h11
import pytest
from prometheus_client import generate_latest
from twisted.conch.ssh.keys import Key
from twisted.internet.testing import StringTransport
from twisted.web.test.requesthelper import DummyRequest

from podshell.auth.audit import AuditLog
from podshell.auth.gate import Denied, Gate
from podshell.auth.identity import Directory, Identity, User
from podshell.auth.policy import Policy, Rule
from podshell.core.contracts import Placement
from podshell.core.metrics import AuthMethod, FrontDoor, Metrics, Outcome
from podshell.core.target import NoSuchPod
from podshell.gateway.ssh.server import KeyChecker
from podshell.kube.front import HTTPError, by_credentials
from podshell.server.health import Readiness, site

ALICE = Identity("alice", frozenset({"dev"}))


class FakeRuntime:
    """One pod, team-a/web-0 with container app."""

    def container_names(self, namespace: str, name: str) -> list[str] | None:
        return ["app"] if (namespace, name) == ("team-a", "web-0") else None

    def resolve(self, namespace: str, pod: str, container: str | None = None) -> Placement:
        if (namespace, pod) != ("team-a", "web-0"):
            raise NoSuchPod(namespace, pod)
        return Placement(namespace, pod, container or "app", "podshell")

    def unreachable(self) -> list[str]:
        return []


@dataclass
class Thing:
    """A node agent or a runtime: C{problem} is None while it answers."""

    problem: str | None = None


@dataclass
class FakeListener:
    what: str
    description: str
    port: object | None = None


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture
def gate(metrics, tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl", metrics)
    policy = Policy([Rule(subjects=["group:dev"], verbs=["exec"], namespaces=["team-a"])])
    yield Gate(FakeRuntime(), policy, audit)
    audit.close()


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_sessions_are_counted_with_their_audit_records(gate, metrics):
    one = gate.enter(ALICE, "exec", "team-a.web-0", "127.0.0.1:5000", "ssh", ["ls"])
    two = gate.enter(ALICE, "exec", "team-a/web-0/app", "127.0.0.1:5001", "api", ["ls"])
    assert value(metrics, "podshell_sessions_started_total", front_door="ssh", verb="exec") == 1
    assert value(metrics, "podshell_sessions_started_total", front_door="api", verb="exec") == 1
    assert value(metrics, "podshell_sessions_active", front_door="ssh") == 1
    assert value(metrics, "podshell_session_start_seconds_count", front_door="ssh") == 1
    one.session.end("exit code 0", bytes_in=3, bytes_out=10)
    one.session.end("exit code 1")  # only the first end counts, as in the audit log
    two.session.end("exit code 2", bytes_in=1, bytes_out=2)
    assert value(metrics, "podshell_sessions_active", front_door="ssh") == 0
    assert value(metrics, "podshell_sessions_ended_total", front_door="ssh", verb="exec", outcome="ok") == 1
    assert value(metrics, "podshell_sessions_ended_total", front_door="ssh", verb="exec", outcome="error") == 0
    assert value(metrics, "podshell_sessions_ended_total", front_door="api", verb="exec", outcome="error") == 1
    assert value(metrics, "podshell_session_bytes_total", front_door="ssh", direction="in") == 3
    assert value(metrics, "podshell_session_bytes_total", front_door="ssh", direction="out") == 10


def test_denials_are_counted_by_kind(gate, metrics):
    with pytest.raises(Denied):
        gate.enter(Identity("eve"), "exec", "team-a.web-0", "127.0.0.1:5000", "ssh")
    with pytest.raises(Denied):
        gate.enter(ALICE, "exec", "team-a.nothing", "127.0.0.1:5000", "api")
    with pytest.raises(Denied):
        gate.enter(ALICE, "exec", "Bad_Name", "127.0.0.1:5000", "api")
    assert value(metrics, "podshell_denials_total", front_door="ssh", verb="exec", kind="forbidden") == 1
    assert value(metrics, "podshell_denials_total", front_door="api", verb="exec", kind="not-found") == 1
    assert value(metrics, "podshell_denials_total", front_door="api", verb="exec", kind="invalid") == 1
    assert value(metrics, "podshell_sessions_started_total", front_door="ssh", verb="exec") == 0


def test_an_audit_log_without_metrics_only_writes(tmp_path):
    audit = AuditLog(tmp_path / "audit.jsonl")
    gate = Gate(FakeRuntime(), Policy([Rule(subjects=["*"], verbs=["exec"], namespaces=["*"])]), audit)
    gate.enter(ALICE, "exec", "team-a.web-0", "127.0.0.1:5000", "ssh").session.end("exit code 0")
    with pytest.raises(Denied):
        gate.enter(ALICE, "exec", "team-a.nothing", "127.0.0.1:5000", "ssh")
    audit.close()
    assert len(audit.path.read_text().splitlines()) == 3


@pytest.mark.parametrize(
    "status, outcome",
    [
        ("exit code 0", Outcome.OK),
        ("closed", Outcome.OK),
        ("listening on 127.0.0.1:80 in the pod", Outcome.OK),
        ("exit code 3", Outcome.ERROR),
        ("signal KILL", Outcome.ERROR),
        ("failed: no such file", Outcome.FAILED),
        ("hung up", Outcome.GONE),
        ("client went away", Outcome.GONE),
        ("refused by the client: no", Outcome.GONE),
    ],
)
def test_outcomes(status, outcome):
    assert Outcome.of(status) is outcome


def test_front_doors():
    assert FrontDoor.of("ssh") is FrontDoor.SSH
    assert FrontDoor.of("api") is FrontDoor.API
    assert FrontDoor.of("gateway gw-1 (10.0.0.1:4000)") is FrontDoor.GATEWAY
    assert FrontDoor.of("carrier pigeon") is FrontDoor.OTHER


def test_authentication_failures_and_pod_listings(metrics):
    metrics.authentication_failed(FrontDoor.SSH, AuthMethod.PUBLICKEY)
    metrics.authentication_failed(FrontDoor.API, AuthMethod.TOKEN)
    metrics.authentication_failed(FrontDoor.API, AuthMethod.TOKEN)
    metrics.pods_listed("node-1", 0.004)
    assert value(metrics, "podshell_authentication_failures_total", front_door="ssh", method="publickey") == 1
    assert value(metrics, "podshell_authentication_failures_total", front_door="api", method="token") == 2
    assert value(metrics, "podshell_node_pod_list_seconds_count", node="node-1") == 1
    assert value(metrics, "podshell_node_pod_list_seconds_bucket", node="node-1", le="0.005") == 1


def test_nodes_and_runtime_are_read_when_scraped(metrics):
    one, two, runtime = Thing(), Thing("cannot reach node node-2"), Thing("does not answer")
    errors = [3]
    metrics.watch_nodes(lambda: [("node-1", one), ("node-2", two)])
    metrics.watch_runtime("cri", runtime, lambda: errors[0])
    assert value(metrics, "podshell_node_reachable", node="node-1") == 1
    assert value(metrics, "podshell_node_reachable", node="node-2") == 0
    assert value(metrics, "podshell_runtime_up", runtime="cri") == 0
    assert value(metrics, "podshell_runtime_errors_total", runtime="cri") == 3
    runtime.problem, two.problem, errors[0] = None, None, 4
    assert value(metrics, "podshell_node_reachable", node="node-2") == 1
    assert value(metrics, "podshell_runtime_up", runtime="cri") == 1
    assert value(metrics, "podshell_runtime_errors_total", runtime="cri") == 4
    text = generate_latest(metrics.registry).decode()
    assert 'podshell_node_reachable{node="node-1"} 1.0' in text
    assert value(metrics, "process_resident_memory_bytes") > 0  # the client's own process metrics


def test_expected_series_are_there_at_zero(metrics):
    metrics.expect([FrontDoor.SSH, FrontDoor.API], ["exec", "attach"])
    text = generate_latest(metrics.registry).decode()
    assert 'podshell_sessions_started_total{front_door="api",verb="attach"} 0.0' in text
    assert 'podshell_sessions_active{front_door="ssh"} 0.0' in text
    assert 'podshell_authentication_failures_total{front_door="ssh",method="publickey"} 0.0' in text
    assert 'podshell_authentication_failures_total{front_door="api",method="token"} 0.0' in text


def test_two_servers_count_apart():
    a, b = Metrics(), Metrics()
    a.authentication_failed(FrontDoor.SSH, AuthMethod.PUBLICKEY)
    assert value(b, "podshell_authentication_failures_total", front_door="ssh", method="publickey") == 0


def test_readiness():
    ssh = FakeListener("SSH", "tcp:2222", port=object())
    api = FakeListener("Kubernetes API", "tcp:8443")
    runtime = Thing()
    ready = Readiness([ssh, api], runtime)
    assert ready.reasons() == ["Kubernetes API is not listening on 'tcp:8443'"]
    api.port = object()
    assert ready.reasons() == []
    runtime.problem = "the container runtime at unix:///x.sock does not answer: no such file"
    assert ready.reasons() == ["runtime: the container runtime at unix:///x.sock does not answer: no such file"]


def test_a_gateway_is_ready_while_one_node_agent_answers():
    one, two = Thing("cannot reach node node-1"), Thing("cannot reach node node-2")
    ready = Readiness([FakeListener("SSH", "tcp:22", port=object())], nodes=lambda: [("node-1", one), ("node-2", two)])
    assert ready.reasons() == [
        "no node agent is reachable",
        "node node-1: cannot reach node node-1",
        "node node-2: cannot reach node node-2",
    ]
    two.problem = None
    assert ready.reasons() == []


def render(resource, path: bytes) -> tuple[int, bytes]:
    request = DummyRequest([path])
    child = resource.getChildWithDefault(path, request)
    body = child.render(request)
    return request.responseCode or 200, body


def test_health_and_readiness_resources(metrics):
    runtime = Thing("the runtime does not answer")
    root = site(metrics, Readiness([], runtime)).resource
    assert render(root, b"healthz") == (200, b"ok\n")
    assert render(root, b"readyz") == (503, b"runtime: the runtime does not answer\n")
    runtime.problem = None
    assert render(root, b"readyz") == (200, b"ok\n")
    metrics.authentication_failed(FrontDoor.API, AuthMethod.NONE)
    code, body = render(root, b"metrics")
    assert code == 200 and b'podshell_authentication_failures_total{front_door="api",method="none"} 1.0' in body


class Credentials:
    """A key-based SSH login attempt, as Conch hands it to the checker."""

    def __init__(self, blob: bytes, signature: bytes | None = None) -> None:
        self.blob, self.signature, self.sigData, self.username = blob, signature, b"data", b"team-a.web-0"


def test_failed_logins_are_counted_where_credentials_are_checked(metrics, tmp_path):
    known = Key.fromString(keygen_blob(tmp_path / "known"))
    stranger = Key.fromString(keygen_blob(tmp_path / "stranger"))
    directory = Directory.fromConfig(
        [User(name="alice", ssh_keys=[known.public().toString("OPENSSH").decode()], tokens=["0123456789abcdef0123"])],
        tmp_path,
    )
    checker = KeyChecker(directory, metrics)
    checker.requestAvatarId(Credentials(stranger.blob())).addErrback(lambda f: None)
    checker.requestAvatarId(Credentials(known.blob(), b"not a signature")).addErrback(lambda f: None)
    checker.requestAvatarId(Credentials(known.blob())).addErrback(lambda f: None)  # a query: no failure
    assert value(metrics, "podshell_authentication_failures_total", front_door="ssh", method="publickey") == 2

    authenticate = by_credentials(directory, metrics)
    ok = h11.Request(
        method="GET", target="/", headers=[("host", "x"), ("authorization", "Bearer 0123456789abcdef0123")]
    )
    assert authenticate(ok, StringTransport()).name == "alice"
    for headers in ([("host", "x"), ("authorization", "Bearer 0123456789abcdef0124")], [("host", "x")]):
        with pytest.raises(HTTPError):
            authenticate(h11.Request(method="GET", target="/", headers=headers), StringTransport())
    assert value(metrics, "podshell_authentication_failures_total", front_door="api", method="token") == 1
    assert value(metrics, "podshell_authentication_failures_total", front_door="api", method="none") == 1


def keygen_blob(path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.read_text()
