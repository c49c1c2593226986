"""The metrics listener, scraped by a real Prometheus (Debian's 2.42) while
real OpenSSH sessions run; /healthz and /readyz, ready or not."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from .conftest import needs_root, pod
from .sshserver import Client, PodshellServer, free_port, keygen, wait_port
from .support.waiting import wait_until

pytestmark = needs_root

PROMETHEUS = shutil.which("prometheus")
SESSIONS = 3


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("metrics")
    keys = {name: keygen(root / f"id_{name}") for name in ("alice", "eve")}
    users = [
        {"name": "alice", "groups": ["dev"], "ssh_keys": [keys["alice"]]},
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
        api=f"tcp:{api_port}:interface=127.0.0.1",
        metrics=f"tcp:{metrics_port}:interface=127.0.0.1",
    )
    try:
        srv.wait_ready(containers=1)
        wait_port(metrics_port)
        srv.metrics_url = f"http://127.0.0.1:{metrics_port}"
        srv.api_url = f"http://127.0.0.1:{api_port}"
        srv.metrics_port = metrics_port
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def prometheus(server):
    """Prometheus scraping the server every second; killed and its data removed after."""
    if PROMETHEUS is None:
        pytest.skip("no prometheus (scripts/test-deps.sh installs it)")
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
    status, _ = get(f"{server.api_url}/api/v1/pods", {"Authorization": "Bearer not-a-token-at-all"})
    assert status == 401

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
