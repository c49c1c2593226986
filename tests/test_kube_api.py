"""The Kubernetes-compatible API, driven by stock kubectl and the Python client."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import ssl
import struct
import subprocess
import time
import zlib

import pytest

from podshell.core import kubeconfig
from podshell.pki.state_ca import StateCA, issue
from podshell.protocols import spdy
from podshell.protocols.spdy import SpdyConnection

from .conftest import PYTHON, needs_root, pod
from .podserver import ECHO_PORT, SINK_PORT, SOURCE_PORT, download, pattern
from .sshserver import PODSERVER, PodshellServer, free_port
from .support.kubectl import EXEC_CASES, PF_CASES, PortForward, kubectl_binary, minor, transport_env
from .support.sink import upload
from .support.terminal import Terminal, drive_a_shell
from .support.waiting import listens_argv, wait_until
from .support.websocket import RawWebSocket

pytestmark = needs_root

TOKENS = {"alice": "alice-token-0123456789abcdef", "mallory": "mallory-token-0123456789abcdef"}


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    port = free_port()
    pods = [
        pod(
            "web-0",
            {"name": "app", "command": [PYTHON, PODSERVER], "ports": [{"containerPort": SINK_PORT, "name": "sink"}]},
            {"name": "sidecar", "command": ["sleep", "3600"]},
            {
                "name": "echo",
                "stdin": True,
                "command": ["sh", "-c", "while read l; do echo got:$l; echo err:$l >&2; done"],
            },
            {"name": "console", "stdin": True, "tty": True, "command": ["sh"]},
            namespace="team-a",
        ),
        pod("other", {"name": "main", "command": ["sleep", "3600"]}, namespace="team-b"),
    ]
    users = [
        {"name": "alice", "groups": ["dev"], "tokens": [TOKENS["alice"]]},
        {"name": "mallory", "tokens": [TOKENS["mallory"]]},
    ]
    policy = [{"subjects": ["group:dev"], "verbs": ["*"], "namespaces": ["team-a"]}]
    server = PodshellServer(root, pods, users, policy, api=f"ssl:{port}:interface=127.0.0.1")
    try:
        server.wait_ready(containers=5)
        server.api_url = f"https://127.0.0.1:{port}"
        ca = (root / "state" / "ca.crt").read_bytes()
        for user, token in TOKENS.items():
            kubeconfig.write(root / f"{user}.kubeconfig", kubeconfig.render(server.api_url, user, token, ca, "team-a"))
        probe = ("exec", "web-0", "-c", "app", "--", *listens_argv(PYTHON, ECHO_PORT))  # its last listener
        wait_until(lambda: kubectl(server, *probe).returncode == 0, 15, "the pod's servers to listen")
        yield server
    finally:
        server.stop()


def kubectl(api, *args: str, user: str = "alice", version: str | None = None, env: dict | None = None, **kw):
    binary = kubectl_binary(version)
    environment = {**os.environ, "KUBECONFIG": str(api.root / f"{user}.kubeconfig"), **(env or {})}
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 60)
    return subprocess.run([binary, *args], env=environment, **kw)


def test_get_pods_shows_the_usual_columns(api):
    r = kubectl(api, "get", "pods")
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert lines[1].split()[:4] == ["web-0", "4/4", "Running", "0"]
    r = kubectl(api, "get", "pods", "-A")
    assert [line.split()[:2] for line in r.stdout.decode().splitlines()[1:]] == [
        ["team-a", "web-0"]
    ]  # team-b is not alice's
    r = kubectl(api, "get", "pod", "web-0", "-o", "json")
    obj = json.loads(r.stdout)
    assert (obj["kind"], obj["status"]["phase"], [c["name"] for c in obj["spec"]["containers"]]) == (
        "Pod",
        "Running",
        ["app", "sidecar", "echo", "console"],
    )


def test_get_pod_errors(api):
    r = kubectl(api, "get", "pod", "web-9")
    assert (r.returncode, r.stderr) == (1, b'Error from server (NotFound): pods "web-9" not found\n')
    r = kubectl(api, "exec", "web-9", "--", "true")
    assert (r.returncode, r.stderr) == (1, b'Error from server (NotFound): pods "web-9" not found\n')
    r = kubectl(api, "get", "pod", "web-0", "-n", "nowhere")  # no rights there: as RBAC says it
    assert b'Error from server (Forbidden): pods "web-0" is forbidden: User "alice"' in r.stderr
    r = kubectl(api, "get", "pod", "other", "-n", "team-b")
    assert b"Error from server (Forbidden)" in r.stderr


@pytest.mark.parametrize(("version", "transport"), EXEC_CASES)
def test_exec_exit_codes_and_separate_stderr(api, version, transport):
    env = transport_env(transport)
    for code in (0, 7, 255):
        r = kubectl(
            api,
            "exec",
            "web-0",
            "-c",
            "sidecar",
            "--",
            "sh",
            "-c",
            f"echo out; echo err >&2; exit {code}",
            version=version,
            env=env,
        )
        assert r.returncode == code, r.stderr
        assert r.stdout == b"out\n"
        assert r.stderr.startswith(b"err\n")


@pytest.mark.parametrize(("version", "transport"), [("1.20", "spdy"), ("1.33", "spdy"), ("1.33", "websocket")])
def test_exec_stdin_reaches_eof(api, version, transport):
    data = os.urandom(5 << 20)
    env = transport_env(transport)
    r = kubectl(api, "exec", "-i", "web-0", "-c", "sidecar", "--", "sha256sum", input=data, version=version, env=env)
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest(), r.stderr


@pytest.mark.parametrize(("version", "transport"), [("1.20", "spdy"), ("1.33", "spdy"), ("1.33", "websocket")])
def test_exec_with_a_terminal_and_resize(api, version, transport):
    config = api.root / "alice.kubeconfig"
    env = [f"{k}={v}" for k, v in transport_env(transport).items()]
    argv = ["env", f"KUBECONFIG={config}", *env, kubectl_binary(version), "exec", "-it", "web-0", "-c", "sidecar"]
    drive_a_shell([*argv, "--", "sh"])


@pytest.mark.parametrize(("version", "transport"), [("1.20", "spdy"), ("1.33", "spdy"), ("1.33", "websocket")])
def test_kubectl_cp_both_ways(api, tmp_path, version, transport):
    data = os.urandom(3 << 20)
    (tmp_path / "up.bin").write_bytes(data)
    env = transport_env(transport)
    r = kubectl(api, "cp", str(tmp_path / "up.bin"), "team-a/web-0:/tmp/up.bin", "-c", "app", version=version, env=env)
    assert r.returncode == 0, r.stderr
    down = ("cp", "team-a/web-0:/tmp/up.bin", str(tmp_path / "down.bin"), "-c", "app")
    r = kubectl(api, *down, version=version, env=env)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "down.bin").read_bytes() == data


def test_python_client_exec(api):
    from kubernetes import client, config
    from kubernetes.stream import stream

    api_client = config.new_client_from_config(str(api.root / "alice.kubeconfig"))
    core = client.CoreV1Api(api_client)
    resp = stream(
        core.connect_get_namespaced_pod_exec, "web-0", "team-a", command=["sh", "-c", "echo hi; echo oops >&2; exit 3"],
        stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False,
    )  # fmt: skip
    resp.run_forever(timeout=30)
    assert resp.read_stdout() == "hi\n"
    assert resp.read_stderr() == "oops\n"
    assert resp.returncode == 3


def test_unauthorized_and_forbidden(api, tmp_path):
    bad = tmp_path / "bad.kubeconfig"
    ca = (api.root / "state" / "ca.crt").read_bytes()
    kubeconfig.write(bad, kubeconfig.render(api.api_url, "x", "not-a-valid-token-at-all", ca))
    r = subprocess.run(
        ["kubectl", "exec", "web-0", "--", "true"],
        env={**os.environ, "KUBECONFIG": str(bad)},
        capture_output=True,
        timeout=60,
    )
    assert r.returncode == 1 and b"Unauthorized" in r.stderr
    r = kubectl(api, "exec", "web-0", "-n", "team-a", "--", "true", user="mallory")
    assert r.returncode == 1 and b"Forbidden" in r.stderr


def test_client_certificates_from_the_state_ca_log_in(api, tmp_path):
    ca = StateCA(api.root / "state")
    cert = issue(ca.ca, "alice", client=True)
    (tmp_path / "c.crt").write_bytes(cert.cert_pem)
    (tmp_path / "c.key").write_bytes(cert.key_pem)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    r = subprocess.run(
        ["kubectl", "--server", api.api_url, "--certificate-authority", str(tmp_path / "ca.crt"),
         "--client-certificate", str(tmp_path / "c.crt"), "--client-key", str(tmp_path / "c.key"),
         "-n", "team-a", "exec", "web-0", "--", "echo", "by-cert"],
        env={**os.environ, "KUBECONFIG": "/dev/null"}, capture_output=True, timeout=60,
    )  # fmt: skip
    assert r.stdout == b"by-cert\n", r.stderr


def _raw(api, request: bytes) -> bytes:
    """One raw request over TLS; the answer up to its Content-Length."""
    context = ssl.create_default_context(cafile=str(api.root / "state" / "ca.crt"))
    port = int(api.api_url.rsplit(":", 1)[1])
    with (
        socket.create_connection(("127.0.0.1", port)) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        s.sendall(request)
        s.settimeout(10)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                head, _, body = out.partition(b"\r\n\r\n")
                if b"content-length: " in head.lower():
                    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                    if len(body) >= length:
                        break
        except (TimeoutError, ssl.SSLError):
            pass
        return out


def test_bad_requests_get_clear_errors(api):
    auth = f"Authorization: Bearer {TOKENS['alice']}\r\n".encode()
    out = _raw(api, b"GARBAGE\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")
    path = b"/api/v1/namespaces/team-a/pods/web-0/exec?command=true&stdout=true"
    out = _raw(api, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n")
    assert out.startswith(b"HTTP/1.1 400") and b"Upgrade request required" in out
    ws = (
        b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"Connection: Upgrade\r\nUpgrade: websocket\r\n"
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v9.channel.k8s.io\r\n\r\n"
    )
    out = _raw(api, ws)
    assert out.startswith(b"HTTP/1.1 403") and b"x-accepted-stream-protocol-versions: v5.channel.k8s.io" in out.lower()
    out = _raw(
        api, b"GET /api/v1/namespaces/team-a/pods/web-0/exec?stdout=true HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
    )
    assert b"you must specify at least one command" in out
    out = _raw(
        api, b"GET /api/v1/namespaces/team-a/pods/web-0/exec?command=true HTTP/1.1\r\nHost: x\r\n" + auth + b"\r\n"
    )
    assert b"at least 1 of stdin, stdout, stderr" in out


@pytest.mark.parametrize(("version", "transport"), PF_CASES)
def test_port_forward_two_ports_concurrent_and_refused(api, version, transport):
    from concurrent.futures import ThreadPoolExecutor

    forward = PortForward(api, version, transport, SOURCE_PORT, SINK_PORT, 7009)
    source, sink, refused = forward.local
    try:
        n = 1 << 20
        expected = hashlib.sha256(pattern(n)).hexdigest()
        data = os.urandom(n)
        with ThreadPoolExecutor(20) as pool:
            downs = [pool.submit(download, source, n) for _ in range(10)]
            ups = [pool.submit(upload, sink, data) for _ in range(10)]
            assert [f.result() for f in downs] == [(n, expected)] * 10
            assert {f.result() for f in ups} == {f"{n} {hashlib.sha256(data).hexdigest()}".encode()}
        # Nothing listens on 7009: that connection is closed, the forward lives on.
        with socket.create_connection(("127.0.0.1", refused), timeout=30) as s:
            assert s.recv(100) == b""
        assert download(source, 1000) == (1000, hashlib.sha256(pattern(1000)).hexdigest())
        assert forward.proc.poll() is None
    finally:
        err = forward.stop()
    if minor(version) < 23:  # older clients show the reason and carry on
        assert b"nothing listens on localhost:7009 in pod team-a/web-0" in err


@pytest.mark.parametrize(("version", "transport"), [("1.33", "spdy"), ("1.33", "websocket")])
def test_port_forward_100_megabytes(api, version, transport):
    forward = PortForward(api, version, transport, SOURCE_PORT)
    try:
        n = 100 << 20  # the source repeats its 64 MiB pattern
        expected = hashlib.sha256(pattern(64 << 20) + pattern(36 << 20)).hexdigest()
        assert download(forward.local[0], n) == (n, expected)
    finally:
        forward.stop()


def test_python_client_port_forward(api):
    from kubernetes import client, config
    from kubernetes.stream import portforward

    core = client.CoreV1Api(config.new_client_from_config(str(api.root / "alice.kubeconfig")))
    pf = portforward(core.connect_get_namespaced_pod_portforward, "web-0", "team-a", ports=f"{SOURCE_PORT},7009")
    try:
        s = pf.socket(SOURCE_PORT)
        s.setblocking(True)
        s.sendall(b"3000000\n")
        got = b"".join(iter(lambda: s.recv(1 << 16), b""))
        assert got == pattern(3000000)
        assert pf.socket(7009).recv(10) == b""
        assert "nothing listens on localhost:7009" in (pf.error(7009) or "")
    finally:
        pf.close()


def _attach(api, version: str, transport: str, container: str) -> subprocess.Popen:
    env = {**os.environ, "KUBECONFIG": str(api.root / "alice.kubeconfig"), **transport_env(transport)}
    return subprocess.Popen(
        [kubectl_binary(version), "attach", "-i", "web-0", "-c", container],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


@pytest.mark.parametrize(("version", "transport"), [("1.20", "spdy"), ("1.33", "spdy"), ("1.33", "websocket")])
def test_attach_joins_the_running_container(api, version, transport):
    """stdin reaches the container's main process, its stdout and stderr come
    back apart; detaching leaves it running for the next attach."""
    for word in ("first", "second"):
        proc = _attach(api, version, transport, "echo")
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"{word}\n".encode())
        proc.stdin.flush()
        assert proc.stdout.readline() == f"got:{word}\n".encode()
        assert proc.stderr is not None
        assert proc.stderr.readline().startswith(b"If you don't see a command prompt")
        assert proc.stderr.readline() == f"err:{word}\n".encode()
        proc.terminate()
        proc.communicate(timeout=15)
    r = kubectl(api, "get", "pod", "web-0", "-o", "json")
    statuses = {c["name"]: c for c in json.loads(r.stdout)["status"]["containerStatuses"]}
    assert statuses["echo"]["restartCount"] == 0 and "running" in statuses["echo"]["state"]


@pytest.mark.parametrize(("version", "transport"), [("1.33", "spdy"), ("1.33", "websocket")])
def test_attach_with_a_terminal(api, version, transport):
    config = api.root / "alice.kubeconfig"
    env = [f"{k}={v}" for k, v in transport_env(transport).items()]
    argv = ["env", f"KUBECONFIG={config}", *env, kubectl_binary(version), "attach", "-it", "web-0", "-c", "console"]
    term = Terminal(argv, 30, 90)
    term.send(b"echo attached-$((40+2))\r")
    term.expect(b"attached-42")
    term.proc.terminate()
    assert term.close() != 0


class RawSpdy:
    """A hand-driven SPDY client on the sans-IO core (the client side of it)."""

    def __init__(self, api, path: str, protocols: list[str]) -> None:
        context = ssl.create_default_context(cafile=str(api.root / "state" / "ca.crt"))
        port = int(api.api_url.rsplit(":", 1)[1])
        self.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
        self.sock.settimeout(10)
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKENS['alice']}\r\n"
        head += "Content-Length: 0\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        head += "".join(f"X-Stream-Protocol-Version: {p}\r\n" for p in protocols) + "\r\n"
        self.sock.sendall(head.encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)  # byte by byte: nothing after the head is ours to eat
        self.head = response
        self.core = SpdyConnection(client=True)

    def send(self, raw: bytes = b"") -> None:
        self.sock.sendall(self.core.data_to_send() + raw)

    def events(self, until, timeout: float = 10) -> list:
        """Events until C{until(events)} holds or the connection ends."""
        got: list = []
        deadline = time.monotonic() + timeout
        while not until(got) and time.monotonic() < deadline:
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, ssl.SSLError):
                break
            if not data:
                break
            got += self.core.receive_data(data)
        return got

    def close(self) -> None:
        self.sock.close()


EXEC_PATH = "/api/v1/namespaces/team-a/pods/web-0/exec?container=sidecar&stdout=true&command=sh&command=-c&command="


def test_spdy_exec_by_hand_sends_nothing_unasked_and_ends_with_a_status(api):
    conn = RawSpdy(api, EXEC_PATH + "echo%20hand;exit%203", ["v9.channel.k8s.io", "v4.channel.k8s.io"])
    assert conn.head.startswith(b"HTTP/1.1 101") and b"X-Stream-Protocol-Version: v4.channel.k8s.io" in conn.head
    conn.sock.settimeout(0.5)
    with pytest.raises((TimeoutError, ssl.SSLError)):
        conn.sock.recv(1)  # the Go client could lose bytes sent before its first frame
    conn.sock.settimeout(10)
    error = conn.core.open_stream({"streamtype": "error"})
    conn.send()
    assert conn.events(lambda e: e) == [spdy.SynReply(error, {})]  # answered at once, alone
    out = conn.core.open_stream({"streamtype": "stdout"})
    conn.send()
    events = conn.events(lambda e: any(isinstance(x, spdy.Data) and x.fin and x.stream_id == error for x in e))
    data = {
        sid: b"".join(e.data for e in events if isinstance(e, spdy.Data) and e.stream_id == sid) for sid in (out, error)
    }
    assert data[out] == b"hand\n"
    status = json.loads(data[error])
    assert status["reason"] == "NonZeroExitCode" and status["details"]["causes"] == [
        {"reason": "ExitCode", "message": "3"}
    ]
    conn.close()


def test_spdy_garbage_and_bombs_end_only_their_own_connection(api):
    """A session in progress carries on while other connections send broken frames."""
    path = EXEC_PATH.replace("stdout=true", "stdin=true&stdout=true")
    good = RawSpdy(api, path + "read%20x;echo%20got-$x", ["v4.channel.k8s.io"])
    good.core.open_stream({"streamtype": "error"})
    stdin = good.core.open_stream({"streamtype": "stdin"})
    out = good.core.open_stream({"streamtype": "stdout"})
    good.send()
    assert len(good.events(lambda e: len(e) == 3)) == 3
    deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, spdy.DICTIONARY)
    value = b"a" * (8 << 20)
    bomb = deflate.compress(struct.pack(">III", 1, 1, len(value)) + value) + deflate.flush(zlib.Z_SYNC_FLUSH)
    payload = struct.pack(">IIBB", 1, 0, 0, 0) + bomb
    broken = [
        b"\x80\x03\x00\x06\x00\x00\x00\x05\x00\x00\x00\x01\x00",  # a PING of the wrong size
        b"\x80\x03\x00\x01\x00\x00\x00\x10" + b"\x00\x00\x00\x01" + b"\x00" * 6 + b"not-zl",  # not zlib
        struct.pack(">HHB", 0x8003, 1, 0) + len(payload).to_bytes(3, "big") + payload,  # 8 MiB from 8 KiB
        b"\x00\x00\x00\x00\x00\x00\x00\x01x",  # DATA on stream 0
    ]
    for frame in broken:
        bad = RawSpdy(api, path + "true", ["v4.channel.k8s.io"])
        bad.send(frame)
        events = bad.events(lambda e: False)
        assert events == [spdy.GoAway(0, spdy.GoAwayStatus.PROTOCOL_ERROR)]
        bad.close()
    good.core.send_data(stdin, b"still-here\n")
    good.send()
    events = good.events(lambda e: any(isinstance(x, spdy.Data) and x.fin and x.stream_id == out for x in e))
    assert b"".join(e.data for e in events if isinstance(e, spdy.Data) and e.stream_id == out) == b"got-still-here\n"
    good.close()


def test_a_vanished_client_leaves_no_process_behind(api):
    """exec'd processes are hung up when their client goes (as sshd does)."""
    conn = RawSpdy(api, EXEC_PATH + "sleep%201234", ["v4.channel.k8s.io"])
    conn.core.open_stream({"streamtype": "error"})
    conn.core.open_stream({"streamtype": "stdout"})
    conn.send()
    conn.events(lambda e: len(e) == 2)
    ps = ["exec", "web-0", "-c", "sidecar", "--", "sh", "-c", "ps -o args | grep -c '^sleep 1234' || true"]
    assert kubectl(api, *ps).stdout.strip() == b"1"
    conn.sock.close()
    wait_until(lambda: kubectl(api, *ps).stdout.strip() == b"0", 10, "the process to end with its client")


def test_bad_streaming_requests_get_clear_errors(api):
    auth = f"Authorization: Bearer {TOKENS['alice']}\r\n".encode()
    spdy_head = b"Host: x\r\n" + auth + b"Content-Length: 0\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    exec_path = b"/api/v1/namespaces/team-a/pods/web-0/exec?command=true&stdout=true"
    out = _raw(api, b"POST " + exec_path + b" HTTP/1.1\r\n" + spdy_head + b"\r\n")
    assert out.startswith(b"HTTP/1.1 400") and b"missing X-Stream-Protocol-Version" in out
    out = _raw(api, b"POST " + exec_path + b" HTTP/1.1\r\n" + spdy_head + b"X-Stream-Protocol-Version: v9\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 403")
    assert b"x-accepted-stream-protocol-versions: v4.channel.k8s.io" in out.lower()
    pf = b"/api/v1/namespaces/team-a/pods/web-0/portforward"
    ws = (
        b"Host: x\r\n" + auth + b"Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n"
    )
    out = _raw(api, b"GET " + pf + b" HTTP/1.1\r\n" + ws)
    assert out.startswith(b"HTTP/1.1 400") and b"query parameter ports is required" in out
    out = _raw(api, b"GET " + pf + b"?ports=80,99999 HTTP/1.1\r\n" + ws)
    assert out.startswith(b"HTTP/1.1 400") and b"invalid port '99999'" in out


def test_port_forward_streams_with_bad_headers_are_refused(api):
    conn = RawSpdy(api, "/api/v1/namespaces/team-a/pods/web-0/portforward", ["portforward.k8s.io"])
    assert b"X-Stream-Protocol-Version: portforward.k8s.io" in conn.head
    bad = [
        {"streamtype": "error", "port": "0", "requestid": "1"},
        {"streamtype": "data", "port": "http", "requestid": "2"},
        {"streamtype": "video", "port": "80", "requestid": "3"},
    ]
    ids = [conn.core.open_stream(headers) for headers in bad]
    conn.send()
    events = conn.events(lambda e: len(e) == 3)
    assert events == [spdy.StreamReset(i, spdy.Status.CANCEL) for i in ids]
    error = conn.core.open_stream({"streamtype": "error", "port": str(SOURCE_PORT), "requestid": "9"})
    data = conn.core.open_stream({"streamtype": "data", "port": str(SOURCE_PORT), "requestid": "9"})
    conn.core.send_data(data, b"5\n")
    conn.send()
    events = conn.events(lambda e: any(isinstance(x, spdy.Data) and x.fin and x.stream_id == error for x in e))
    assert b"".join(e.data for e in events if isinstance(e, spdy.Data) and e.stream_id == data) == pattern(5)
    conn.close()


def test_websocket_port_forward_base64_with_pings(api):
    from wsproto.events import CloseConnection, Ping, Pong, TextMessage

    conn = RawWebSocket(
        api,
        f"/api/v1/namespaces/team-a/pods/web-0/portforward?ports={SOURCE_PORT}",
        "v4.base64.channel.k8s.io",
        TOKENS["alice"],
    )
    prefix = base64.b64encode(struct.pack("<H", SOURCE_PORT)).decode()
    assert [conn.next().data, conn.next().data] == ["0" + prefix, "1" + prefix]
    conn.send(Ping(b"are-you-there"))
    assert conn.next() == Pong(b"are-you-there")
    conn.send(TextMessage("0" + base64.b64encode(b"1000\n").decode()))
    got = b""
    while isinstance(event := conn.next(), TextMessage):
        assert event.data[0] == "0"
        got += base64.b64decode(event.data[1:])
    assert got == pattern(1000)
    assert isinstance(event, CloseConnection) and event.code == 1000  # every port done


def test_websocket_exec_takes_text_frames_and_answers_pings(api):
    from wsproto.events import BytesMessage, CloseConnection, Message, Ping, Pong, TextMessage

    path = "/api/v1/namespaces/team-a/pods/web-0/exec?container=sidecar&stdin=true&stdout=true&command=head&command=-c6"
    conn = RawWebSocket(api, path, "v4.channel.k8s.io", TOKENS["alice"])
    conn.send(Ping(b"x"))
    conn.send(TextMessage("\x00hel"))  # stdin in a text frame
    conn.send(BytesMessage(b"\x00lo\n"))
    out, status, pong = b"", b"", None
    while not isinstance(event := conn.next(), CloseConnection):
        if isinstance(event, Pong):
            pong = event
        elif isinstance(event, Message):
            channel, data = event.data[0], event.data[1:]
            out += data if channel == 1 else b""
            status += data if channel == 3 else b""
    assert (pong, out, json.loads(status)["status"], event.code) == (Pong(b"x"), b"hello\n", "Success", 1000)


def test_websocket_text_outside_latin1_is_its_utf8_or_a_clear_close(api):
    """A text frame's bytes are its UTF-8; where that is bad input (not base64),
    that connection alone closes with 1007 and the reason."""
    from wsproto.events import CloseConnection, Message, TextMessage

    path = "/api/v1/namespaces/team-a/pods/web-0/exec?container=sidecar&stdin=true&stdout=true&command=head&command=-c4"
    good = RawWebSocket(api, path, "v4.channel.k8s.io", TOKENS["alice"])
    bad = RawWebSocket(api, path, "v4.base64.channel.k8s.io", TOKENS["alice"])
    bad.send(TextMessage("0€"))
    while not isinstance(event := bad.next(), CloseConnection):
        pass
    assert (event.code, event.reason) == (1007, "bad base64 payload")
    good.send(TextMessage("\x00€\n"))
    out = b""
    while not isinstance(event := good.next(), CloseConnection):
        if isinstance(event, Message) and event.data[:1] == b"\x01":
            out += event.data[1:]
    assert (out, event.code) == ("€\n".encode(), 1000)
