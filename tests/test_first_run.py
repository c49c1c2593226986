"""What a new user trips on: no SSH key yet, a port already taken, state that
followed the working directory, forwards outside the pod, an editable install
twistd could not see.  Driven with twistd, the OpenSSH client and pip."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

from podshell.core.addresses import join

from .conftest import PYTHON, needs_root, pod
from .podserver import SINK_PORT
from .sshserver import PODSERVER, TWISTD, Client, PodshellServer, free_port, keygen, wait_port
from .support.twistd import Server
from .support.waiting import wait_until

pytestmark = needs_root

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A configured server: alice has a key in the configuration, carol's keys
    come from an authorized_keys file that starts empty."""
    root = tmp_path_factory.mktemp("first-run")
    (root / "carol_keys").write_text("")
    srv = PodshellServer(
        root,
        [pod("web-0", {"name": "app", "command": [PYTHON, PODSERVER]}, namespace="team-a")],
        [
            {"name": "alice", "ssh_keys": [keygen(root / "id_alice")]},
            {"name": "carol", "authorized_keys_file": "./carol_keys"},
        ],
        [{"subjects": ["user:alice", "user:carol"], "verbs": ["*"], "namespaces": ["team-a"]}],
        api=f"tcp:{free_port()}:interface=127.0.0.1",
    )
    try:
        srv.wait_ready(containers=1)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def alice(server):
    return Client(server, server.root / "id_alice")


def _forward(client: Client, host: str, port: int) -> subprocess.CompletedProcess:
    """ssh -W HOST:PORT; the channel's open failure, if any, on stderr."""
    return client.ssh("team-a.web-0", None, "-W", join(host, port), "-o", "LogLevel=INFO", input=b"")


def _end(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.kill()
        server.proc.wait()


def test_a_key_added_to_authorized_keys_works_at_the_next_login(server):
    key = server.root / "id_carol"
    keygen(key)
    client = Client(server, key)
    r = client.ssh("team-a.web-0", "echo in")
    assert r.returncode == 255 and b"Permission denied (publickey)" in r.stderr
    keys = server.root / "carol_keys"
    original = keys.read_text()
    keys.write_text(original + "# added while the server runs\n" + key.with_suffix(".pub").read_text())
    try:
        r = client.ssh("team-a.web-0", "echo in")
        assert (r.returncode, r.stdout) == (0, b"in\n"), r.stderr
    finally:
        keys.write_text(original)
    # And taken away the same way, as sshd does.
    r = client.ssh("team-a.web-0", "echo in")
    assert r.returncode == 255 and b"Permission denied (publickey)" in r.stderr


OUTSIDE = ["10.1.2.3", "0.0.0.0", "::", "192.0.2.7", "::ffff:10.1.2.3", "fe80::1", "example.com", "127.1"]


@pytest.mark.parametrize("host", OUTSIDE)
def test_a_forward_outside_the_pod_is_administratively_prohibited(alice, host):
    r = _forward(alice, host, 80)
    assert (
        f"open failed: administratively prohibited: podshell: only ports inside the pod can be forwarded: "
        f"use localhost:80, not {join(host, 80)}"
    ).encode() in r.stderr, r.stderr


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"])
def test_the_pods_loopback_is_inside_the_pod(alice, host):
    r = _forward(alice, host, 1)
    assert f"open failed: connect failed: podshell: nothing listens on {host}:1".encode() in r.stderr, r.stderr


def test_ssh_L_outside_the_pod_fails_at_open_and_the_forward_to_localhost_works(alice, server):
    local, inside = free_port(), free_port()
    p = alice.background(
        "team-a.web-0",
        "-N",
        "-o",
        "LogLevel=INFO",
        "-L",
        f"{local}:10.1.2.3:80",
        "-L",
        f"{inside}:localhost:{SINK_PORT}",
    )
    try:
        wait_port(inside)
        wait_until(lambda: _sink(inside).startswith(b"5 "), 15, "the pod's sink to answer")
        with socket.create_connection(("127.0.0.1", local)) as s:
            assert s.recv(100) == b""  # the client closes it when the channel is refused
    finally:
        # Not SIGTERM: OpenSSH 9.2's client loses one that comes between two
        # polls (as here, just after it closed the refused connection) and
        # waits on; what it had to say is on stderr already.
        p.kill()
        _, err = p.communicate(timeout=10)
    assert (
        b"open failed: administratively prohibited: podshell: only ports inside the pod can be forwarded: "
        b"use localhost:80, not 10.1.2.3:80"
    ) in err


def _sink(port: int) -> bytes:
    """What the pod's sink server answers to 5 bytes: their count and digest."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"hello")
        s.shutdown(socket.SHUT_WR)
        return s.recv(100)


def test_ssh_R_outside_the_pod_is_refused_with_the_same_rule(alice):
    r = alice.ssh("team-a.web-0", None, "-N", "-v", "-o", "ExitOnForwardFailure=yes", "-R", "10.1.2.3:0:localhost:9")
    assert r.returncode == 255
    assert b"podshell: -R can only listen inside the pod (localhost), not on 10.1.2.3" in r.stderr


def test_a_second_server_on_the_same_ports_says_so_in_one_line_each(server, tmp_path):
    config = yaml.safe_load((server.root / "podshell.yaml").read_text())
    second = {"state_dir": "./state", "ssh": {"listen": config["ssh"]["listen"]}, "api": config["api"]}
    (tmp_path / "podshell.yaml").write_text(yaml.safe_dump(second))
    r = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "podshell", "--config", "podshell.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1
    output = r.stdout + r.stderr
    assert "Traceback" not in output and "ReactorNotRunning" not in output, output
    assert "no SSH key to let in: no user in podshell.yaml has ssh_keys" in output
    refused = [line.split("] ", 1)[1] for line in output.splitlines() if "cannot listen" in line]
    ssh, api = config["ssh"]["listen"], config["api"]["listen"]
    assert refused == [
        f"podshell: SSH: cannot listen on '{ssh}': Couldn't listen on 127.0.0.1:{server.port}: "
        "[Errno 98] Address already in use.",
        f"podshell: Kubernetes API: cannot listen on '{api}': Couldn't listen on 127.0.0.1:{api.split(':')[1]}: "
        "[Errno 98] Address already in use.",
    ]


def test_the_embedded_default_for_a_new_user(tmp_path):
    """No ~/.ssh at all: the log says where keys are looked for, where the state
    and the podshell command are; an ssh-keygen later gets in without a restart;
    the state is the same wherever the server is started."""
    home, work, state = tmp_path / "home", tmp_path / "work", tmp_path / "state"
    home.mkdir()
    work.mkdir()
    (work / "podshell-state").mkdir()  # an earlier version's state, where it started
    env = {**os.environ, "HOME": str(home), "USER": "tester", "LOGNAME": "tester", "PODSHELL_STATE_DIR": str(state)}
    server = Server(work, env=env)
    try:
        server.wait_for_log("get in: ssh -p 2222")
        server.wait_for_log("container default/demo/main started")
        out = server.output()
        assert f"state in {state}," in out
        assert f"the podshell command (config check, ca, login, exec): {BIN / 'podshell'}" in out
        assert (
            f"no SSH key to let in: looked in {home}/.ssh/authorized_keys and {home}/.ssh/id_*.pub; make one with "
            "ssh-keygen -t ed25519 (or add a public key to authorized_keys): it is read at the next login"
        ) in out
        assert f"{work}/podshell-state is an earlier podshell's state" in out
        assert f"--state-dir {work}/podshell-state" in out
        assert (
            f"podshell CLI: {BIN / 'podshell'} login --server https://127.0.0.1:8443 --token-file {state}/token" in out
        )
        assert sorted(os.listdir(work)) == ["podshell-state", "twistd.out"]  # nothing new where it started
        known = tmp_path / "known_hosts"
        known.write_text("[127.0.0.1]:2222 " + (state / "ssh_host_ed25519_key.pub").read_text())
        target = types.SimpleNamespace(port=2222, known_hosts=known)
        (home / ".ssh").mkdir(mode=0o700)
        key = home / ".ssh" / "id_ed25519"
        client = Client(target, key)  # type: ignore[arg-type]
        r = client.ssh("default.demo", "echo in")
        assert r.returncode == 255 and b"Permission denied (publickey)" in r.stderr
        keygen(key)  # what the warning says to do
        r = client.ssh("default.demo", "echo in")
        assert (r.returncode, r.stdout) == (0, b"in\n"), r.stderr
        assert server.stop() == -signal.SIGTERM
    finally:
        _end(server)
    # Started from elsewhere: the same state, so the same host key.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    again = Server(elsewhere, "--state-dir", str(state), env={**env, "PODSHELL_STATE_DIR": ""})
    try:
        again.wait_for_log("get in: ssh -p 2222")
        again.wait_for_log("container default/demo/main started")
        assert "generated SSH host key" not in again.output() and f"state in {state}," in again.output()
        r = client.ssh("default.demo", "echo in")
        assert (r.returncode, r.stdout) == (0, b"in\n"), r.stderr
        assert again.stop() == -signal.SIGTERM
    finally:
        _end(again)


def test_an_editable_install_is_seen_by_twistd(tmp_path):
    """pip install -e: the default (PEP 660) editable mode puts an import hook,
    not a path entry, on sys.path, and Twisted's plugin scan looks only at path
    entries.  The dependencies come from this interpreter's site-packages, so
    only podshell itself is installed."""
    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    for name in files.decode().split("\0"):
        if name and (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next(p for p in sys.path if p.endswith("site-packages") and (Path(p) / "twisted").is_dir())
    (site / "deps.pth").write_text(deps + "\n")  # a path entry only: the .pth files there are not run
    python = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    start = time.monotonic()
    subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(src)],
        check=True,
        timeout=120,
        env=env,
        capture_output=True,
    )
    took = time.monotonic() - start
    twistd = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
    r = subprocess.run(
        [python, "-c", twistd, "--help"], capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path
    )
    assert "podshell: shells, commands and port forwards" in r.stdout, (took, r.stdout, r.stderr)
    where = subprocess.run(
        [python, "-c", "import podshell; print(podshell.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert where.stdout.strip() == str(src / "podshell" / "__init__.py")
