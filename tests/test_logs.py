"""pods/log: kubectl logs (every version), the Python client and podshell logs,
against a real server and real containers; the runtime's log files under a
noisy container; through a gateway to a node agent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from podshell.core import kubeconfig
from podshell.core.logs import Options
from podshell.node import logfile
from podshell.node.runtime.local import LocalRuntime
from podshell.node.runtime.manifest import Backoff, load_pods

from .conftest import PYTHON, needs_root, pod, pod_yaml, wait_for
from .sshserver import PodshellServer, free_port
from .support.cluster import NODE_PORT, Cluster
from .support.cluster import TOKEN as TOKEN_GW
from .support.kubectl import VERSIONS, kubectl_binary, minor
from .support.waiting import wait_until

pytestmark = needs_root

# The console script beside the interpreter, as a user runs it.
PODSHELL_LOGS = [str(Path(sys.executable).parent / "podshell"), "logs"]
TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef01"}
STAMP = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?Z ")
# Prints what is appended to a file, line by line, and ends at "quit".
FEED = """
import sys, time
seen = 0
while True:
    with open(sys.argv[1]) as f:
        lines = f.read().splitlines(keepends=True)
    for line in lines[seen:]:
        if line.strip() == "quit":
            sys.exit(0)
        print("fed", line.strip(), flush=True)
    seen = len(lines)
    time.sleep(0.02)
"""


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    port = free_port()
    (root / "feed").write_text("")
    app = "for i in $(seq 1 100); do echo line $i; done; echo oops >&2; exec sleep 3600"
    crash = f"if [ -e {root}/ran ]; then echo second run; exec sleep 3600; fi; touch {root}/ran; echo first run; exit 1"
    annotated = pod(
        "annotated",
        {"name": "first", "command": ["sh", "-c", "echo first; exec sleep 3600"]},
        {"name": "second", "command": ["sh", "-c", "echo second; exec sleep 3600"]},
        namespace="logs",
    )
    annotated["metadata"]["annotations"] = {"kubectl.kubernetes.io/default-container": "second"}
    pods = [
        pod(
            "multi",
            {"name": "app", "command": ["sh", "-c", app]},
            {"name": "side", "command": ["sh", "-c", "echo side; exec sleep 3600"]},
            namespace="logs",
        ),
        annotated,
        pod("crash", {"name": "c", "command": ["sh", "-c", crash]}, namespace="logs", restartPolicy="OnFailure"),
        pod(
            "done",
            {"name": "main", "command": ["sh", "-c", "echo finished; printf 'no newline'"]},
            namespace="logs",
            restartPolicy="Never",
        ),
        pod(
            "feed",
            {"name": "main", "command": [PYTHON, "-c", FEED, str(root / "feed")]},
            namespace="logs",
            restartPolicy="Never",
        ),
    ]
    users = [
        {"name": "alice", "groups": ["dev"], "tokens": [TOKENS["alice"]]},
        {"name": "bob", "tokens": [TOKENS["bob"]]},
    ]
    policy = [
        {"subjects": ["group:dev"], "verbs": ["*"], "namespaces": ["logs"]},
        {"subjects": ["user:bob"], "verbs": ["exec"], "namespaces": ["logs"]},
    ]
    server = PodshellServer(root, pods, users, policy, api=f"ssl:{port}:interface=127.0.0.1")
    try:
        server.wait_ready(containers=7)
        server.api_url = f"https://127.0.0.1:{port}"
        ca = (root / "state" / "ca.crt").read_bytes()
        for user, token in TOKENS.items():
            kubeconfig.write(root / f"{user}.kubeconfig", kubeconfig.render(server.api_url, user, token, ca, "logs"))
        yield server
    finally:
        server.stop()


def kubectl(api, *args: str, user: str = "alice", version: str | None = None, **kw) -> subprocess.CompletedProcess:
    environment = {**os.environ, "KUBECONFIG": str(api.root / f"{user}.kubeconfig")}
    return subprocess.run([kubectl_binary(version), *args], env=environment, capture_output=True, timeout=60, **kw)


def cli(api, *args: str) -> subprocess.CompletedProcess:
    connection = ["--server", api.api_url, "--token", TOKENS["alice"],
                  "--certificate-authority", str(api.root / "state" / "ca.crt")]  # fmt: skip
    return subprocess.run([*PODSHELL_LOGS, *connection, *args], capture_output=True, timeout=60)


def started(api, text: str) -> bool:
    return api.log.read_text().count(text) > 0


def lines(n: int, start: int = 1) -> bytes:
    return b"".join(b"line %d\n" % i for i in range(start, start + n))


def test_every_kubectl_version_reads_logs_with_every_flag(api):
    wait_until(lambda: b"second run" in kubectl(api, "logs", "crash").stdout, 20, "the crashed container's second run")
    for version in VERSIONS:

        def run(*args: str, version: str = version) -> subprocess.CompletedProcess:
            r = kubectl(api, "logs", *args, version=version)
            assert r.returncode == 0, (version, args, r.stderr)
            return r

        everything = lines(100) + b"oops\n"
        assert run("multi", "-c", "app").stdout == everything, version
        assert run("multi", "-c", "side").stdout == b"side\n", version
        if minor(version) >= 21:
            r = run("multi")  # kubectl defaults to the first container and says so
            assert r.stdout == everything and b'Defaulted container "app" out of: app, side' in r.stderr, version
            assert run("annotated").stdout == b"second\n", version  # the default-container annotation
        else:  # 1.20 knows no default container: it asks, as the API server does
            r = kubectl(api, "logs", "multi", version=version)
            assert r.stderr == b"error: a container name must be specified for pod multi, choose one of: [app side]\n"
        assert run("multi", "-c", "app", "--tail", "3").stdout == lines(2, 99) + b"oops\n", version
        assert run("multi", "-c", "app", "--tail", "0").stdout == b"", version
        assert run("multi", "-c", "app", "--limit-bytes", "13").stdout == b"line 1\nline 2", version
        assert run("multi", "-c", "app", "--since", "1h").stdout == everything, version
        future = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert run("multi", "-c", "app", f"--since-time={future}").stdout == b"", version
        stamped = run("multi", "-c", "side", "--timestamps").stdout
        assert STAMP.match(stamped) and stamped.endswith(b" side\n"), (version, stamped)
        assert run("crash").stdout == b"second run\n", version
        assert run("crash", "--previous").stdout == b"first run\n", version
        assert run("done").stdout == b"finished\nno newline", version  # a container that ended
        r = run("multi", "-c", "app", "--tail", "2", "--timestamps", "--limit-bytes", "40")
        assert STAMP.match(r.stdout) and len(r.stdout) == 40, version


def test_kubectl_errors_are_the_api_servers(api):
    for version in ("1.20", "1.33"):
        r = kubectl(api, "logs", "multi", "-c", "nope", version=version)
        assert (r.returncode, r.stderr) == (1, b"error: container nope is not valid for pod multi\n"), version
        r = kubectl(api, "logs", "done", "--previous", version=version)
        assert r.stderr == (
            b'Error from server (BadRequest): previous terminated container "main" in pod "done" not found\n'
        ), version
        r = kubectl(api, "logs", "multi", "-c", "app", user="bob", version=version)  # bob may exec, not read logs
        assert (r.returncode, r.stderr) == (
            1, b"Error from server (Forbidden): bob may not read logs in logs/multi/app\n"), version  # fmt: skip
        r = kubectl(api, "logs", "nothere", version=version)
        assert b'rror from server (NotFound): pods "nothere" not found' in r.stderr, version  # 1.33 wraps it


def test_the_audit_log_records_who_read_which_logs(api):
    since = len(api.audit.read_text().splitlines())  # what this case causes, not what earlier ones left
    kubectl(api, "logs", "multi", "-c", "side", "--tail", "1")
    kubectl(api, "logs", "multi", "-c", "side", user="bob")
    records = [json.loads(line) for line in api.audit.read_text().splitlines()[since:]]
    ends = [
        (r["user"], r["target"], r["command"], r["bytes_out"])
        for r in records
        if r["event"] == "session.end" and r["verb"] == "logs"
    ]
    assert ends == [("alice", "logs/multi/side", ["tailLines=1"], 5)], records
    denied = [(r["user"], r["verb"], r["target"], r["reason"]) for r in records if r["event"] == "denied"]
    assert denied == [("bob", "logs", "logs/multi/side", "no policy rule allows it")], records


def test_the_python_client(api):
    from kubernetes import client, config
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(config.new_client_from_config(str(api.root / "alice.kubeconfig")))
    assert core.read_namespaced_pod_log("multi", "logs", container="side") == "side\n"
    assert core.read_namespaced_pod_log("crash", "logs", previous=True) == "first run\n"  # one container: no name
    assert core.read_namespaced_pod_log("multi", "logs", container="app", tail_lines=1, timestamps=False) == "oops\n"
    raw = core.read_namespaced_pod_log("multi", "logs", container="app", follow=False, _preload_content=False)
    assert raw.data == lines(100) + b"oops\n" and raw.headers["content-type"] == "text/plain"
    for container, message in (
        (None, "a container name must be specified for pod multi, choose one of: [app side]"),
        ("nope", "container nope is not valid for pod multi"),  # kubectl says it before it asks
    ):
        with pytest.raises(ApiException) as e:
            core.read_namespaced_pod_log("multi", "logs", container=container)
        assert (e.value.status, json.loads(e.value.body)["message"]) == (400, message)
    with pytest.raises(ApiException) as e:
        core.read_namespaced_pod_log("multi", "logs", container="app", tail_lines=-1)
    assert json.loads(e.value.body)["message"] == (
        "PodLogOptions is invalid: tailLines: Invalid value: -1: must be greater than or equal to 0"
    )


def test_podshell_logs(api):
    r = cli(api, "-n", "logs", "multi", "--tail", "2")
    assert (r.returncode, r.stdout) == (0, b"line 100\noops\n"), r.stderr
    assert b'Defaulted container "app" out of: app, side' in r.stderr
    r = cli(api, "logs/multi/side", "--timestamps")
    assert r.returncode == 0 and STAMP.match(r.stdout) and r.stdout.endswith(b" side\n"), r.stderr
    assert cli(api, "-n", "logs", "annotated").stdout == b"second\n"
    assert cli(api, "-n", "logs", "crash", "--previous").stdout == b"first run\n"
    assert cli(api, "-n", "logs", "multi", "-c", "app", "--limit-bytes", "6", "--since", "5m").stdout == b"line 1"
    r = cli(api, "-n", "logs", "multi", "-c", "nope")
    assert (r.returncode, r.stderr) == (1, b"podshell: container nope is not valid for pod multi\n")
    r = cli(api, "-n", "logs", "multi", "--since", "5 minutes")
    assert r.returncode == 2 and b"--since: '5 minutes' is not a duration such as 10s, 5m or 1h30m" in r.stderr


def test_follow_streams_as_the_container_writes_and_ends_with_it(api):
    """Every kubectl, the Python client and podshell logs, following one
    container: each line reaches all of them before the next is written,
    and all of them end when the container does."""
    env = {**os.environ, "KUBECONFIG": str(api.root / "alice.kubeconfig")}
    argv = {f"kubectl {v}": [kubectl_binary(v), "logs", "-f", "feed"] for v in VERSIONS}
    argv["python client"] = [PYTHON, "-c", (
        "import sys\nfrom kubernetes import client, config\n"
        f"core = client.CoreV1Api(config.new_client_from_config({str(api.root / 'alice.kubeconfig')!r}))\n"
        "r = core.read_namespaced_pod_log('feed', 'logs', follow=True, _preload_content=False)\n"
        "for chunk in r.stream(1):\n    sys.stdout.buffer.write(chunk); sys.stdout.flush()\n"
    )]  # fmt: skip
    argv["podshell logs"] = [*PODSHELL_LOGS, "--server", api.api_url, "--token", TOKENS["alice"],
                             "--certificate-authority", str(api.root / "state" / "ca.crt"), "-f", "logs/feed"]  # fmt: skip
    followers = {name: subprocess.Popen(a, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for name, a in argv.items()}  # fmt: skip
    got = {name: bytearray() for name in followers}
    try:
        for proc in followers.values():
            os.set_blocking(proc.stdout.fileno(), False)  # type: ignore[union-attr]

        def have(text: bytes) -> bool:
            for name, proc in followers.items():
                got[name] += proc.stdout.read() or b""  # type: ignore[union-attr]
            return all(text in g for g in got.values())

        for word in ("one", "two", "three"):
            with (api.root / "feed").open("a") as f:
                f.write(word + "\n")
            wait_until(lambda w=word: have(f"fed {w}\n".encode()), 20, f"every follower to show fed {word}", step=0.02)
        with (api.root / "feed").open("a") as f:
            f.write("quit\n")
        for name, proc in followers.items():
            assert proc.wait(20) == 0, (name, proc.stderr.read())  # type: ignore[union-attr]
            got[name] += proc.stdout.read() or b""  # type: ignore[union-attr]
            assert got[name] == b"fed one\nfed two\nfed three\n", name
    finally:
        for proc in followers.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()


# The runtime's log files, in this process.
def container_log(runtime: LocalRuntime, pod_name: str, previous: bool = False, **options) -> bytes:
    source = runtime.read_log("default", pod_name, "main", previous, Options(**options))
    out = bytearray()
    while not source.at_end:
        out += source.read()
    source.close()
    return bytes(out)


@pytest_twisted.ensureDeferred
async def test_a_noisy_container_is_bounded_and_never_holds_the_reactor(spawner, tmp_path):
    """50 MiB written as fast as a container can: files stay within the
    bound (small here), memory stays flat, the reactor keeps turning."""
    import psutil

    noisy = "import sys\nline = b'x' * 99 + b'\\n'\nfor _ in range(512 * 1024): sys.stdout.buffer.write(line)\n"
    manifests = load_pods(pod_yaml(tmp_path, [pod("noisy", {"name": "main", "command": [PYTHON, "-c", noisy]},
                                                  restartPolicy="Never")]))  # fmt: skip
    runtime = LocalRuntime(
        reactor, spawner, manifests, log_dir=tmp_path / "logs", log_max_size=1 << 20, log_max_files=3
    )
    rss = psutil.Process().memory_info().rss
    lags: list[float] = []

    def tick(at: float) -> None:
        lags.append(time.monotonic() - at)
        if container.state.kind != "terminated":
            reactor.callLater(0.01, tick, time.monotonic() + 0.01)

    runtime.startService()
    try:
        container = runtime.pod("default", "noisy").containers["main"]
        start = time.monotonic()
        tick(time.monotonic())
        await wait_for(lambda: container.state.kind == "terminated", timeout=60)
        elapsed = time.monotonic() - start
        growth = psutil.Process().memory_info().rss - rss
        directory = container.log_dir
        files = logfile.instance_files(directory, 0)
        print(f"50 MiB logged in {elapsed:.2f}s, worst reactor lag {max(lags) * 1000:.1f} ms, RSS +{growth >> 20} MiB")
        assert len(files) == 3 and all(f.stat().st_size <= 1 << 20 for f in files), files
        assert int(files[0].name.rsplit(".", 1)[1]) > 50  # rotated that often: all 50 MiB went through
        assert max(lags) < 0.25 and growth < 64 << 20
        tail = container_log(runtime, "noisy", tail=2)
        assert tail == b"x" * 99 + b"\n" + b"x" * 99 + b"\n"
        assert directory.parent.name.startswith("default_noisy_")  # the kubelet's <ns>_<pod>_<uid>
    finally:
        await runtime.stopService()


@pytest_twisted.ensureDeferred
async def test_previous_runs_survive_a_restart_and_older_ones_go(spawner, tmp_path):
    script = (
        f"n=$(cat {tmp_path}/n 2>/dev/null || echo 0); echo $((n+1)) > {tmp_path}/n; echo run $n; sleep 0.2; exit 1"
    )
    manifests = load_pods(pod_yaml(tmp_path, [pod("flaky", {"name": "main", "command": ["sh", "-c", script]})]))
    runtime = LocalRuntime(reactor, spawner, manifests, Backoff(initial=0.05, max=0.05), log_dir=tmp_path / "logs")
    stale = tmp_path / "logs" / "default_gone_00000000-0000-0000-0000-000000000000"
    stale.mkdir(parents=True)
    runtime.startService()
    try:
        assert not stale.exists()  # a pod of an earlier run of the server
        container = runtime.pod("default", "flaky").containers["main"]
        await wait_for(lambda: container.restart_count >= 2 and container.session is None)
        ended = f"run {container.restart_count}\n".encode()
        assert container_log(runtime, "flaky") == ended  # waiting to restart: the run that ended, as the kubelet says
        assert container_log(runtime, "flaky", previous=True) == ended
        assert logfile.instances(container.log_dir) == {container.restart_count, container.restart_count - 1}
        await wait_for(lambda: container.state.kind == "running" and container.restart_count >= 3)
        n = container.restart_count
        await wait_for(lambda: container_log(runtime, "flaky") == f"run {n}\n".encode())
        assert container_log(runtime, "flaky", previous=True) == f"run {n - 1}\n".encode()
    finally:
        await runtime.stopService()


# Through a gateway to the node agent that runs the pod.
@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """test_nodes' gateway and two node agents (alpha and beta print "podserver ready")."""
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.hosts.close()


def test_kubectl_and_the_cli_read_logs_of_a_pod_on_another_node(cluster):
    for version in ("1.33", "1.20"):
        r = cluster.kubectl("logs", "-n", "team-a", "beta", version=version)
        assert (r.returncode, r.stdout) == (0, b"podserver ready\n"), (version, r.stderr)
        r = cluster.kubectl("logs", "-n", "team-a", "alpha", "--timestamps", "--tail", "1", version=version)
        assert STAMP.match(r.stdout) and r.stdout.endswith(b" podserver ready\n"), (version, r.stderr)
        r = cluster.kubectl("logs", "-n", "team-a", "beta", "--previous", version=version)
        assert r.stderr == (  # the node's answer, passed on
            b'Error from server (BadRequest): previous terminated container "app" in pod "beta" not found\n'
        ), version
        r = cluster.kubectl("logs", "-n", "team-b", "secret", version=version)
        assert r.returncode == 1 and b"(Forbidden)" in r.stderr, version
    r = cluster.cli("exec", "team-a/beta", "--", "true")  # the control: the CLI's connection works
    assert r.returncode == 0, r.stderr
    argv = [*PODSHELL_LOGS, "--server", "https://127.0.0.1:8443", "--token", TOKEN_GW,
            "--certificate-authority", str(cluster.ca), "team-a/beta/app"]  # fmt: skip
    since = {name: len(cluster.audit(name)) for name in ("gw", "node-2")}  # kubectl's reads above are logged too
    r = cluster.hosts.run("gw", *argv, capture_output=True, timeout=60)
    assert (r.returncode, r.stdout) == (0, b"podserver ready\n"), r.stderr
    ends = {
        name: [e for e in cluster.audit(name)[since[name] :] if e["verb"] == "logs" and e["event"] == "session.end"]
        for name in since
    }
    assert [(e["user"], e["via"], e["target"]) for e in ends["gw"]] == [("alice", "api", "team-a/beta/app")], ends
    assert [(e["user"], e["via"].split(" (")[0]) for e in ends["node-2"]] == [("alice", "gateway gw-1")], ends


def test_following_through_a_gateway_and_nothing_rides_on_after_the_answer(cluster):
    follower = subprocess.Popen(
        cluster.hosts.argv("gw", *cluster.kubectl_argv("1.33"), "logs", "-f", "-n", "team-a", "alpha"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert follower.stdout is not None and follower.stdout.readline() == b"podserver ready\n"
        assert follower.poll() is None  # following: the container runs on
    finally:
        follower.kill()
        follower.wait()
    # After a log answer the connection ends: the node trusts it, so no second request may follow on it.
    r = cluster.python(
        f"""
import socket, ssl
ctx = ssl.create_default_context(cafile={str(cluster.ca)!r})
with ctx.wrap_socket(socket.create_connection(("127.0.0.1", 8443)), server_hostname="127.0.0.1") as s:
    s.sendall(b"GET /api/v1/namespaces/team-a/pods/beta/log?previous=true HTTP/1.1\\r\\nHost: gw\\r\\n"
              b"Authorization: Bearer {TOKEN_GW}\\r\\n\\r\\n"
              b"GET /api/v1/namespaces/team-b/pods/secret/log HTTP/1.1\\r\\nHost: gw\\r\\n\\r\\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
print(data.decode())
"""
    )
    out = r.stdout.decode()
    assert out.startswith("HTTP/1.1 400") and out.count("HTTP/1.1") == 1, (out, r.stderr)
    # And a node agent reads logs only on someone's behalf, whom the gateway let in.
    pki, node = cluster.root / "pki", cluster.hosts.address["node-2"]
    r = cluster.python(
        f"""
import ssl, socket
ctx = ssl.create_default_context(cafile={str(pki / "ca.crt")!r}); ctx.check_hostname = False
ctx.load_cert_chain({str(pki / "gw-1.crt")!r}, {str(pki / "gw-1.key")!r})
with ctx.wrap_socket(socket.create_connection(({node!r}, {NODE_PORT}))) as s:
    s.sendall(b"GET /api/v1/namespaces/team-b/pods/secret/log HTTP/1.1\\r\\nHost: n\\r\\n\\r\\n")
    print(s.recv(65536).decode())
"""
    )
    assert "HTTP/1.1 403" in r.stdout.decode() and "Impersonate-User" in r.stdout.decode(), r
