"""The SSH front door, driven by the stock OpenSSH client against real pods."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from .conftest import PYTHON, needs_root, pod
from .podserver import ECHO_PORT, SINK_PORT, SOURCE_PORT, STALL_PORT, pattern
from .sshserver import PODSERVER, Client, PodshellServer, environ, free_port, keygen, wait_port
from .support.terminal import Terminal
from .support.waiting import listens_argv, wait_until

pytestmark = needs_root

LONG_POD = ".".join(["segment-" + str(i) for i in range(11)])[:100].rstrip(".-")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssh")
    keys = {name: keygen(root / f"id_{name}") for name in ("alice", "bob", "carol", "nobody")}
    pods = [
        {
            **pod(
                "web-0",
                {"name": "app", "command": [PYTHON, PODSERVER]},
                {"name": "sidecar", "command": ["sleep", "3600"]},
                namespace="team-a",
            ),
        },
        pod(LONG_POD, {"name": "main", "command": ["sleep", "3600"]}, namespace="team-a"),
    ]
    pods[0]["metadata"]["annotations"] = {"kubectl.kubernetes.io/default-container": "app"}
    users = [
        {"name": "alice", "groups": ["dev"], "ssh_keys": [keys["alice"]]},
        {"name": "bob", "ssh_keys": [keys["bob"]]},
        {"name": "carol", "ssh_keys": [keys["carol"]]},
    ]
    policy = [
        {"subjects": ["group:dev"], "verbs": ["*"], "namespaces": ["team-a"]},
        {
            "subjects": ["user:bob"],
            "verbs": ["exec"],
            "namespaces": ["team-a"],
            "pods": ["web-*"],
            "containers": ["app"],
        },
    ]
    # Fifty logins at once from one address (test_fifty_concurrent_sessions):
    # over the default limits on unauthenticated connections, as over sshd's.
    limits = {"max_startups": 1000, "per_source_max_startups": None}
    srv = PodshellServer(root, pods, users, policy, ssh=limits)
    try:
        srv.wait_ready(containers=3)
        probe = Client(srv, root / "id_alice")
        listening = shlex.join(listens_argv(PYTHON, ECHO_PORT))  # its last listener
        wait_until(lambda: probe.ssh("team-a.web-0.app", listening).returncode == 0, 15, "the pod's servers to listen")
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def alice(server):
    return Client(server, server.root / "id_alice")


@pytest.fixture(scope="module")
def bob(server):
    return Client(server, server.root / "id_bob")


def audit(server, since: int = 0) -> list[dict]:
    """The audit log's entries from the C{since}th on: a case reads only
    those it caused, not what an earlier case left in the shared log."""
    return [json.loads(line) for line in server.audit.read_text().splitlines()[since:]]


# Commands: exit codes, streams, stdin, environment, names.


def test_exec_exit_code_and_separate_stderr(alice):
    r = alice.ssh("team-a.web-0.app", "echo out; echo err >&2; exit 7")
    assert (r.returncode, r.stdout, r.stderr) == (7, b"out\n", b"err\n")


def test_exec_runs_through_the_shell_with_quoting(alice):
    r = alice.ssh("team-a.web-0.app", "printf '%s|' 'a b' \"c'd\" $((6*7))")
    assert r.stdout == b"a b|c'd|42|"


def test_exit_signal_is_reported(alice, server):
    r = alice.ssh("team-a.web-0.app", "kill -TERM $$")
    assert r.returncode == 255  # how OpenSSH ends when the command died of a signal
    ends = [a for a in audit(server) if a["event"] == "session.end" and a.get("command") == ["kill -TERM $$"]]
    assert ends[-1]["status"] == "signal TERM"


@pytest.mark.parametrize("lang", [None, "C.UTF-8"])
def test_stdin_reaches_eof(alice, lang):
    data = os.urandom(3 << 20)
    args = ("-o", "SendEnv=LANG") if lang else ()
    env = environ(LANG=lang) if lang else environ()
    r = alice.ssh("team-a.web-0", "sha256sum; echo $LANG", *args, input=data, env=env)
    lines = r.stdout.decode().splitlines()
    assert lines[0].split()[0] == hashlib.sha256(data).hexdigest()
    assert lines[1] == (lang or "")


def test_environment_allow_list(alice):
    env = environ(PODSHELL_COLOR="blue", SECRET_TOKEN="x", LC_TIME="C")
    r = alice.ssh(
        "team-a.web-0",
        "echo ${PODSHELL_COLOR:-unset} ${SECRET_TOKEN:-unset} ${LC_TIME:-unset}",
        "-o", "SendEnv=PODSHELL_COLOR SECRET_TOKEN LC_TIME",
        env=env,
    )  # fmt: skip
    assert r.stdout == b"blue unset C\n"


@pytest.mark.parametrize(
    "target, container",
    [
        ("team-a.web-0", "podserver.py"),  # the default container (annotation)
        ("team-a.web-0.sidecar", "sleep"),
        ("team-a/web-0/sidecar", "sleep"),
        ("team-a/web-0", "podserver.py"),
        (f"team-a.{LONG_POD}.main", "sleep"),
        (f"team-a.{LONG_POD}", "sleep"),
    ],
)
def test_target_forms(alice, target, container):
    r = alice.ssh(target, "tr '\\0' ' ' < /proc/1/cmdline; echo; hostname")
    assert r.returncode == 0, r.stderr
    cmdline, hostname = r.stdout.decode().splitlines()
    assert container in cmdline
    assert hostname in ("web-0", LONG_POD[:63].rstrip(".-"))


# Denials: one clear line, audited.


@pytest.mark.parametrize(
    "user, target, message, logged",
    [
        ("alice", "team-a.web-9", "podshell: no pod team-a/web-9", "no pod team-a/web-9"),
        (
            "alice",
            "team-a/web-0/db",
            "podshell: pod team-a/web-0 has no container 'db' (it has: app, sidecar)",
            "pod team-a/web-0 has no container 'db' (it has: app, sidecar)",
        ),
        ("alice", "Bad_Name", "podshell: invalid target 'Bad_Name'", "invalid target"),
        ("carol", "team-a.web-0", "podshell: carol has no access to team-a/web-0", "no verb allowed"),
        # No hint to carol that it does not exist; the log says why.
        ("carol", "team-a.web-9", "podshell: carol has no access to team-a/web-9", "no pod team-a/web-9"),
        ("bob", "team-a/web-0/sidecar", "podshell: bob has no access to team-a/web-0/sidecar", "no verb allowed"),
    ],
)
def test_denied_logins_say_why(server, user, target, message, logged):
    since = len(audit(server))
    r = Client(server, server.root / f"id_{user}").ssh(target, "true", "-o", "LogLevel=INFO")
    assert r.returncode == 255
    assert message in r.stderr.decode(), r.stderr
    denials = [(a["user"], a["via"], a["verb"], a["target"], a["reason"]) for a in audit(server, since)]
    assert denials == [(user, "ssh", "login", target, logged)]


def test_unknown_key_is_an_ordinary_auth_failure(server):
    r = Client(server, server.root / "id_nobody").ssh("team-a.web-0", "true")
    assert r.returncode == 255 and b"Permission denied (publickey)" in r.stderr


def test_denied_verb_on_an_allowed_login(bob):
    r = bob.ssh("team-a.web-0", None, "-W", f"localhost:{SINK_PORT}", "-o", "LogLevel=INFO", input=b"")
    assert r.returncode != 0
    assert b"podshell: bob may not port-forward in team-a/web-0" in r.stderr


# Terminals.


def test_interactive_shell_size_resize_ctrl_c_and_exit_status(alice):
    term = Terminal(alice.ssh_argv("team-a.web-0.sidecar", "-tt"), 40, 100)
    term.send(b"stty size; echo marker-$((1+1))\r")
    term.expect(b"40 100\r\nmarker-2")
    term.resize(50, 132)
    term.send(b"stty size; echo marker-$((2+1))\r")
    term.expect(b"50 132\r\nmarker-3")
    started = time.monotonic()
    term.send(b"sh -c 'echo fore$((1))ground; exec sleep 30'\r")
    term.expect(b"fore1ground")  # the foreground job runs: the Ctrl-C is for it
    term.send(b"\x03")  # Ctrl-C reaches the foreground process through the terminal
    term.send(b"echo status-$?\r")
    term.expect(b"status-130")
    assert time.monotonic() - started < 10
    term.send(b"tty; exit 3\r")
    term.expect(b"/dev/pts/")
    assert term.close() == 3


# File copies.


def test_scp_both_ways_recursive_and_legacy(alice, tmp_path):
    data = os.urandom(5 << 20)
    src = tmp_path / "up.bin"
    src.write_bytes(data)
    target = "team-a.web-0.sidecar@127.0.0.1"
    for flags in ([], ["-O"]):  # SFTP protocol (default in OpenSSH 9) and the legacy scp protocol
        assert alice.scp(*flags, str(src), f"{target}:/tmp/up.bin").returncode == 0
        r = alice.ssh("team-a.web-0.sidecar", "sha256sum /tmp/up.bin")
        assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
        down = tmp_path / f"down{len(flags)}.bin"
        r = alice.scp(*flags, f"{target}:/tmp/up.bin", str(down))
        assert r.returncode == 0, r.stderr
        assert down.read_bytes() == data
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "a.txt").write_text("a")
    (tree / "sub" / "b.txt").write_text("b")
    assert alice.scp("-r", str(tree), f"{target}:/tmp/").returncode == 0
    assert alice.ssh("team-a.web-0.sidecar", "cat /tmp/tree/a.txt /tmp/tree/sub/b.txt").stdout == b"ab"


def test_scp_with_lang_sent_does_not_hang(alice, tmp_path):
    src = tmp_path / "f"
    src.write_bytes(b"x" * 1000)
    r = alice.scp("-o", "SendEnv=LANG LC_*", str(src), "team-a.web-0@127.0.0.1:/tmp/f", env=environ(LANG="C.UTF-8"))
    assert r.returncode == 0, r.stderr


def test_sftp_batch(alice):
    r = alice.sftp(
        "team-a.web-0.sidecar",
        "mkdir /tmp/sftp-dir\ncd /tmp/sftp-dir\nput /etc/hostname h\nrename h h2\nls\ndf -h\nrm h2\ncd /\nrmdir /tmp/sftp-dir\n",
    )
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert "h2" in out and "Avail" in out


def test_rsync_over_ssh(alice, tmp_path):
    tree = tmp_path / "rs"
    tree.mkdir()
    for i in range(20):
        (tree / f"f{i}").write_bytes(os.urandom(10000))
    r = alice.rsync("-a", f"{tree}/", "team-a.web-0.sidecar@127.0.0.1:/tmp/rs/")
    assert r.returncode == 0, r.stderr
    back = tmp_path / "back"
    r = alice.rsync("-a", "team-a.web-0.sidecar@127.0.0.1:/tmp/rs/", f"{back}/")
    assert r.returncode == 0, r.stderr
    assert all((back / f"f{i}").read_bytes() == (tree / f"f{i}").read_bytes() for i in range(20))


# Port forwards.


@pytest.fixture
def forward(alice):
    procs = []

    def start(spec: str, *extra: str) -> int:
        local = free_port()
        p = alice.background("team-a.web-0", "-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{local}:{spec}", *extra)
        procs.append(p)
        wait_port(local)
        return local

    yield start
    for p in procs:
        p.kill()  # OpenSSH 9.2 may sit on a SIGTERM that arrives while it is busy
        p.wait(10)


def test_local_forward_100mb_download_and_upload_with_half_close(forward):
    local = forward(f"localhost:{SOURCE_PORT}")
    n = 100 << 20
    with socket.create_connection(("127.0.0.1", local)) as s:
        s.sendall(f"{n}\n".encode())
        digest, total = hashlib.sha256(), 0
        while chunk := s.recv(1 << 20):
            digest.update(chunk)
            total += len(chunk)
    assert total == n and digest.hexdigest() == hashlib.sha256(pattern(64 << 20) + pattern(36 << 20)).hexdigest()
    local = forward(f"127.0.0.1:{SINK_PORT}")
    data = os.urandom(20 << 20)
    with socket.create_connection(("127.0.0.1", local)) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # the answer comes only after EOF reaches the pod
        answer = b""
        while chunk := s.recv(1000):
            answer += chunk
    assert answer.decode() == f"{len(data)} {hashlib.sha256(data).hexdigest()}"


def test_local_forward_to_a_destination_that_never_reads_keeps_memory_flat(forward, server):
    local = forward(f"localhost:{STALL_PORT}")
    before = server.rss
    sent = 0
    with socket.create_connection(("127.0.0.1", local)) as s:
        s.settimeout(3)
        block = b"z" * (1 << 20)
        try:
            while sent < 300 << 20:
                s.sendall(block)
                sent += len(block)
        except TimeoutError:
            pass
        time.sleep(1)  # the point: a while for whatever the server still buffers to show in its memory
        growth = server.rss - before
    assert sent < 300 << 20, "the forward never pushed back"
    assert growth < 40 << 20, f"server grew {growth >> 20} MiB"


def test_a_client_that_stops_reading_pauses_every_channel_at_its_source(alice, server):
    """16 downloads stream until the ssh client is stopped; what their windows
    still allow must then wait at the sources, not pile up in the server."""
    local = free_port()
    client = alice.background("team-a.web-0", "-N", "-L", f"{local}:localhost:{SOURCE_PORT}")
    socks: list[socket.socket] = []
    stop = threading.Event()
    received: list[int] = []

    def drain(s: socket.socket, i: int) -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set() and (chunk := s.recv(1 << 20)):
                received[i] += len(chunk)

    try:
        wait_port(local)
        for _ in range(16):
            s = socket.create_connection(("127.0.0.1", local))
            s.sendall(f"{1 << 40}\n".encode())
            socks.append(s)
            received.append(0)
            threading.Thread(target=drain, args=(s, len(socks) - 1), daemon=True).start()
        # Streaming at full speed (not every channel need have started: the windows decide).
        wait_until(lambda: sum(received) > 64 << 20, 30, "64 MiB of downloads to arrive")
        before = server.rss
        os.kill(client.pid, signal.SIGSTOP)
        time.sleep(3)  # the point: the client stays stopped a while, and the server must not grow meanwhile
        growth = server.rss - before
        assert growth < 6 << 20, f"server grew {growth >> 20} MiB behind a stopped client"
    finally:
        stop.set()
        os.kill(client.pid, signal.SIGKILL)
        client.wait(10)
        for s in socks:
            s.close()


def test_local_forward_errors(alice):
    r = alice.ssh("team-a.web-0", None, "-W", "example.com:80", "-o", "LogLevel=INFO", input=b"")
    assert b"podshell: only ports inside the pod can be forwarded: use localhost:80, not example.com:80" in r.stderr
    r = alice.ssh("team-a.web-0", None, "-W", "localhost:1", "-o", "LogLevel=INFO", input=b"")
    assert b"podshell: nothing listens on localhost:1 in pod team-a/web-0" in r.stderr


def test_remote_forward_into_the_pod(alice, tmp_path):
    # A server on the user's machine, reached from inside the pod through ssh -R.
    listener = socket.create_server(("127.0.0.1", 0))
    local_port = listener.getsockname()[1]

    def serve():
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
                conn.sendall(b"local got " + str(len(data)).encode())

    threading.Thread(target=serve, daemon=True).start()
    p = alice.background(
        "team-a.web-0.sidecar",
        "-N",
        "-o",
        "LogLevel=INFO",
        "-o",
        "ExitOnForwardFailure=yes",
        "-R",
        f"0:localhost:{local_port}",
    )
    try:
        deadline = time.monotonic() + 15
        line = b""
        while b"Allocated port" not in line and time.monotonic() < deadline:
            line += p.stderr.readline()
        remote = int(line.split(b"Allocated port ")[1].split()[0])
        probe = (
            f"import socket; s = socket.create_connection(('127.0.0.1', {remote})); s.sendall(b'x' * 123456);"
            " s.shutdown(socket.SHUT_WR); print(s.recv(100).decode())"
        )
        for _ in range(2):
            r = alice.ssh("team-a.web-0.sidecar", f'{PYTHON} -c "{probe}"')
            assert r.stdout == b"local got 123456\n", r.stderr
        # Outside the pod, that port is not there.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", remote), timeout=1)
    finally:
        p.kill()
        p.wait(10)
        listener.close()


def test_fifty_concurrent_sessions(alice):
    def one(i: int) -> bytes:
        return alice.ssh("team-a.web-0.sidecar", f"echo session-{i}; sleep 1").stdout

    with ThreadPoolExecutor(50) as pool:
        outputs = list(pool.map(one, range(50)))
    assert outputs == [f"session-{i}\n".encode() for i in range(50)]


def test_sessions_are_audited(alice, server):
    alice.ssh("team-a.web-0.sidecar", "head -c 1000 /dev/zero", input=b"abc")
    end = [a for a in audit(server) if a["event"] == "session.end" and a.get("command") == ["head -c 1000 /dev/zero"]][
        -1
    ]
    assert (end["user"], end["via"], end["verb"], end["target"]) == ("alice", "ssh", "exec", "team-a/web-0/sidecar")
    assert end["bytes_out"] == 1000 and end["status"] == "exit code 0"
    assert end["from"].startswith("127.0.0.1:")


def test_signal_requests_reach_the_process(server):
    """OpenSSH's client cannot send `signal` requests; asyncssh can."""
    import asyncio

    import asyncssh

    async def run() -> tuple[int | None, str]:
        async with asyncssh.connect(
            "127.0.0.1",
            server.port,
            username="team-a.web-0.sidecar",
            client_keys=[str(server.root / "id_alice")],
            known_hosts=str(server.known_hosts),
        ) as conn:
            process = await conn.create_process(
                "trap 'echo got-usr1; exit 9' USR1; echo ready; while :; do sleep 0.05; done"
            )
            assert (await process.stdout.readline()) == "ready\n"
            process.send_signal("USR1")
            result = await process.wait(timeout=10)
            return result.exit_status, result.stdout

    assert asyncio.run(run()) == (9, "got-usr1\n")
