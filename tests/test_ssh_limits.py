"""Limits on logged-in SSH connections against a real OpenSSH client:
keepalives it answers (and one it cannot answer, stopped), and the channel cap
on a connection's port forwards."""

from __future__ import annotations

import shlex
import signal
import socket

import pytest

from .conftest import PYTHON, needs_root, pod
from .podserver import ECHO_PORT
from .sshserver import PODSERVER, Client, PodshellServer, free_port, keygen, wait_port
from .support.waiting import listens_argv, wait_until

pytestmark = needs_root

INTERVAL = 0.3
COUNT_MAX = 2
MAX_CHANNELS = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("ssh-limits")
    key = keygen(root / "id_alice")
    users = [{"name": "alice", "ssh_keys": [key]}]
    policy = [{"subjects": ["user:alice"], "verbs": ["exec", "port-forward"], "namespaces": ["team-a"]}]
    pods = [pod("web-0", {"name": "app", "command": [PYTHON, PODSERVER]}, namespace="team-a")]
    ssh = {"keepalive_interval": INTERVAL, "keepalive_count_max": COUNT_MAX, "max_channels": MAX_CHANNELS}
    srv = PodshellServer(root, pods, users, policy, ssh=ssh)
    try:
        srv.wait_ready(containers=1)
        probe = Client(srv, root / "id_alice")
        listening = shlex.join(listens_argv(PYTHON, ECHO_PORT))
        wait_until(lambda: probe.ssh("team-a.web-0", listening).returncode == 0, 15, "the pod's echo server")
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def alice(server):
    return Client(server, server.root / "id_alice")


def test_keepalives_are_answered_and_an_idle_session_stays_up(alice):
    done = alice.ssh("team-a.web-0", "sleep 2 && echo still here", "-o", "LogLevel=DEBUG1", timeout=20)
    assert (done.returncode, done.stdout) == (0, b"still here\n"), done.stderr
    probes = done.stderr.count(b"client_input_global_request: rtype keepalive@openssh.com want_reply")
    assert probes >= 3, done.stderr  # about one per interval of the 2 s


def test_a_client_that_cannot_answer_is_dropped(server, alice):
    local = free_port()
    client = alice.background("team-a.web-0", "-N", "-L", f"{local}:localhost:{ECHO_PORT}")
    try:
        wait_port(local)  # the client listens once it is logged in
        client.send_signal(signal.SIGSTOP)  # the kernel still ACKs; the client answers nothing
        wait_until(lambda: "answered no keepalive" in server.log.read_text(), 10, "the server to give up")
    finally:
        client.send_signal(signal.SIGCONT)
    assert client.wait(10) == 255  # the connection is gone under it


def echoes(s: socket.socket, data: bytes) -> bool:
    s.sendall(data)
    got = b""
    while len(got) < len(data) and (chunk := s.recv(65536)):
        got += chunk
    return got == data


def test_forwarded_connections_beyond_max_channels_are_refused_and_the_others_go_on(alice):
    local = free_port()
    argv = ["-N", "-o", "LogLevel=INFO", "-o", "ExitOnForwardFailure=yes", "-L", f"{local}:localhost:{ECHO_PORT}"]
    client = alice.background("team-a.web-0", *argv)
    sockets = []
    try:
        wait_port(local)
        for _ in range(MAX_CHANNELS):
            sockets.append(socket.create_connection(("127.0.0.1", local), timeout=10))
            assert echoes(sockets[-1], b"in\n")
        with socket.create_connection(("127.0.0.1", local), timeout=10) as over:
            assert over.recv(1) == b""  # the client closes it when the server refuses the channel
        assert all(echoes(s, b"still\n") for s in sockets)
    finally:
        for s in sockets:
            s.close()
        client.kill()
        _, stderr = client.communicate(timeout=10)
    refusal = b"open failed: administratively prohibited: podshell: this connection has 2 channels open already"
    assert refusal in stderr, stderr
