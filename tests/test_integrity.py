"""No byte is lost, added, reordered or moved to the wrong stream, on any
path out of a pod: random payloads of sizes that line up with no frame,
fragment or window, through every client, each checked by sha256.

The pod computes the payloads it sends from a seed (tests/podserver.py), so
nothing large crosses the test's own pipes twice; each stream has its own
seed and size, so a swap shows as well as a loss.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import subprocess
import threading
import time
from collections.abc import Iterator
from functools import cache
from urllib.parse import quote

import pytest

from podshell.core import kubeconfig
from podshell.protocols import channels
from podshell.protocols import remotecommand as rc

from . import podserver
from .conftest import PYTHON, needs_root, pod
from .podserver import ECHO_PORT, RANDOM_PORT, SINK_PORT, randomized
from .sshserver import PODSERVER, Client, PodshellServer, free_port, keygen, wait_port
from .support.cluster import Cluster
from .support.kubectl import EXEC_CASES, PF_CASES, PortForward, kubectl_binary, transport_env
from .support.waiting import listens_argv, wait_until
from .support.websocket import RawWebSocket

pytestmark = needs_root

SIZES = [0, 1, 16383, 16385, 65535 + 7, (1 << 20) + 3]
MEDIUM = (1 << 20) + 3
LARGE = (40 << 20) + 5
TOKEN = "alice-token-0123456789abcdef"
TARGET = "team-a.web-0.app"


@cache
def digest(seed: int, n: int) -> str:
    return hashlib.sha256(randomized(seed, n)).hexdigest()


def seeds(n: int) -> tuple[int, int]:
    """Different seeds for stdout and stderr (and for each size)."""
    return 2 * n + 1, 2 * n + 2


def emit(n_out: int, n_err: int) -> list[str]:
    out, err = seeds(n_out)[0], seeds(n_err)[1]
    return [PYTHON, PODSERVER, "emit", str(out), str(n_out), str(err), str(n_err)]


def check_streams(r: subprocess.CompletedProcess, n_out: int, n_err: int) -> None:
    assert r.returncode == 0, r.stderr[-2000:]
    got = (len(r.stdout), hashlib.sha256(r.stdout).hexdigest(), len(r.stderr), hashlib.sha256(r.stderr).hexdigest())
    assert got == (n_out, digest(seeds(n_out)[0], n_out), n_err, digest(seeds(n_err)[1], n_err))


def check_upload(r: subprocess.CompletedProcess, seed: int, n: int) -> None:
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[:1] == [digest(seed, n).encode()], r.stderr[-2000:]


def out_err(n: int) -> tuple[int, int]:
    """stdout of n bytes, stderr of a different size near it."""
    return n, n + 2 if n > 1 else 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("integrity")
    key = root / "id_alice"
    users = [{"name": "alice", "groups": ["dev"], "ssh_keys": [keygen(key)], "tokens": [TOKEN]}]
    policy = [{"subjects": ["group:dev"], "verbs": ["*"], "namespaces": ["team-a"]}]
    pods = [pod("web-0", {"name": "app", "command": [PYTHON, PODSERVER]}, namespace="team-a")]
    port = free_port()
    srv = PodshellServer(root, pods, users, policy, api=f"ssl:{port}:interface=127.0.0.1")
    try:
        srv.wait_ready(containers=1)
        srv.api_url = f"https://127.0.0.1:{port}"  # type: ignore[attr-defined]
        ca = (root / "state" / "ca.crt").read_bytes()
        kubeconfig.write(root / "alice.kubeconfig", kubeconfig.render(srv.api_url, "alice", TOKEN, ca, "team-a"))
        srv.ssh = Client(srv, key)  # type: ignore[attr-defined]
        wait_port_in_pod(srv.ssh, ECHO_PORT)
        yield srv
    finally:
        srv.stop()


def wait_port_in_pod(ssh: Client, port: int) -> None:
    probe = shlex.join(listens_argv(PYTHON, port))
    wait_until(lambda: ssh.ssh(TARGET, probe).returncode == 0, 15, f"port {port} to listen in the pod")


def kubectl(server, *args: str, version: str = "1.33", transport: str = "websocket", **kw):
    env = {**os.environ, "KUBECONFIG": str(server.root / "alice.kubeconfig"), **transport_env(transport)}
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 120)
    return subprocess.run([kubectl_binary(version), *args], env=env, **kw)


# SSH exec


@pytest.mark.parametrize("n", [*SIZES, LARGE])
def test_ssh_exec_stdout_and_stderr(server, n):
    r = server.ssh.ssh(TARGET, shlex.join(emit(*out_err(n))), timeout=120)
    check_streams(r, *out_err(n))


@pytest.mark.parametrize("n", [*SIZES, LARGE])
def test_ssh_exec_stdin(server, n):
    r = server.ssh.ssh(TARGET, "sha256sum", input=randomized(7, n), timeout=120)
    check_upload(r, 7, n)


DUPLEX = [PYTHON, PODSERVER, "duplex", "99", str(LARGE)]


def check_duplex(r: subprocess.CompletedProcess) -> None:
    """stdin came back on stdout whole, while stderr carried its own."""
    assert r.returncode == 0, r.stderr[-2000:]
    assert (len(r.stdout), hashlib.sha256(r.stdout).hexdigest()) == (LARGE, digest(8, LARGE))
    assert (len(r.stderr), hashlib.sha256(r.stderr).hexdigest()) == (LARGE, digest(99, LARGE))


def test_ssh_exec_all_three_streams_at_once(server):
    check_duplex(server.ssh.ssh(TARGET, shlex.join(DUPLEX), input=randomized(8, LARGE), timeout=120))


def slow_reader(argv: list[str], data: bytes | None = None) -> subprocess.CompletedProcess:
    """Run a client whose stdout is read in fits and starts (stderr and stdin
    keep flowing): a window or a pause somewhere must fill, and nothing drop."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    err = bytearray()
    threads = [threading.Thread(target=lambda: err.extend(proc.stderr.read()), daemon=True)]  # type: ignore[union-attr]
    if data is not None:
        threads.append(threading.Thread(target=lambda: (proc.stdin.write(data), proc.stdin.close()), daemon=True))  # type: ignore[union-attr]
    else:
        proc.stdin.close()
    for t in threads:
        t.start()
    out, stalls = bytearray(), 0
    while chunk := proc.stdout.read1(1 << 16):
        out += chunk
        if len(out) >> 21 > stalls:  # every 2 MiB, stop reading for a moment: the point of a slow reader
            stalls += 1
            time.sleep(0.2)
    for t in threads:
        t.join(120)
    return subprocess.CompletedProcess(argv, proc.wait(120), bytes(out), bytes(err))


SLOW = (8 << 20) + 1


def test_ssh_exec_with_a_slow_reader(server):
    check_streams(slow_reader([*server.ssh.ssh_argv(TARGET), shlex.join(emit(SLOW, SLOW + 2))]), SLOW, SLOW + 2)


def test_ssh_exec_stdin_into_a_process_that_reads_late(server):
    r = server.ssh.ssh(TARGET, "sleep 1; sha256sum", input=randomized(7, LARGE), timeout=120)
    check_upload(r, 7, LARGE)


# kubectl exec, every version, WebSocket and SPDY


@pytest.mark.parametrize(("version", "transport"), EXEC_CASES)
def test_kubectl_exec_every_version(server, version, transport):
    r = kubectl(server, "exec", "web-0", "--", *emit(MEDIUM, 65535 + 7), version=version, transport=transport)
    check_streams(r, MEDIUM, 65535 + 7)
    r = kubectl(
        server,
        "exec",
        "-i",
        "web-0",
        "--",
        "sha256sum",
        input=randomized(5, MEDIUM),
        version=version,
        transport=transport,
    )
    check_upload(r, 5, MEDIUM)


@pytest.mark.parametrize("transport", ["websocket", "spdy"])
@pytest.mark.parametrize("n", [*SIZES, LARGE])
def test_kubectl_exec_sizes(server, transport, n):
    r = kubectl(server, "exec", "web-0", "--", *emit(*out_err(n)), transport=transport)
    check_streams(r, *out_err(n))
    r = kubectl(server, "exec", "-i", "web-0", "--", "sha256sum", input=randomized(6, n), transport=transport)
    check_upload(r, 6, n)


@pytest.mark.parametrize("transport", ["websocket", "spdy"])
def test_kubectl_exec_all_three_streams_at_once(server, transport):
    r = kubectl(server, "exec", "-i", "web-0", "--", *DUPLEX, input=randomized(8, LARGE), transport=transport)
    check_duplex(r)


@pytest.mark.parametrize("transport", ["websocket", "spdy"])
def test_kubectl_exec_with_a_slow_reader(server, transport):
    argv = [
        "env",
        f"KUBECONFIG={server.root / 'alice.kubeconfig'}",
        *[f"{k}={v}" for k, v in transport_env(transport).items()],
    ]
    r = slow_reader([*argv, kubectl_binary("1.33"), "exec", "web-0", "--", *emit(SLOW, SLOW + 2)])
    check_streams(r, SLOW, SLOW + 2)


@pytest.mark.parametrize("transport", ["websocket", "spdy"])
def test_kubectl_exec_stdin_into_a_process_that_reads_late(server, transport):
    command = ["sh", "-c", "sleep 1; sha256sum"]
    r = kubectl(server, "exec", "-i", "web-0", "--", *command, input=randomized(6, LARGE), transport=transport)
    check_upload(r, 6, LARGE)


def test_kubectl_1_20_exec_large(server):
    r = kubectl(server, "exec", "web-0", "--", *emit(*out_err(LARGE)), version="1.20", transport="spdy")
    check_streams(r, *out_err(LARGE))


# The Python client's stream (WebSocket channels)


def python_client(server):
    from kubernetes import client, config

    return client.CoreV1Api(config.new_client_from_config(str(server.root / "alice.kubeconfig")))


@pytest.mark.parametrize("n", [16385, MEDIUM, 32 << 20])
def test_python_client_exec(server, n):
    from kubernetes.stream import stream

    n_out, n_err = out_err(n)
    resp = stream(
        python_client(server).connect_get_namespaced_pod_exec, "web-0", "team-a", command=emit(n_out, n_err),
        stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False, binary=True,
    )  # fmt: skip
    out, err = bytearray(), bytearray()
    deadline = time.monotonic() + 120
    while resp.is_open() and time.monotonic() < deadline:
        resp.update(timeout=1)
        out += resp.read_stdout() if resp.peek_stdout() else b""
        err += resp.read_stderr() if resp.peek_stderr() else b""
    out += resp.read_stdout() if resp.peek_stdout() else b""
    err += resp.read_stderr() if resp.peek_stderr() else b""
    assert resp.returncode == 0
    assert (len(out), hashlib.sha256(out).hexdigest()) == (n_out, digest(seeds(n_out)[0], n_out))
    assert (len(err), hashlib.sha256(err).hexdigest()) == (n_err, digest(seeds(n_err)[1], n_err))


@pytest.mark.parametrize("whole", [False, True], ids=["pieces", "one-write"])
def test_python_client_exec_stdin(server, whole):
    """In pieces, and in one write_stdin: one message of a few MiB, which a
    kubelet takes (x/net/websocket reads messages up to 32 MiB)."""
    from kubernetes.stream import stream

    n = 5 * MEDIUM
    resp = stream(
        python_client(server).connect_get_namespaced_pod_exec, "web-0", "team-a",
        command=["sh", "-c", f"head -c {n} | sha256sum"],
        stderr=True, stdin=True, stdout=True, tty=False, _preload_content=False, binary=True,
    )  # fmt: skip
    data = randomized(9, n)
    for piece in [data] if whole else podserver.chunks(data, 9):
        resp.write_stdin(bytes(piece))
    resp.run_forever(timeout=60)
    assert resp.read_stdout().split()[0].decode() == digest(9, n)


# Every WebSocket channel protocol, by hand (kubectl and the Python client speak only some)


def raw_messages(conn: RawWebSocket, b64: bool) -> Iterator[tuple[int, bytes]]:
    """(channel, data) of each whole message, until the server closes (with 1000)."""
    from wsproto.events import CloseConnection, Message

    parts: list[bytes] = []
    while not isinstance(event := conn.next(), CloseConnection):
        assert event is not None, "the connection dropped without a Close"
        if isinstance(event, Message):
            parts.append(event.data.encode() if isinstance(event.data, str) else event.data)
            if event.message_finished:
                payload, parts = b"".join(parts), []
                if payload[1:]:
                    yield channels.decode(payload, b64)
    assert event.code == 1000, event


@pytest.mark.parametrize("protocol", rc.WEBSOCKET_EXEC)
def test_raw_websocket_exec_every_channel_protocol(server, protocol):
    from wsproto.events import BytesMessage, TextMessage

    b64 = protocol in (rc.B64, rc.V4_B64)
    exec_ = "/api/v1/namespaces/team-a/pods/web-0/exec?"
    query = "&".join(f"command={quote(a)}" for a in emit(MEDIUM, 16385))
    streams: dict[int, bytearray] = {1: bytearray(), 2: bytearray(), 3: bytearray()}
    for channel, data in raw_messages(RawWebSocket(server, f"{exec_}stdout=1&stderr=1&{query}", protocol, TOKEN), b64):
        streams[channel] += data
    assert (len(streams[1]), hashlib.sha256(streams[1]).hexdigest()) == (MEDIUM, digest(seeds(MEDIUM)[0], MEDIUM))
    assert (len(streams[2]), hashlib.sha256(streams[2]).hexdigest()) == (16385, digest(seeds(16385)[1], 16385))
    query = "&".join(f"command={quote(a)}" for a in ["sh", "-c", f"head -c {MEDIUM} | sha256sum"])
    conn = RawWebSocket(server, f"{exec_}stdin=1&stdout=1&{query}", protocol, TOKEN)
    for piece in podserver.chunks(randomized(51, MEDIUM), 51):
        message = channels.encode(rc.STDIN, bytes(piece), b64)
        conn.send(TextMessage(message) if isinstance(message, str) else BytesMessage(message))
    out = b"".join(data for channel, data in raw_messages(conn, b64) if channel == rc.STDOUT)
    assert out.split()[0].decode() == digest(51, MEDIUM)


@pytest.mark.parametrize("protocol", [rc.V4, rc.V4_B64])
def test_raw_websocket_port_forward_channel_protocols(server, protocol):
    from wsproto.events import BytesMessage, TextMessage

    b64 = protocol == rc.V4_B64
    path = f"/api/v1/namespaces/team-a/pods/web-0/portforward?ports={RANDOM_PORT}"
    conn = RawWebSocket(server, path, protocol, TOKEN)
    request = channels.encode(0, b"61 %d\n" % MEDIUM, b64)
    conn.send(TextMessage(request) if isinstance(request, str) else BytesMessage(request))
    got, opened = bytearray(), 0
    for channel, data in raw_messages(conn, b64):
        if opened < 2:  # each channel opens with the port
            assert data == channels.port_prefix(RANDOM_PORT)
            opened += 1
            continue
        assert channel == 0, data
        got += data
    assert (len(got), hashlib.sha256(got).hexdigest()) == (MEDIUM, digest(61, MEDIUM))


# kubectl cp, scp, sftp


@pytest.mark.parametrize(("version", "transport"), [("1.33", "websocket"), ("1.33", "spdy"), ("1.20", "spdy")])
def test_kubectl_cp_both_ways(server, tmp_path, version, transport):
    up, down = tmp_path / "up.bin", tmp_path / "down.bin"
    up.write_bytes(randomized(11, LARGE))
    r = kubectl(server, "cp", str(up), "team-a/web-0:/tmp/cp.bin", version=version, transport=transport)
    assert r.returncode == 0, r.stderr
    check_upload(server.ssh.ssh(TARGET, "sha256sum /tmp/cp.bin"), 11, LARGE)
    r = kubectl(server, "cp", "team-a/web-0:/tmp/cp.bin", str(down), version=version, transport=transport)
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(down.read_bytes()).hexdigest() == digest(11, LARGE)


@pytest.mark.parametrize("n", [16385, LARGE])
@pytest.mark.parametrize("mode", [[], ["-O"]], ids=["sftp", "legacy"])
def test_scp_both_ways(server, tmp_path, mode, n):
    up, down = tmp_path / "up.bin", tmp_path / "down.bin"
    up.write_bytes(randomized(12, n))
    remote = f"{TARGET}@127.0.0.1:/tmp/scp-{len(mode)}-{n}.bin"
    r = server.ssh.scp(*mode, str(up), remote)
    assert r.returncode == 0, r.stderr
    check_upload(server.ssh.ssh(TARGET, f"sha256sum /tmp/scp-{len(mode)}-{n}.bin"), 12, n)
    r = server.ssh.scp(*mode, remote, str(down))
    assert r.returncode == 0, r.stderr
    assert hashlib.sha256(down.read_bytes()).hexdigest() == digest(12, n)


def test_sftp_put_and_get(server, tmp_path):
    up, down = tmp_path / "up.bin", tmp_path / "down.bin"
    up.write_bytes(randomized(13, LARGE))
    r = server.ssh.sftp(TARGET, f"put {up} /tmp/sftp.bin\nget /tmp/sftp.bin {down}\n")
    assert r.returncode == 0, r.stderr
    check_upload(server.ssh.ssh(TARGET, "sha256sum /tmp/sftp.bin"), 13, LARGE)
    assert hashlib.sha256(down.read_bytes()).hexdigest() == digest(13, LARGE)


# Port-forwards: download, upload (with half-close), and both at once


def check_forward(ports: list[int], n: int) -> None:
    rand, sink, echo = ports
    assert podserver.fetch(rand, 21, n) == (n, digest(21, n))
    assert podserver.send(sink, 22, n) == f"{n} {digest(22, n)}"
    assert podserver.echo(echo, 23, n) == (n, digest(23, n))


@contextlib.contextmanager
def ssh_forward(ssh: Client, *options: str) -> Iterator[list[int]]:
    local = [free_port() for _ in range(3)]
    pairs = zip(local, (RANDOM_PORT, SINK_PORT, ECHO_PORT), strict=True)
    proc = ssh.background(
        TARGET,
        "-N",
        "-o",
        "ExitOnForwardFailure=yes",
        *options,
        *[a for lp, rp in pairs for a in ("-L", f"{lp}:localhost:{rp}")],
    )
    try:
        wait_port(local[2])
        yield local
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("n", [*SIZES, LARGE])
def test_ssh_local_forward(server, n):
    with ssh_forward(server.ssh) as ports:
        check_forward(ports, n)


@pytest.mark.parametrize("n", [0, 1, 65537])
def test_ssh_stdio_forward_ends_after_the_answer(server, n):
    """ssh -W with the client's EOF first (a request on stdin): the pod's
    side answers and closes; the channel must close and ssh exit."""
    data = randomized(41, n)
    r = server.ssh.ssh(TARGET, None, "-W", f"localhost:{SINK_PORT}", input=data, timeout=30)
    assert (r.returncode, r.stdout.decode().split()) == (0, [str(n), digest(41, n)]), r.stderr


@pytest.mark.parametrize(
    ("version", "transport", "n"),
    [(v, t, MEDIUM) for v, t in PF_CASES] + [("1.33", t, n) for t in ("spdy", "websocket") for n in (1, 16385, LARGE)],
)
def test_kubectl_port_forward(server, version, transport, n):
    forward = PortForward(server, version, transport, RANDOM_PORT, SINK_PORT, ECHO_PORT)
    try:
        check_forward(forward.local, n)
    finally:
        forward.stop()


def test_forwards_to_a_slow_reader(server):
    """The pod's side sends all and closes while the reader lags: the close
    must wait for the data, on every kind of forward."""
    with ssh_forward(server.ssh) as ports:
        assert podserver.fetch(ports[0], 24, SLOW, stall=0.2) == (SLOW, digest(24, SLOW))
    for transport in ("websocket", "spdy"):
        forward = PortForward(server, "1.33", transport, RANDOM_PORT)
        try:
            assert podserver.fetch(forward.local[0], 24, SLOW, stall=0.2) == (SLOW, digest(24, SLOW))
        finally:
            forward.stop()


class LocalServers:
    """Random, Sink and Echo servers on the test's side, for ssh -R."""

    def __init__(self) -> None:
        self.servers = [
            podserver.Server(("127.0.0.1", 0), handler)
            for handler in (podserver.Random, podserver.Sink, podserver.Echo)
        ]
        self.ports = [s.server_address[1] for s in self.servers]
        for s in self.servers:
            threading.Thread(target=s.serve_forever, daemon=True).start()

    def close(self) -> None:
        for s in self.servers:
            s.shutdown()
            s.server_close()


@pytest.mark.parametrize("n", [16385, LARGE])
def test_ssh_remote_forward(server, n):
    """ssh -R: clients inside the pod, servers on the user's side."""
    local = LocalServers()
    remote = [free_port() for _ in local.ports]  # free here; in the pod, only its servers listen
    specs = [a for r, lp in zip(remote, local.ports, strict=True) for a in ("-R", f"{r}:127.0.0.1:{lp}")]
    proc = server.ssh.background(TARGET, "-N", "-o", "ExitOnForwardFailure=yes", *specs)
    try:
        for port in remote:
            wait_port_in_pod(server.ssh, port)
        pod_side = [PYTHON, PODSERVER]
        r = server.ssh.ssh(TARGET, shlex.join([*pod_side, "fetch", str(remote[0]), "31", str(n)]), timeout=120)
        assert r.stdout.decode().split() == [str(n), digest(31, n)], r.stderr
        r = server.ssh.ssh(TARGET, shlex.join([*pod_side, "send", str(remote[1]), "32", str(n)]), timeout=120)
        assert r.stdout.decode().split() == [str(n), digest(32, n)], r.stderr
        r = server.ssh.ssh(TARGET, shlex.join([*pod_side, "echo", str(remote[2]), "33", str(n)]), timeout=120)
        assert r.stdout.decode().split() == [str(n), digest(33, n)], r.stderr
    finally:
        proc.terminate()
        proc.wait(10)
        local.close()


def test_python_client_port_forward(server):
    """Its sockets have no half-close: each side reads the known length."""
    from kubernetes.stream import portforward

    n = SLOW
    pf = portforward(
        python_client(server).connect_get_namespaced_pod_portforward,
        "web-0",
        "team-a",
        ports=f"{RANDOM_PORT},{ECHO_PORT}",
    )
    try:
        s = pf.socket(RANDOM_PORT)
        s.setblocking(True)
        s.sendall(b"41 %d\n" % n)
        got = bytearray()
        while len(got) < n and (chunk := s.recv(1 << 20)):
            got += chunk
        assert (len(got), hashlib.sha256(got).hexdigest()) == (n, digest(41, n))
        e = pf.socket(ECHO_PORT)
        e.setblocking(True)
        data = randomized(42, n)
        writer = threading.Thread(target=e.sendall, args=(data,), daemon=True)
        writer.start()
        got = bytearray()
        while len(got) < n and (chunk := e.recv(1 << 20)):
            got += chunk
        writer.join()
        assert hashlib.sha256(got).hexdigest() == digest(42, n)
    finally:
        pf.close()


# Through a gateway and a node agent (tests/test_nodes.py's three hosts)


@pytest.fixture(scope="module")
def hop(tmp_path_factory):
    cluster = Cluster(tmp_path_factory.mktemp("hop"))
    try:
        yield cluster
    finally:
        cluster.hosts.close()


HOP_TARGET = "team-a.beta"  # on node-2


def test_hop_ssh_exec(hop):
    r = hop.ssh.ssh(HOP_TARGET, shlex.join(emit(*out_err(LARGE))), timeout=120)
    check_streams(r, *out_err(LARGE))
    check_upload(hop.ssh.ssh(HOP_TARGET, "sha256sum", input=randomized(7, LARGE), timeout=120), 7, LARGE)
    check_duplex(hop.ssh.ssh(HOP_TARGET, shlex.join(DUPLEX), input=randomized(8, LARGE), timeout=120))


@pytest.mark.parametrize(("version", "transport"), [("1.33", "websocket"), ("1.33", "spdy"), ("1.20", "spdy")])
def test_hop_kubectl_exec(hop, version, transport):
    env = {**os.environ, **transport_env(transport)}
    exec_ = ("exec", "-n", "team-a", "beta", "--")
    r = hop.kubectl(*exec_, *emit(*out_err(LARGE)), version=version, env=env, timeout=120)
    check_streams(r, *out_err(LARGE))
    r = hop.kubectl("exec", "-i", *exec_[1:], "sha256sum", input=randomized(6, LARGE), version=version, env=env)
    check_upload(r, 6, LARGE)
    r = hop.kubectl("exec", "-i", *exec_[1:], *DUPLEX, input=randomized(8, LARGE), version=version, env=env)
    check_duplex(r)


@pytest.mark.parametrize("n", SIZES)
def test_hop_exec_sizes(hop, n):
    check_streams(hop.ssh.ssh(HOP_TARGET, shlex.join(emit(*out_err(n)))), *out_err(n))
    for version, transport in (("1.33", "websocket"), ("1.33", "spdy")):
        env = {**os.environ, **transport_env(transport)}
        r = hop.kubectl("exec", "-n", "team-a", "beta", "--", *emit(*out_err(n)), version=version, env=env)
        check_streams(r, *out_err(n))


def test_hop_exec_with_a_slow_reader(hop):
    check_streams(slow_reader([*hop.ssh.ssh_argv(HOP_TARGET), shlex.join(emit(SLOW, SLOW + 2))]), SLOW, SLOW + 2)
    for transport in ("websocket", "spdy"):
        env = ["env", *[f"{k}={v}" for k, v in transport_env(transport).items()]]
        argv = hop.hosts.argv("gw", *env, *hop.kubectl_argv("1.33"), "exec", "-n", "team-a", "beta", "--")
        check_streams(slow_reader([*argv, *emit(SLOW, SLOW + 2)]), SLOW, SLOW + 2)


HOP_FORWARD = """
import subprocess
from podserver import echo, fetch, send
from sshserver import wait_port
proc = subprocess.Popen({argv!r}, stdout=subprocess.PIPE)
try:
    for port in {ports!r}:
        wait_port(port, 15)
    rand, sink, echo_port = {ports!r}
    print(*fetch(rand, 21, {n}))
    print(send(sink, 22, {n}))
    print(*echo(echo_port, 23, {n}))
    print(*fetch(rand, 24, {slow}, stall=0.2))
finally:
    proc.terminate()
    proc.wait(10)
"""


def check_hop_forward(hop, argv: list[str], ports: list[int], n: int) -> None:
    r = hop.python(HOP_FORWARD.format(argv=argv, ports=ports, n=n, slow=SLOW), timeout=120)
    assert r.returncode == 0, r.stderr
    expected = [f"{n} {digest(seed, n)}" for seed in (21, 22, 23)] + [f"{SLOW} {digest(24, SLOW)}"]
    assert r.stdout.decode().splitlines() == expected


def test_hop_ssh_local_forward(hop):
    ports = [free_port() for _ in range(3)]
    pairs = zip(ports, (RANDOM_PORT, SINK_PORT, ECHO_PORT), strict=True)
    specs = [a for lp, rp in pairs for a in ("-L", f"{lp}:localhost:{rp}")]
    check_hop_forward(hop, hop.ssh.ssh_argv(HOP_TARGET, "-N", "-o", "ExitOnForwardFailure=yes", *specs), ports, LARGE)


@pytest.mark.parametrize(("version", "transport"), [("1.33", "websocket"), ("1.33", "spdy"), ("1.20", "spdy")])
def test_hop_kubectl_port_forward(hop, version, transport):
    ports = [free_port() for _ in range(3)]
    specs = [f"{lp}:{rp}" for lp, rp in zip(ports, (RANDOM_PORT, SINK_PORT, ECHO_PORT), strict=True)]
    env = [f"{k}={v}" for k, v in transport_env(transport).items()]
    argv = ["env", *env, *hop.kubectl_argv(version), "port-forward", "-n", "team-a", "beta", *specs]
    check_hop_forward(hop, argv, ports, LARGE)


# Many streams on one connection at once: none may take another's bytes, or stall it.


def concurrent_transfers(ports: list[int], rounds: int = 4) -> None:
    from concurrent.futures import ThreadPoolExecutor

    rand, sink, echo = ports
    sizes = [1, 16385, 65535 + 7, MEDIUM, 3 * MEDIUM][:rounds] * 2
    with ThreadPoolExecutor(3 * len(sizes)) as pool:
        jobs = []
        for i, n in enumerate(sizes):
            jobs.append((pool.submit(podserver.fetch, rand, 100 + i, n), (n, digest(100 + i, n))))
            jobs.append((pool.submit(podserver.send, sink, 200 + i, n), f"{n} {digest(200 + i, n)}"))
            jobs.append((pool.submit(podserver.echo, echo, 300 + i, n), (n, digest(300 + i, n))))
        assert [f.result() for f, _ in jobs] == [want for _, want in jobs]


def test_ssh_many_forwarded_connections_at_once(server):
    with ssh_forward(server.ssh) as ports:
        concurrent_transfers(ports, rounds=5)


@pytest.mark.parametrize("transport", ["websocket", "spdy"])
def test_kubectl_many_forwarded_connections_at_once(server, transport):
    forward = PortForward(server, "1.33", transport, RANDOM_PORT, SINK_PORT, ECHO_PORT)
    try:
        concurrent_transfers(forward.local, rounds=5)
    finally:
        forward.stop()


def test_ssh_sessions_and_forwards_sharing_one_connection(server, tmp_path):
    """OpenSSH's multiplexing: sessions and a forward on one SSH connection."""
    from concurrent.futures import ThreadPoolExecutor

    control = ("-o", f"ControlPath={tmp_path / 'mux'}")
    master = server.ssh.background(TARGET, "-N", "-M", *control)
    try:

        def mastered() -> bool:
            assert master.poll() is None, master.communicate()
            return server.ssh.ssh(TARGET, None, "-O", "check", *control).returncode == 0

        wait_until(mastered, 15, "the master connection")
        with ssh_forward(server.ssh, *control) as ports, ThreadPoolExecutor(8) as pool:
            sizes = [16385, MEDIUM, 5 * MEDIUM, SLOW]
            runs = [pool.submit(server.ssh.ssh, TARGET, shlex.join(emit(*out_err(n))), *control) for n in sizes]
            concurrent_transfers(ports, rounds=3)
            for n, run in zip(sizes, runs, strict=True):
                check_streams(run.result(), *out_err(n))
    finally:
        master.terminate()
        master.wait(10)
