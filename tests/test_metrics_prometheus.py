"""The metrics listener, scraped by a real Prometheus (Debian's 2.42) while
real OpenSSH sessions run; /healthz and /readyz, ready or not."""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
import types
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from podshell.core import kubeconfig

from .conftest import needs_root, pod
from .sshserver import TWISTD, Client, PodshellServer, free_port, keygen, wait_port
from .support.cluster import podshell, wait_log
from .support.kubectl import kubectl_binary
from .support.waiting import wait_until

pytestmark = needs_root

PROMETHEUS = shutil.which("prometheus")
SESSIONS = 3
TOKEN = "alice-token-0123456789abcdef"


def get(url: str, headers: dict[str, str] | None = None, ca: Path | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    context = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        with urllib.request.urlopen(request, timeout=10, context=context) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    keys = {name: keygen(root / f"id_{name}") for name in ("alice", "eve")}
    users = [
        {"name": "alice", "groups": ["dev"], "ssh_keys": [keys["alice"]], "tokens": [TOKEN]},
        {"name": "eve", "ssh_keys": [keys["eve"]]},
    ]
    policy = [{"subjects": ["group:dev"], "verbs": ["*"], "namespaces": ["team-a"]}]
    pods = [pod("web-0", {"name": "app", "command": ["sleep", "3600"]}, namespace="team-a")]
    metrics_port, api_port = free_port(), free_port()
    srv = PodshellServer(
        root,
        pods,
        users,
        policy,
        api=f"ssl:{api_port}:interface=127.0.0.1",
        metrics=f"tcp:{metrics_port}:interface=127.0.0.1",
    )
    try:
        srv.wait_ready(containers=1)
        wait_port(metrics_port)
        srv.metrics_url = f"http://127.0.0.1:{metrics_port}"
        srv.api_url = f"https://127.0.0.1:{api_port}"
        srv.metrics_port = metrics_port
        srv.kubeconfig = root / "kubeconfig"
        srv.ca = root / "state" / "ca.crt"
        wait_port(api_port)
        ca = srv.ca.read_bytes()
        kubeconfig.write(srv.kubeconfig, kubeconfig.render(srv.api_url, "alice", TOKEN, ca, "team-a"))
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def prometheus(server):
    """Prometheus scraping the server every second; killed and its data removed after."""
    if PROMETHEUS is None:
        pytest.fail("no prometheus: run scripts/test-deps.sh as root, which installs it")
    where = Path(tempfile.mkdtemp(prefix="podshell-prometheus-"))
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": "podshell", "static_configs": [{"targets": [f"127.0.0.1:{server.metrics_port}"]}]}
        ],
    }
    (where / "prometheus.yml").write_text(yaml.safe_dump(config))
    argv = [
        PROMETHEUS,
        f"--config.file={where / 'prometheus.yml'}",
        f"--storage.tsdb.path={where / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    log = (where / "prometheus.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=where)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"prometheus exited: {(where / 'prometheus.log').read_text()}")
            try:
                return get(f"{url}/-/ready")[0] == 200
            except OSError:
                return False

        wait_until(ready, 30, "prometheus to be ready")
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(where, ignore_errors=True)


def query(prometheus: str, promql: str) -> dict[tuple[tuple[str, str], ...], float]:
    """The instant vector C{promql}, by its labels (without job and instance)."""
    status, body = get(f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
    assert status == 200, body
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    out = {}
    for series in answer["data"]["result"]:
        labels = tuple(sorted((k, v) for k, v in series["metric"].items() if k not in ("job", "instance")))
        out[labels] = float(series["value"][1])
    return out


def scalar(prometheus: str, promql: str) -> float | None:
    found = query(prometheus, promql)
    return next(iter(found.values())) if len(found) == 1 else None


def test_prometheus_scrapes_sessions_denials_and_failed_logins(server, prometheus):
    alice = Client(server, server.root / "id_alice")
    for i in range(SESSIONS):
        done = alice.ssh("team-a.web-0", f"echo {i}; exit {i}")
        assert (done.returncode, done.stdout) == (i, f"{i}\n".encode()), done.stderr
    denied = Client(server, server.root / "id_eve").ssh("team-a.web-0", "true")
    assert denied.returncode == 255 and b"eve" in denied.stderr, denied.stderr
    stranger = Client(server, server.root / "id_eve")
    stranger.key = server.root / "id_stranger"
    keygen(stranger.key)
    assert stranger.ssh("team-a.web-0", "true").returncode == 255  # a key nobody has
    status, _ = get(f"{server.api_url}/api/v1/pods", {"Authorization": "Bearer not-a-token-at-all"}, server.ca)
    assert status == 401
    env = {**os.environ, "KUBECONFIG": str(server.kubeconfig)}
    kubectl = [kubectl_binary(None), "exec", "web-0", "--", "echo", "from kubectl"]
    done = subprocess.run(kubectl, env=env, capture_output=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, b"from kubectl\n"), done.stderr

    started = 'podshell_sessions_started_total{front_door="ssh",verb="exec"}'
    wait_until(lambda: scalar(prometheus, started) == SESSIONS, 30, "prometheus to see the sessions")
    ended = query(prometheus, 'podshell_sessions_ended_total{front_door="ssh"}')
    outcomes = {dict(labels)["outcome"]: v for labels, v in ended.items()}
    assert outcomes == {"ok": 1, "error": SESSIONS - 1}, ended
    assert scalar(prometheus, 'podshell_sessions_active{front_door="ssh"}') == 0
    assert scalar(prometheus, 'podshell_session_bytes_total{front_door="ssh",direction="out"}') == 2 * SESSIONS
    assert scalar(prometheus, 'podshell_session_start_seconds_count{front_door="ssh"}') == SESSIONS
    # eve's login: the gate refuses her at the name (she may do nothing there).
    denials = query(prometheus, 'podshell_denials_total{front_door="ssh"}')
    assert {dict(k)["kind"]: v for k, v in denials.items()} == {"forbidden": 1}, denials
    failures = query(prometheus, "podshell_authentication_failures_total")
    methods = {(dict(k)["front_door"], dict(k)["method"]): v for k, v in failures.items()}
    assert methods[("ssh", "publickey")] >= 1 and methods[("api", "token")] == 1, methods
    by_door = query(prometheus, 'sum by (front_door) (podshell_sessions_started_total{verb="exec"})')
    assert {dict(k)["front_door"]: v for k, v in by_door.items()} == {"ssh": SESSIONS, "api": 1}, by_door
    assert scalar(prometheus, 'podshell_runtime_up{runtime="local"}') == 1
    assert scalar(prometheus, 'up{job="podshell"}') == 1


def test_health_and_readiness(server):
    assert get(f"{server.metrics_url}/healthz") == (200, "ok\n")
    assert get(f"{server.metrics_url}/readyz") == (200, "ok\n")
    status, body = get(f"{server.metrics_url}/metrics")
    assert status == 200 and "# TYPE podshell_sessions_started_total counter" in body


def test_not_ready_while_the_runtime_does_not_answer(tmp_path):
    metrics_port = free_port()
    srv = PodshellServer(
        tmp_path,
        [],
        [{"name": "alice", "ssh_keys": [keygen(tmp_path / "id_alice")]}],
        [],
        runtime={"kind": "cri", "endpoint": "unix:///nonexistent.sock"},
        metrics=f"tcp:{metrics_port}:interface=127.0.0.1",
    )
    try:
        srv.wait_ready(containers=0)
        wait_port(metrics_port)
        url = f"http://127.0.0.1:{metrics_port}"
        wait_until(lambda: "does not answer" in get(f"{url}/readyz")[1], 30, "the runtime's failure")
        status, body = get(f"{url}/readyz")
        assert status == 503
        assert body.startswith("runtime: the container runtime at unix:///nonexistent.sock does not answer"), body
        assert body.endswith("\n") and body.count("\n") == 1, body
        assert get(f"{url}/healthz") == (200, "ok\n")
        _, text = get(f"{url}/metrics")
        assert 'podshell_runtime_up{runtime="cri"} 0.0' in text
        errors = next(line for line in text.splitlines() if line.startswith("podshell_runtime_errors_total"))
        assert float(errors.split()[-1]) >= 1
    finally:
        srv.stop()


def sample(url: str, name: str, **labels: str) -> float | None:
    """One sample of the server's /metrics, None if it has none."""
    status, text = get(f"{url}/metrics")
    assert status == 200, text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


def twistd(root: Path, name: str, config: dict) -> subprocess.Popen:
    (root / name).mkdir(exist_ok=True)
    (root / name / "podshell.yaml").write_text(yaml.safe_dump(config))
    log = (root / name / "twistd.log").open("wb")
    argv = [TWISTD, "-n", "--pidfile=", "podshell", "--config", str(root / name / "podshell.yaml")]
    return subprocess.Popen(argv, cwd=root / name, stdout=log, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_gateway_counts_its_node_agents(tmp_path):
    """A gateway and a node agent on loopback, and a node agent that never answers."""
    podshell("ca", "init", "--dir", "pki", cwd=tmp_path)
    podshell("ca", "issue", "--dir", "pki", "--name", "gw-1", "--role", "gateway", cwd=tmp_path)
    podshell("ca", "issue", "--dir", "pki", "--name", "node-1", "--role", "node", "--san", "127.0.0.1", cwd=tmp_path)
    (tmp_path / "node-1").mkdir()
    pods = [pod("web-0", {"name": "app", "command": ["sleep", "3600"]}, namespace="team-a")]
    (tmp_path / "node-1" / "pods.yaml").write_text(yaml.safe_dump_all(pods))
    node_port, nowhere, ssh_port, gw_metrics, node_metrics = (free_port() for _ in range(5))
    tls = {"ca": "../pki/ca.crt", "key": "../pki/{}.key", "cert": "../pki/{}.crt"}
    key = tmp_path / "id_alice"
    procs = []
    try:
        procs.append(
            twistd(
                tmp_path,
                "node-1",
                {
                    "role": "node",
                    "state_dir": "./state",
                    "node": {"name": "node-1", "listen": f"tcp:{node_port}:interface=127.0.0.1"},
                    "tls": {k: v.format("node-1") for k, v in tls.items()},
                    "runtime": {"pods": "./pods.yaml"},
                    "metrics": {"listen": f"tcp:{node_metrics}:interface=127.0.0.1"},
                },
            )
        )
        wait_log(tmp_path / "node-1" / "twistd.log", r"container \S+ started")
        procs.append(
            twistd(
                tmp_path,
                "gw",
                {
                    "role": "gateway",
                    "state_dir": "./state",
                    "ssh": {"listen": f"tcp:{ssh_port}:interface=127.0.0.1"},
                    "users": [{"name": "alice", "groups": ["dev"], "ssh_keys": [keygen(key)]}],
                    "policy": [{"subjects": ["group:dev"], "verbs": ["*"], "namespaces": ["team-a"]}],
                    "tls": {k: v.format("gw-1") for k, v in tls.items()},
                    "nodes": [
                        {"name": "node-1", "address": f"127.0.0.1:{node_port}"},
                        {"name": "node-2", "address": f"127.0.0.1:{nowhere}"},
                    ],
                    "refresh": 0.5,
                    "metrics": {"listen": f"tcp:{gw_metrics}:interface=127.0.0.1"},
                },
            )
        )
        gw_log = tmp_path / "gw" / "twistd.log"
        wait_log(gw_log, r"node node-1 at \S+: 1 pods")
        gw, node = f"http://127.0.0.1:{gw_metrics}", f"http://127.0.0.1:{node_metrics}"
        wait_port(gw_metrics)
        wait_port(node_metrics)
        wait_until(lambda: sample(gw, "podshell_node_reachable", node="node-1") == 1, 15, "node-1 to be reachable")
        assert sample(gw, "podshell_node_reachable", node="node-2") == 0
        wait_until(lambda: (sample(gw, "podshell_node_pod_list_seconds_count", node="node-1") or 0) >= 2, 15, "lists")
        assert sample(gw, "podshell_node_pod_list_seconds_count", node="node-2") is None  # never answered
        assert get(f"{gw}/readyz") == (200, "ok\n")
        assert get(f"{node}/readyz") == (200, "ok\n")

        host_key = (tmp_path / "gw" / "state" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        where = types.SimpleNamespace(port=ssh_port, known_hosts=tmp_path / "known_hosts")
        where.known_hosts.write_text(f"[127.0.0.1]:{ssh_port} {' '.join(host_key)}\n")
        done = Client(where, key).ssh("team-a.web-0", "echo hi")  # type: ignore[arg-type]
        assert (done.returncode, done.stdout) == (0, b"hi\n"), done.stderr
        assert sample(gw, "podshell_sessions_started_total", front_door="ssh", verb="exec") == 1
        # The node agent counts the same session as its gateway's stream.
        wait_until(
            lambda: sample(node, "podshell_sessions_ended_total", front_door="gateway", verb="exec", outcome="ok") == 1,
            15,
            "the node agent to count the session",
        )
        assert sample(node, "podshell_sessions_started_total", front_door="gateway", verb="exec") == 1

        stop(procs[0])  # no node agent answers now
        wait_until(lambda: get(f"{gw}/readyz")[0] == 503, 30, "the gateway to be unready")
        status, body = get(f"{gw}/readyz")
        assert status == 503, body
        lines = body.splitlines()
        assert lines[0] == "no node agent is reachable", body
        assert [line.split(":")[0] for line in lines[1:]] == ["node node-1", "node node-2"], body
        assert sample(gw, "podshell_node_reachable", node="node-1") == 0
    finally:
        for proc in procs:
            stop(proc)
