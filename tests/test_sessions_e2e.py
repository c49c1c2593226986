"""Live sessions end to end: the real OpenSSH client in a real server, and
the real C{podshell sessions list / kill}; the idle timeout, the per-user
cap, and SIGTERM's grace (and no grace with nothing open)."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from .conftest import needs_root, pod
from .sshserver import Client, PodshellServer, free_port, keygen
from .support.cli import cli
from .support.waiting import wait_until

pytestmark = needs_root
ALICE_TOKEN = "alice-token-0123456789abcdef"
OPS_TOKEN = "ops-token-0123456789abcdef00"
CAP = 3


def start(root, sessions: dict) -> PodshellServer:
    key = keygen(root / "id_alice")
    users = [{"name": "alice", "ssh_keys": [key], "tokens": [ALICE_TOKEN]}, {"name": "ops", "tokens": [OPS_TOKEN]}]
    policy = [
        {"subjects": ["user:alice"], "verbs": ["exec"], "namespaces": ["team-a"]},
        {"subjects": ["user:alice"], "verbs": ["exec"], "namespaces": ["team-b"], "idle_timeout": 2},
        {"subjects": ["user:ops"], "verbs": ["admin"], "namespaces": ["*"]},
    ]
    pods = [
        pod("web-0", {"name": "app", "command": ["sleep", "3600"]}, namespace="team-a"),
        pod("idle-0", {"name": "app", "command": ["sleep", "3600"]}, namespace="team-b"),
    ]
    srv = PodshellServer(root, pods, users, policy, api=f"ssl:{free_port()}:interface=127.0.0.1", sessions=sessions)
    srv.wait_ready(containers=2)
    return srv


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start(tmp_path_factory.mktemp("sessions"), {"max_per_user": CAP})
    try:
        yield srv
    finally:
        srv.stop()


def sessions(server, tmp_path, token: str, *args: str) -> subprocess.CompletedProcess:
    port = next(line for line in (server.root / "podshell.yaml").read_text().splitlines() if "ssl:" in line)
    port = port.split("ssl:")[1].split(":")[0]
    connection = ["--server", f"https://127.0.0.1:{port}", "--token", token]
    connection += ["--certificate-authority", str(server.root / "state" / "ca.crt")]
    return cli(tmp_path, "sessions", *args, *connection)


def listed(server, tmp_path) -> list[dict]:
    done = sessions(server, tmp_path, OPS_TOKEN, "list", "-o", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def shell(alice: Client, target: str, command: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*alice.ssh_argv(target, "-tt"), command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_list_shows_a_live_session_and_kill_ends_it_with_the_operator_line(server, tmp_path):
    alice = Client(server, server.root / "id_alice")
    client = shell(alice, "team-a.web-0", "echo hello-from-the-pod; sleep 600")
    try:
        wait_until(lambda: any(s["bytes_out"] > 0 for s in listed(server, tmp_path)), 15, "the session's output")
        (one,) = listed(server, tmp_path)
        assert (one["user"], one["via"], one["verb"], one["target"]) == ("alice", "ssh", "exec", "team-a/web-0/app")
        assert one["bytes_out"] >= len("hello-from-the-pod")
        table = sessions(server, tmp_path, OPS_TOKEN, "list")
        assert one["id"] in table.stdout.decode() and "team-a/web-0/app" in table.stdout.decode()
        killed = sessions(server, tmp_path, OPS_TOKEN, "kill", one["id"])
        assert killed.returncode == 0, killed.stderr
        out, err = client.communicate(timeout=15)
    finally:
        client.kill()
    assert client.returncode == 255
    assert b"podshell: an operator ended this session" in err + out
    wait_until(lambda: listed(server, tmp_path) == [], 10, "the session to be gone")
    ends = [json.loads(line) for line in server.audit.read_text().splitlines()]
    end = next(r for r in ends if r["event"] == "session.end" and r["id"] == one["id"])
    assert end["status"] == "ended by an operator" and end["ended_by"]["user"] == "ops"


def test_a_user_without_admin_is_refused(server, tmp_path):
    for action in (["list"], ["kill", "0" * 32]):
        done = sessions(server, tmp_path, ALICE_TOKEN, *action)
        assert done.returncode == 1
        assert b"alice may not see or end sessions (no policy rule gives the verb admin)" in done.stderr


def test_an_idle_session_is_warned_then_ended(server):
    alice = Client(server, server.root / "id_alice")
    started = time.monotonic()
    done = alice.ssh("team-b.idle-0", "sleep 600", "-tt", timeout=30)
    assert 2 <= time.monotonic() - started < 10
    seen = done.stdout + done.stderr
    assert b"podshell: this session is idle; it ends in" in seen
    assert b"podshell: this session was idle for 2s, and has ended" in seen
    assert done.returncode == 255


def test_the_per_user_cap_refuses_the_next_session(server, tmp_path):
    alice = Client(server, server.root / "id_alice")
    clients = [shell(alice, "team-a.web-0", "sleep 600") for _ in range(CAP)]
    try:
        wait_until(lambda: len(listed(server, tmp_path)) == CAP, 15, f"{CAP} sessions")
        over = alice.ssh("team-a.web-0", "true")
        assert over.returncode == 1
        assert b"podshell: alice has 3 sessions open, as many as one user may" in over.stderr
    finally:
        for c in clients:
            c.kill()
            c.communicate(timeout=10)
    wait_until(lambda: listed(server, tmp_path) == [], 10, "the sessions to end")


def test_sigterm_with_a_session_waits_for_the_grace_then_ends_it(tmp_path):
    srv = start(tmp_path, {"shutdown_grace": 2})
    try:
        alice = Client(srv, tmp_path / "id_alice")
        client = shell(alice, "team-a.web-0", "echo up; sleep 600")
        assert client.stdout is not None
        assert client.stdout.readline().strip() == b"up"
        asked = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        out, err = client.communicate(timeout=20)
        ended = time.monotonic() - asked
        assert srv.proc.wait(20) in (0, -signal.SIGTERM)  # twistd ends as the signal says
        assert 1.5 <= ended < 8
        seen = out + err
        assert b"podshell: the server is shutting down; this session ends in 2s" in seen
        assert b"podshell: the server shut down" in seen
    finally:
        srv.stop()


def test_sigterm_with_nothing_open_exits_at_once(tmp_path):
    srv = start(tmp_path, {"shutdown_grace": 30})
    try:
        asked = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(20) in (0, -signal.SIGTERM)  # twistd ends as the signal says
        assert time.monotonic() - asked < 3
    finally:
        srv.stop()
