"""The CRI runtime against a real containerd: pods the kubelet made (played
by tests/containerd.py), seen and entered through every front door."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import reactor

from podshell.core import kubeconfig
from podshell.core.target import ContainerNotRunning, NoSuchPod
from podshell.core.yamlfile import ConfigError
from podshell.node.runtime.cri import client
from podshell.node.runtime.cri.runtime import INTERVAL, CRIRuntime
from podshell.node.spawner import Spawner
from podshell.server.config import RuntimeKind
from podshell.server.tap import load

from .conftest import Collect, needs_root, wait_for
from .containerd import SLEEP, ContainerSpec
from .sshserver import Client, PodshellServer, free_port, keygen
from .support.kubectl import kubectl_binary
from .support.waiting import wait_until

pytestmark = needs_root
TOKEN = "carol-token-0123456789abcdef"
HTTPD = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, containerd):
    root = tmp_path_factory.mktemp("cri")
    key = root / "id_ed25519"
    users = [{"name": "carol", "ssh_keys": [keygen(key)], "tokens": [TOKEN]}]
    policy = [{"subjects": ["user:carol"], "verbs": ["*"], "namespaces": ["*"]}]
    port = free_port()
    runtime = {"kind": "cri", "endpoint": containerd.endpoint}
    server = PodshellServer(root, [], users, policy, api=f"ssl:{port}:interface=127.0.0.1", runtime=runtime)
    try:
        server.wait_ready(containers=0)
        ca = (root / "state" / "ca.crt").read_bytes()
        api_url = f"https://127.0.0.1:{port}"
        kubeconfig.write(root / "kubeconfig", kubeconfig.render(api_url, "carol", TOKEN, ca, "team-c"))
        server.client = Client(server, key)
        yield server
    finally:
        server.stop()


def kubectl(server, *args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "KUBECONFIG": str(server.root / "kubeconfig")}
    return subprocess.run([kubectl_binary(None), *args], env=env, capture_output=True, timeout=60, **kw)


def wait_listed(server, name: str, containers: int = 1, timeout: float = 5.0) -> tuple[dict, float]:
    """The pod as kubectl sees it once all its containers run, and how long
    that took (a poll between two container starts lists only the first)."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        got = kubectl(server, "get", "pod", name, "-o", "json")
        if got.returncode == 0:
            pod = json.loads(got.stdout)
            statuses = pod["status"]["containerStatuses"]
            if len(statuses) == containers and all("running" in c["state"] for c in statuses):
                return pod, time.monotonic() - began
        time.sleep(0.05)
    raise AssertionError(f"pod {name} not listed in {timeout}s: {got.stderr.decode()}")


def test_get_pods_shows_the_kubelets_pods(server, kubelet):
    annotations = {"kubectl.kubernetes.io/default-container": "side"}
    web = kubelet.run_pod("team-c", "web", ContainerSpec("app"), ContainerSpec("side"), annotations=annotations)
    pod, took = wait_listed(server, "web", containers=2)
    assert took < 1.0 + INTERVAL  # kubectl's own start-up counts too
    assert pod["metadata"]["namespace"] == "team-c"
    assert pod["metadata"]["labels"] == {"app": "web"}
    assert pod["status"]["phase"] == "Running"
    statuses = {c["name"]: c for c in pod["status"]["containerStatuses"]}
    assert set(statuses) == {"app", "side"}
    assert statuses["app"]["image"] == "podshell.test/busybox:1"
    assert statuses["app"]["restartCount"] == 0
    table = kubectl(server, "get", "pods", "-o", "wide")
    assert table.returncode == 0
    row = table.stdout.decode().split("\n")[1].split()
    assert row[:4] == ["web", "2/2", "Running", "0"]
    assert row[5] == pod["status"]["podIP"] and row[5].startswith("10.")  # the CNI's address
    described = kubectl(server, "describe", "pod", "web")
    assert described.returncode == 0, described.stderr
    text = described.stdout.decode()
    assert "Namespace:    team-c" in text and "Status:       Running" in text
    assert text.count("Image:          podshell.test/busybox:1") == 2
    assert "containerd://" in text  # the container IDs, as a kubelet reports them
    assert statuses["app"]["containerID"] == f"containerd://{web.containers['app']}"
    assert statuses["app"]["imageID"].startswith("sha256:")
    # The default container, from the annotation.
    got = server.client.ssh("team-c.web", "echo $HOSTNAME; cat /proc/1/cmdline | tr '\\0' ' '")
    assert got.returncode == 0, got.stderr
    assert got.stdout.decode().split("\n")[0] == "web"


def test_exec_runs_in_the_containers_namespaces(server, kubelet):
    kubelet.run_pod("team-c", "box", ContainerSpec("app", env={"GREETING": "hi"}, working_dir="/tmp"))
    wait_listed(server, "box")
    ssh = server.client
    got = ssh.ssh(
        "team-c.box.app", "hostname; echo $GREETING; pwd; test -e /etc/debian_version || echo own-root; exit 3"
    )
    assert got.returncode == 3, got.stderr
    assert got.stdout.decode().split() == ["box", "hi", "/tmp", "own-root"]
    # Its own pid namespace: PID 1 is the container's command.
    got = ssh.ssh("team-c.box.app", "cat /proc/1/cmdline | tr '\\0' ' '")
    assert got.stdout.decode().strip() == " ".join(SLEEP)
    got = ssh.ssh("team-c.box.app", "cat", input=b"to the end\n")
    assert (got.returncode, got.stdout) == (0, b"to the end\n")
    got = kubectl(server, "exec", "box", "-c", "app", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert got.returncode == 7
    assert (got.stdout, got.stderr.strip().split(b"\n")[0]) == (b"out\n", b"err")
    got = kubectl(server, "exec", "-i", "box", "--", "wc", "-c", input=b"x" * 100000)
    assert got.stdout.split() == [b"100000"]


def test_local_forward_into_the_pods_network(server, kubelet):
    kubelet.run_pod("team-c", "www", ContainerSpec("httpd", command=HTTPD))
    wait_listed(server, "www")
    port = free_port()
    tunnel = server.client.background("team-c.www", "-N", "-L", f"{port}:localhost:8080")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/group", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert b"nogroup:x:65534:" in body  # the image's /etc, served in the pod's network namespace
    finally:
        tunnel.terminate()
        tunnel.wait()


def test_a_shell_less_image(server, kubelet):
    kubelet.run_pod("team-c", "bare", ContainerSpec("app", image="podshell.test/static:1"))
    wait_listed(server, "bare")
    got = kubectl(server, "exec", "bare", "--", "/bin/busybox", "echo", "by-path")
    assert (got.returncode, got.stdout) == (0, b"by-path\n")
    # SSH runs a command with /bin/sh -c: without one, a simple command runs
    # as its words would, and shell syntax gets the one-line hint.
    got = server.client.ssh("team-c.bare", "/bin/busybox echo  by  words")
    assert (got.returncode, got.stdout) == (0, b"by words\n"), got.stderr
    got = server.client.ssh("team-c.bare", "/bin/busybox echo piped | /bin/busybox wc -c")
    assert got.returncode == 127
    assert got.stderr.decode().splitlines() == [
        "podshell: this container's image has no /bin/sh: run a program by its path, "
        "e.g. ssh ns.pod.ctr@gateway /path/to/program, or kubectl exec POD -- /path/to/program"
    ]
    shell = server.client.ssh("team-c.bare", input=b"")  # no command: a login shell
    assert (shell.returncode, shell.stderr) == (got.returncode, got.stderr)
    got = kubectl(server, "exec", "bare", "--", "ls")
    assert got.returncode == 127
    assert b'exec: "ls": executable file not found in $PATH' in got.stderr


@pytest_twisted.ensureDeferred
async def test_a_restarted_container_gets_no_session_of_its_predecessor(containerd, kubelet):
    runtime = CRIRuntime(reactor, containerd.endpoint)
    runtime.startService()
    try:
        pod = kubelet.run_pod("team-c", "crash", ContainerSpec("app"))
        await wait_for(lambda: runtime.container_names("team-c", "crash") == ["app"], timeout=5)
        before = runtime.resolve("team-c", "crash", "app")
        assert before.runtime_spec is not None
        assert before.runtime_spec["process"]["args"] == SLEEP
        assert ("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin") in before.env
        assert before.user == "0:0"
        kubelet.stop_container(pod.containers["app"])
        kubelet.start_container(pod, ContainerSpec("app", restart_count=1))
        # The old handle's process is gone: the spawner refuses it.
        sink = Collect()
        with pytest.raises(ContainerNotRunning):
            Spawner(reactor).process(before, ["true"], sink)
        await wait_for(lambda: runtime.statuses()[0].containers[0].restart_count == 1, timeout=5)
        after = runtime.resolve("team-c", "crash", "app")
        assert after.init != before.init
        status = runtime.statuses()[0].containers[0]
        assert status.state.kind == "running"
        assert status.last_state is not None and status.last_state.kind == "terminated"
        sink = Collect()
        Spawner(reactor).process(after, ["sh", "-c", "cat /proc/1/cmdline"], sink)
        assert (await sink.done).code == 0
    finally:
        await runtime.stopService()


@pytest_twisted.ensureDeferred
async def test_runtime_socket_missing_at_start(containerd, kubelet, tmp_path):
    link = tmp_path / "cri.sock"
    runtime = CRIRuntime(reactor, f"unix://{link}", interval=0.1)
    runtime.startService()
    try:
        await wait_for(lambda: runtime.problem is not None and "does not answer" in runtime.problem, timeout=5)
        assert str(link) in runtime.problem
        with pytest.raises(NoSuchPod):
            runtime.resolve("team-c", "late", "app")
        kubelet.run_pod("team-c", "late", ContainerSpec("app"))
        link.symlink_to(containerd.socket)
        await wait_for(lambda: runtime.problem is None, timeout=30)
        await wait_for(lambda: runtime.container_names("team-c", "late") == ["app"], timeout=5)
        assert runtime.resolve("team-c", "late").container == "app"
    finally:
        await runtime.stopService()


def shell_session(server, target: str, command: str) -> subprocess.Popen:
    argv = [*server.client.ssh_argv(target), command]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def say(session: subprocess.Popen, line: bytes) -> bytes:
    """One line to an echoing session, and its answer."""
    assert session.stdin is not None and session.stdout is not None
    session.stdin.write(line + b"\n")
    session.stdin.flush()
    return session.stdout.readline()


def test_the_runtime_restarted_mid_session(server, kubelet, containerd):
    kubelet.run_pod("team-c", "steady", ContainerSpec("app"))
    wait_listed(server, "steady")
    session = shell_session(server, "team-c.steady", "while read line; do echo got $line; done")
    try:
        assert say(session, b"before") == b"got before\n"
        containerd.stop_daemon()
        try:
            # The session is the container's: it goes on without its runtime.
            assert say(session, b"while down") == b"got while down\n"
            # New requests say why the pod is not found.
            wait_until(
                lambda: b"does not answer" in server.client.ssh("team-c.steady", "true").stderr,
                timeout=10,
                what="requests to say the runtime does not answer",
            )
            refused = server.client.ssh("team-c.steady", "true")
            assert refused.returncode != 0
            assert str(containerd.socket).encode() in refused.stderr
        finally:
            containerd.start_daemon()
        wait_listed(server, "steady", timeout=30)
        got = server.client.ssh("team-c.steady", "echo back")
        assert (got.returncode, got.stdout) == (0, b"back\n"), got.stderr
        assert say(session, b"after") == b"got after\n"
        out, err = session.communicate(b"", timeout=30)
        assert (session.returncode, out) == (0, b""), err
    finally:
        session.kill()
        session.wait()


def test_a_container_that_stops_mid_session(server, kubelet):
    pod = kubelet.run_pod("team-c", "short", ContainerSpec("app"))
    wait_listed(server, "short")
    session = shell_session(server, "team-c.short", "while read line; do echo got $line; done")
    try:
        assert say(session, b"first") == b"got first\n"
        kubelet.stop_container(pod.containers["app"])
        # Its PID 1 gone, the kernel kills the container's every process, ours too.
        _, err = session.communicate(timeout=30)
        assert session.returncode == 255, err  # OpenSSH's status for a command killed by a signal
        got = server.client.ssh("team-c.short", "true")
        assert got.returncode != 0
        assert b"not running" in got.stderr, got.stderr
    finally:
        session.kill()
        session.wait()


def test_logs_from_the_cri_log_files(server, kubelet, tmp_path):
    script = "echo one; sleep 0.2; echo two >&2; sleep 0.2; i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.2; done"
    # Pauses between streams: the runtime copies each stream on its own, ordering only by time.
    pod = kubelet.run_pod("team-c", "talker", ContainerSpec("app", command=["/bin/sh", "-c", script]),
                          log_dir=str(tmp_path / "pods" / "talker"))  # fmt: skip
    wait_listed(server, "talker")
    deadline = time.monotonic() + 5
    while b"tick 2\n" not in (got := kubectl(server, "logs", "talker")).stdout:
        assert time.monotonic() < deadline, got.stderr
        time.sleep(0.1)
    assert got.stdout.startswith(b"one\ntwo\ntick 1\n")
    last = kubectl(server, "logs", "talker", "--tail=1").stdout.decode().split("\n")
    assert len(last) == 2 and last[0].startswith("tick ")
    stamped = kubectl(server, "logs", "talker", "--timestamps").stdout.decode().split("\n")[0]
    assert stamped.startswith("20") and "T" in stamped.split()[0] and stamped.endswith(" one")
    missing = kubectl(server, "logs", "talker", "--previous")
    assert missing.returncode != 0
    assert b'previous terminated container "app" in pod "talker" not found' in missing.stderr
    env = {**os.environ, "KUBECONFIG": str(server.root / "kubeconfig")}
    follow = subprocess.Popen([kubectl_binary(None), "logs", "-f", "--tail=1", "talker"], env=env,
                              stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert follow.stdout is not None
        ticks = [follow.stdout.readline() for _ in range(4)]
        numbers = [int(t.split()[1]) for t in ticks]
        assert numbers == list(range(numbers[0], numbers[0] + 4))  # new lines, as they come
    finally:
        follow.terminate()
        follow.wait()
    kubelet.stop_container(pod.containers["app"])
    again = ["/bin/sh", "-c", "echo second run; exec sleep 1000"]
    kubelet.start_container(pod, ContainerSpec("app", command=again, restart_count=1))
    deadline = time.monotonic() + 5
    while (got := kubectl(server, "logs", "talker")).stdout != b"second run\n":
        assert time.monotonic() < deadline, got
        time.sleep(0.1)
    previous = kubectl(server, "logs", "talker", "--previous").stdout
    assert previous.startswith(b"one\ntwo\ntick 1\n")


def config_file(tmp_path, runtime: str):
    path = tmp_path / "podshell.yaml"
    path.write_text(f"users: [{{name: carol, tokens: [{TOKEN}]}}]\nruntime: {runtime}\n")
    return str(path)


def test_config_of_the_cri_runtime(tmp_path):
    loaded = load(config_file(tmp_path, '{kind: cri, endpoint: "unix:///run/k3s/containerd/containerd.sock"}'))
    assert loaded.config.runtime.kind is RuntimeKind.CRI
    assert loaded.config.runtime.endpoint == "unix:///run/k3s/containerd/containerd.sock"
    assert load(config_file(tmp_path, "{kind: cri}")).config.runtime.endpoint is None  # the default, at start
    assert client.default_endpoint() in (client.CONTAINERD, client.CRIO)
    with pytest.raises(ConfigError, match=r"runtime.endpoint: .*'/run/x.sock' is not unix:///ABSOLUTE/PATH"):
        load(config_file(tmp_path, "{kind: cri, endpoint: /run/x.sock}"))
    with pytest.raises(ConfigError, match="pods: with kind cri the pods are the kubelet's"):
        load(config_file(tmp_path, "{kind: cri, pods: ./pods.yaml}"))
    with pytest.raises(ConfigError, match="endpoint: only kind cri"):
        load(config_file(tmp_path, '{endpoint: "unix:///run/containerd/containerd.sock"}'))
    with pytest.raises(ConfigError, match=r"runtime\.kind"):
        load(config_file(tmp_path, "{kind: docker}"))
