"""The CRI runtime against a real containerd: pods the kubelet made (played
by tests/containerd.py), seen and entered through every front door."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import threading
import time
import urllib.request

import pytest
import pytest_twisted
from twisted.internet import reactor

from podshell.core import kubeconfig
from podshell.core.process import ExitStatus, WindowSize
from podshell.core.target import ContainerNotRunning, NoSuchPod
from podshell.core.yamlfile import ConfigError
from podshell.node.runtime.cri import client
from podshell.node.runtime.cri.runtime import INTERVAL, CRIRuntime
from podshell.node.spawner import Spawner
from podshell.server.config import RuntimeKind
from podshell.server.tap import load

from .conftest import Collect, needs_root, sleep, wait_for
from .containerd import SLEEP, ContainerSpec
from .sshserver import Client, PodshellServer, free_port, keygen
from .support.cli import PODSHELL, cli, cli_env
from .support.kubectl import kubectl_binary, transport_env
from .support.terminal import Terminal
from .support.waiting import wait_until

pytestmark = needs_root
TOKEN = "carol-token-0123456789abcdef"
HTTPD = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"]


@pytest.fixture(scope="module")
def server(tmp_path_factory, containerd):
    root = tmp_path_factory.mktemp("cri")
    key = root / "id_ed25519"
    users = [{"name": "carol", "ssh_keys": [keygen(key)], "tokens": [TOKEN]}]
    policy = [
        {"subjects": ["user:carol"], "verbs": ["*"], "namespaces": ["*"]},
        {"subjects": ["user:carol"], "verbs": ["exec"], "namespaces": ["team-c"], "pods": ["runas"], "run_as": ["app", "65534"]},
    ]  # fmt: skip
    port = free_port()
    runtime = {"kind": "cri", "endpoint": containerd.endpoint}
    server = PodshellServer(root, [], users, policy, api=f"ssl:{port}:interface=127.0.0.1", runtime=runtime)
    try:
        server.wait_ready(containers=0)
        ca = (root / "state" / "ca.crt").read_bytes()
        api_url = f"https://127.0.0.1:{port}"
        kubeconfig.write(root / "kubeconfig", kubeconfig.render(api_url, "carol", TOKEN, ca, "team-c"))
        server.client = Client(server, key)
        server.api_url = api_url
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


def test_a_shell_less_image(server, kubelet, tmp_path):
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
    # rsync is the one copy that needs its own program in the image: one line says so.
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "file").write_bytes(b"x")
    kubelet.run_pod("team-c", "plain", ContainerSpec("app"))
    wait_listed(server, "plain")
    for target in ("team-c.bare", "team-c.plain"):  # no shell, and busybox's shell but no rsync
        got = server.client.rsync("-a", f"{tmp_path / 'tree'}/", f"{target}@127.0.0.1:/tmp/rs/")
        assert got.returncode != 0
        assert (
            b"podshell: rsync needs rsync in the container and this image has none (scp and sftp need nothing in it)"
            in got.stderr
        ), got.stderr


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
async def test_containerds_events_make_a_change_seen_at_once_without_a_listing_interval(containerd, kubelet):
    """Listing once an hour, a new pod and a stopped container are still
    seen within a fraction of a second: containerd's event stream says so."""
    runtime = CRIRuntime(reactor, containerd.endpoint, interval=3600)
    runtime.startService()
    try:
        await wait_for(lambda: runtime.problem is None, timeout=5)
        began = time.monotonic()
        pod = kubelet.run_pod("team-c", "evented", ContainerSpec("app"))
        started = time.monotonic()

        def running() -> bool:
            try:
                return runtime.resolve("team-c", "evented").container == "app"
            except (NoSuchPod, ContainerNotRunning):
                return False

        await wait_for(running, timeout=2, step=0.005, what="the new pod")
        seen = time.monotonic()
        kubelet.stop_container(pod.containers["app"])
        stopped = time.monotonic()
        await wait_for(lambda: not running(), timeout=2, step=0.005, what="the stop")
        print(
            f"pod made in {started - began:.3f}s, seen {seen - started:.3f}s later; "
            f"stop seen {time.monotonic() - stopped:.3f}s after it returned"
        )
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


# attach: the container's own stdio, through the runtime's streaming server.
ECHO = ["/bin/sh", "-c", "while read l; do echo got:$l; echo err:$l >&2; done"]
TICKS = ["/bin/sh", "-c", "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done"]
CAT = ["/bin/busybox", "cat"]
MiB = 1 << 20


def running(server, name: str) -> dict:
    """The statuses of a pod's containers, by name, once all of them run again."""
    pod, _ = wait_listed(server, name, containers=1)
    return {c["name"]: c for c in pod["status"]["containerStatuses"]}


def attach_kubectl(server, version: str, transport: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "KUBECONFIG": str(server.root / "kubeconfig"), **transport_env(transport)}
    return subprocess.Popen([kubectl_binary(version), "attach", *args], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


@pytest.mark.parametrize(("version", "transport"), [("1.20", "spdy"), ("1.33", "spdy"), ("1.33", "websocket")])
def test_kubectl_attach_joins_the_containers_stdio(server, kubelet, version, transport):
    """stdin reaches the container's main process, its stdout and stderr come
    back apart; detaching leaves it running, and the next attach works."""
    kubelet.run_pod("team-c", "chat", ContainerSpec("echo", command=ECHO, stdin=True))
    wait_listed(server, "chat")
    for word in ("first", "second"):
        proc = attach_kubectl(server, version, transport, "-i", "chat", "-c", "echo")
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        proc.stdin.write(f"{word}\n".encode())
        proc.stdin.flush()
        assert proc.stdout.readline() == f"got:{word}\n".encode()
        assert proc.stderr.readline().startswith(b"If you don't see a command prompt")
        assert proc.stderr.readline() == f"err:{word}\n".encode()
        proc.terminate()  # detach
        proc.communicate(timeout=15)
    echo = running(server, "chat")["echo"]
    assert echo["restartCount"] == 0 and "running" in echo["state"]


def echoed(proc: subprocess.Popen, data: bytes) -> bytes:
    """Write C{data} to an attached client, and read as much back."""
    assert proc.stdin is not None and proc.stdout is not None
    writer = threading.Thread(target=write_and_flush, args=(proc.stdin, data))
    writer.start()
    try:
        got = bytearray()
        while len(got) < len(data):
            chunk = proc.stdout.read1(len(data) - len(got))
            assert chunk, f"attach ended after {len(got)} of {len(data)} bytes"
            got += chunk
        return bytes(got)
    finally:
        writer.join(timeout=30)


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_kubectl_attach_passes_every_byte(server, kubelet, transport):
    kubelet.run_pod("team-c", "bulk", ContainerSpec("cat", command=CAT, stdin=True))
    wait_listed(server, "bulk")
    for n in (65537, MiB + 3):
        data = random.Random(n).randbytes(n)
        proc = attach_kubectl(server, "1.33", transport, "-i", "-q", "bulk")
        try:
            assert hashlib.sha256(echoed(proc, data)).digest() == hashlib.sha256(data).digest(), n
        finally:
            proc.terminate()
            proc.communicate(timeout=15)


@pytest.mark.parametrize("transport", ["spdy", "websocket"])
def test_kubectl_attach_to_a_terminal_gets_its_size_and_resizes(server, kubelet, transport):
    kubelet.run_pod("team-c", "term", ContainerSpec("sh", command=["/bin/sh"], stdin=True, tty=True))
    wait_listed(server, "term")
    env = [f"{k}={v}" for k, v in transport_env(transport).items()]
    argv = ["env", f"KUBECONFIG={server.root / 'kubeconfig'}", *env, kubectl_binary("1.33"), "attach", "-it", "term"]
    term = Terminal(argv, 30, 90)
    # kubectl sends its size one larger and then its own (to redraw the screen): wait for the second.
    term.resize(30, 90)
    term.resize(45, 120)
    term.proc.terminate()  # detach: the shell runs on
    assert term.close() != 0
    assert "running" in running(server, "term")["sh"]["state"]


@pytest.fixture(scope="module")
def home(server, tmp_path_factory):
    """A user of the native CLI who has logged in to the CRI server."""
    home = tmp_path_factory.mktemp("home")
    ca = str(server.root / "state" / "ca.crt")
    got = cli(home, "login", "--server", server.api_url, "--token", TOKEN, "--certificate-authority", ca)
    assert got.returncode == 0, got.stderr
    return home


def test_cli_attach_passes_every_byte_both_ways(server, kubelet, home):
    """Sizes either side of 16 KiB and 64 KiB, over a MiB and tens of MiB, each through
    an attachment of its own to the same cat: every byte comes back."""
    kubelet.run_pod("team-c", "data", ContainerSpec("cat", command=CAT, stdin=True))
    wait_listed(server, "data")
    assert PODSHELL
    for n in (1, 16383, 16385, 65535, 65537, MiB + 3, 24 * MiB + 5):
        data = random.Random(n).randbytes(n)
        proc = subprocess.Popen([PODSHELL, "attach", "-i", "team-c/data/cat"], env=cli_env(home),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert hashlib.sha256(echoed(proc, data)).digest() == hashlib.sha256(data).digest(), n
        finally:
            proc.terminate()
            proc.communicate(timeout=15)
    assert running(server, "data")["cat"]["restartCount"] == 0


def write_and_flush(stream, data: bytes) -> None:
    stream.write(data)
    stream.flush()


@pytest.fixture
def cri_runtime(containerd):
    runtime = CRIRuntime(reactor, containerd.endpoint)
    runtime.startService()
    yield runtime
    pytest_twisted.blockon(runtime.stopService())


async def attach_to(runtime, kubelet, name: str, spec: ContainerSpec):
    """A pod of one container, and a sink attached to it through C{runtime}."""
    kubelet.run_pod("team-c", name, spec)
    await wait_for(lambda: runtime.container_names("team-c", name) == [spec.name], timeout=5)
    handle = runtime.resolve("team-c", name, spec.name)
    sink = Collect()
    return handle, sink, runtime.attach(handle, sink)


@pytest_twisted.ensureDeferred
async def test_input_before_the_runtime_answers_is_kept_and_detach_is_quiet(cri_runtime, kubelet):
    _, sink, attached = await attach_to(cri_runtime, kubelet, "early", ContainerSpec("echo", command=ECHO, stdin=True))
    attached.write(b"early\n")  # the runtime has not given its URL yet
    await wait_for(lambda: b"got:early\n" in sink.out, timeout=5, what="the echo")
    await wait_for(lambda: bytes(sink.err) == b"err:early\n", timeout=5, what="its stderr")
    assert attached.bytes_in == 6
    attached.closeStdin()  # not stdinOnce: the container's stdin stays open for the next one
    attached.hangup()
    await wait_for(lambda: sink.done.called, timeout=5, what="the end of the attachment")
    assert bytes(sink.err) == b"err:early\n"  # detached: nothing to say
    again = Collect()
    second = cri_runtime.attach(cri_runtime.resolve("team-c", "early", "echo"), again)
    second.write(b"again\n")
    await wait_for(lambda: again.out == b"got:again\n", timeout=5, what="the second attachment's echo")
    assert sink.out == b"got:early\n"  # the first one is gone
    second.hangup()


@pytest_twisted.ensureDeferred
async def test_closing_stdin_closes_a_stdin_once_containers_stdin(cri_runtime, kubelet):
    """Over SPDY, closing stdin ends the stdin stream, and the runtime closes
    a stdinOnce container's stdin: its wc sees EOF, counts, and exits."""
    spec = ContainerSpec("count", command=["/bin/busybox", "wc", "-c"], stdin=True, stdin_once=True)
    _, sink, attached = await attach_to(cri_runtime, kubelet, "once", spec)
    data = random.Random(7).randbytes(3 * 65536 + 7)
    attached.write(data)
    attached.closeStdin()
    status = await sink.done
    assert (sink.out.strip(), status) == (str(len(data)).encode(), ExitStatus(code=0))
    assert sink.err == b""


@pytest_twisted.ensureDeferred
async def test_a_container_without_stdin_gives_output_and_takes_no_input(cri_runtime, kubelet):
    """containerd takes the attachment and would discard input (no error):
    podshell asks for no stdin and sends none, as the local runtime does."""
    _, sink, attached = await attach_to(cri_runtime, kubelet, "ticker", ContainerSpec("ticks", command=TICKS))
    attached.write(b"ignored\n")
    await wait_for(lambda: sink.out.count(b"\n") >= 3, timeout=5, what="ticks")
    assert attached.bytes_in == 0 and sink.err == b""
    attached.hangup()
    await sink.done
    assert cri_runtime.resolve("team-c", "ticker").container == "ticks"  # still running


@pytest_twisted.ensureDeferred
async def test_a_terminal_is_resized_and_a_paused_reader_holds_the_output(cri_runtime, kubelet):
    spec = ContainerSpec("sh", command=["/bin/sh"], stdin=True, tty=True)
    _, sink, attached = await attach_to(cri_runtime, kubelet, "tty", spec)
    attached.resize(WindowSize(33, 101))
    for _ in range(25):  # the runtime resizes in a goroutine of its own: a line typed may get there first
        attached.write(b"stty size\n")
        await sleep(0.2)
        if b"33 101\r\n" in sink.out:
            break
    assert b"33 101\r\n" in sink.out, bytes(sink.out[-300:])
    # 8 MiB of output to a reader that stopped: it waits in the runtime, not here.
    sink.out.clear()
    attached.pauseProducing()
    attached.write(b"head -c 8388608 /dev/zero; echo done-$((40+2))\n")
    await sleep(0.5)
    held = len(sink.out)
    await sleep(0.5)
    assert len(sink.out) == held < 8 * MiB
    attached.resumeProducing()
    await wait_for(lambda: b"done-42\r\n" in sink.out, timeout=20, what="all of the output")
    assert sink.out.count(b"\0") == 8 * MiB  # NULs pass a terminal as they are
    attached.hangup()


@pytest_twisted.ensureDeferred
async def test_a_signal_reaches_the_main_process_and_its_end_ends_the_attachment(cri_runtime, kubelet):
    script = "trap 'echo got-term; exit 0' TERM; echo ready; while :; do sleep 0.1; done"
    spec = ContainerSpec("app", command=["/bin/sh", "-c", script])
    _, sink, attached = await attach_to(cri_runtime, kubelet, "trap", spec)
    await wait_for(lambda: attached.ws is not None, timeout=5, what="the attachment")
    with pytest.raises(ValueError):
        attached.signal("NOPE")
    attached.signal("TERM")
    assert await sink.done == ExitStatus(0)  # the runtime's Success: the container ended
    assert sink.out.endswith(b"got-term\n") and sink.err == b""


@pytest_twisted.ensureDeferred
async def test_attach_refused_by_the_runtime_says_why(containerd, kubelet):
    runtime = CRIRuntime(reactor, containerd.endpoint, interval=3600)  # one listing: it will not see the stop
    try:
        pod = kubelet.run_pod("team-c", "gone", ContainerSpec("app"))
        runtime.startService()
        await wait_for(lambda: runtime.container_names("team-c", "gone") == ["app"], timeout=5)
        handle = runtime.resolve("team-c", "gone")
        kubelet.stop_container(pod.containers["app"])
        sink = Collect()
        attached = runtime.attach(handle, sink)
        status = await sink.done
        assert status == attached.status and status.code == 255
        assert bytes(sink.err) == (
            b"podshell: cannot attach to team-c/gone/app: the container runtime says: "
            b"container is in CONTAINER_EXITED state\r\n"
        )
    finally:
        await runtime.stopService()


def test_run_as_another_user_of_the_container(server, kubelet, home):
    """As C{runc exec --user}: that user's ids and groups from the image's
    /etc/passwd and /etc/group, and still the container's confinement."""
    kubelet.run_pod("team-c", "runas", ContainerSpec("app", working_dir="/srv"))
    wait_listed(server, "runas")
    # A working directory only root may enter: reached before the user switch, as runc does.
    assert server.client.ssh("team-c.runas", "chmod 700 /srv").returncode == 0
    got = server.client.ssh("team-c.runas+app", "pwd; ls . || echo no-listing")
    assert got.stdout == b"/srv\nno-listing\n", got.stderr
    probe = "id; echo $HOME; grep -E '^(CapEff|Seccomp):' /proc/self/status; touch /etc/probe"
    got = server.client.ssh("team-c.runas+app", probe)
    lines = got.stdout.decode().splitlines()
    assert lines[0] == "uid=1000(app) gid=1000(app) groups=1000(app),2000(extra)", got.stderr
    assert lines[1:] == ["/home", "CapEff:\t0000000000000000", "Seccomp:\t2"]
    assert b"Permission denied" in got.stderr  # a user without the root's capabilities
    got = cli(home, "exec", "-u", "65534", "team-c/runas", "--", "id", "-u")
    assert (got.returncode, got.stdout) == (0, b"65534\n"), got.stderr
    # Without a user: the container's own, root here.
    got = cli(home, "exec", "team-c/runas", "--", "id", "-u")
    assert got.stdout == b"0\n"
    # Only the users a rule names; the audit log says who ran as whom.
    got = server.client.ssh("team-c.runas+root", "id")
    assert got.returncode != 0
    assert b"carol may not exec in team-c/runas/app as root" in got.stderr
    got = cli(home, "exec", "-u", "root", "team-c/runas", "--", "id")
    assert got.returncode != 0 and b"carol may not exec in team-c/runas/app as root" in got.stderr
    got = cli(home, "exec", "-u", "no such", "team-c/runas", "--", "id")
    assert (got.returncode, got.stderr) == (
        1,
        b"podshell: user 'no such' must be a uid (no leading zeros) or a name of letters, digits, '.', '_' and '-' "
        b"(up to 32, not starting with a digit)\n",
    )
    records = [json.loads(line) for line in (server.root / "state" / "audit.jsonl").read_text().splitlines()]
    assert {
        r.get("run_as") for r in records if r["event"] == "session.start" and r["target"] == "team-c/runas/app"
    } == {None, "app", "65534"}


@pytest.mark.parametrize("version", ["1.20", "1.33"])
def test_kubectl_cp_both_ways_into_an_image_without_tar(server, kubelet, tmp_path, version):
    """podshell's own tar, in the container's namespaces: a file of every
    size class and a tree, both ways, byte for byte."""
    kubelet.run_pod("team-c", "notar", ContainerSpec("app", image="podshell.test/static:1"))
    wait_listed(server, "notar")
    env = {**os.environ, "KUBECONFIG": str(server.root / "kubeconfig")}

    def cp(*args: str) -> None:
        got = subprocess.run([kubectl_binary(version), "cp", *args], env=env, capture_output=True, timeout=120)
        assert got.returncode == 0, got.stderr

    blob = random.randbytes(23 * MiB + 7)
    (tmp_path / "blob").write_bytes(blob)
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "empty").write_bytes(b"")
    (tree / "sub" / "edge").write_bytes(random.randbytes(65537))
    cp(str(tmp_path / "blob"), "notar:/tmp/blob")
    cp(str(tree), "notar:/tmp/tree")
    got = kubectl(server, "exec", "notar", "--", "/bin/busybox", "sha256sum", "/tmp/blob", "/tmp/tree/sub/edge")
    sums = [line.split()[0] for line in got.stdout.decode().splitlines()]
    assert sums == [hashlib.sha256(blob).hexdigest(), hashlib.sha256((tree / "sub" / "edge").read_bytes()).hexdigest()]
    cp("notar:/tmp/blob", str(tmp_path / "back"))
    assert (tmp_path / "back").read_bytes() == blob
    cp("notar:/tmp/tree", str(tmp_path / "tree-back"))
    for name in ("empty", "sub/edge"):
        assert (tmp_path / "tree-back" / name).read_bytes() == (tree / name).read_bytes()
    # What GNU tar says of a path that is not there (kubectl shows it, and
    # ends well: it reads only the archive).
    got = subprocess.run(
        [kubectl_binary(version), "cp", "notar:/tmp/none", str(tmp_path / "x")],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert not (tmp_path / "x").exists()
    if version == "1.33":  # 1.20 stops reading the command's stderr at the archive's end
        assert b"tar: /tmp/none: Cannot stat: No such file or directory" in got.stdout + got.stderr


def test_kubectl_cp_without_tar_as_the_containers_user(server, kubelet, tmp_path):
    """The files are the container user's; a read-only root says so."""
    spec = ContainerSpec("app", image="podshell.test/static:1", run_as_user=1000, readonly_rootfs=True)
    kubelet.run_pod("team-c", "notar-ro", spec)
    wait_listed(server, "notar-ro")
    (tmp_path / "f").write_bytes(b"data")
    got = kubectl(server, "cp", str(tmp_path / "f"), "notar-ro:/home/f")
    assert got.returncode != 0
    assert b"Read-only file system" in got.stdout + got.stderr, (got.stdout, got.stderr)
    got = kubectl(server, "cp", "notar-ro:/etc/group", str(tmp_path / "group"))
    assert got.returncode == 0, got.stderr
    assert b"extra:x:2000:app" in (tmp_path / "group").read_bytes()  # the image's, read as uid 1000


def test_podshell_cp_both_ways_into_an_image_without_tar(server, kubelet, home, tmp_path):
    kubelet.run_pod("team-c", "cpbox", ContainerSpec("app", image="podshell.test/static:1"))
    wait_listed(server, "cpbox")
    blob = random.randbytes(41 * MiB + 3)  # tens of MiB, odd: every buffer and frame boundary crossed
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "edge").write_bytes(random.randbytes(16385))
    (tree / "blob").write_bytes(blob)
    got = cli(home, "cp", str(tree), "team-c/cpbox:/tmp/up")  # no such directory: the tree becomes it
    assert (got.returncode, got.stderr) == (0, b""), got.stderr  # no progress line off a terminal
    # A directory: the file goes in it (this image has no test to ask, so the '/' says it).
    got = cli(home, "cp", str(tree / "blob"), "team-c/cpbox:/tmp/up/")
    assert got.returncode == 0, got.stderr
    got = cli(home, "exec", "team-c/cpbox", "--", "/bin/busybox", "sha256sum", "/tmp/up/blob", "/tmp/up/sub/edge")
    assert got.stdout.decode().split()[::2] == [
        hashlib.sha256(blob).hexdigest(),
        hashlib.sha256((tree / "sub" / "edge").read_bytes()).hexdigest(),
    ]
    got = cli(home, "cp", "team-c/cpbox:/tmp/up", str(tmp_path / "down"))
    assert got.returncode == 0, got.stderr
    assert (tmp_path / "down" / "blob").read_bytes() == blob
    assert (tmp_path / "down" / "sub" / "edge").read_bytes() == (tree / "sub" / "edge").read_bytes()
    got = cli(home, "cp", "team-c/cpbox:/tmp/up/blob", str(tmp_path / "down"))  # into the existing directory
    assert got.returncode == 0 and (tmp_path / "down" / "blob").read_bytes() == blob
    # Mistakes, each in one line.
    got = cli(home, "cp", str(tmp_path / "none"), "team-c/cpbox:/tmp/x")
    assert (got.returncode, got.stderr) == (1, f"podshell: {tmp_path / 'none'}: no such file or directory\n".encode())
    got = cli(home, "cp", "a", "b")
    assert got.returncode == 1 and b"one of SRC and DST is a container path" in got.stderr


def test_podshell_cp_shows_its_progress_on_a_terminal(server, kubelet, home, tmp_path):
    kubelet.run_pod("team-c", "cpterm", ContainerSpec("app", image="podshell.test/static:1"))
    wait_listed(server, "cpterm")
    (tmp_path / "big").write_bytes(bytes(64 * MiB))
    assert PODSHELL
    term = Terminal(["env", f"HOME={home}", PODSHELL, "cp", str(tmp_path / "big"), "team-c/cpterm:/tmp/big"], 24, 80)
    term.expect(b"100%", timeout=60)
    term.expect(b"/s \r\n", timeout=30)  # the last line, ended
    assert term.close() == 0
