"""The native CLI (podshell login / get pods / exec / attach / port-forward /
kubeconfig) against a real server with real pods."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import PYTHON, needs_root, pod
from .podserver import ECHO_PORT, SINK_PORT, SOURCE_PORT, download, pattern
from .sshserver import PODSERVER, free_port
from .support.cli import IPV6_LOOPBACK, PODSHELL, Forward, cli
from .support.cli_server import TOKEN, Server, ca
from .support.sink import upload
from .support.terminal import drive_a_shell
from .support.waiting import wait_until

pytestmark = needs_root

PODS = [
    pod(
        "web-0",
        {"name": "app", "command": [PYTHON, PODSERVER]},
        {"name": "sidecar", "command": ["sleep", "3600"]},
        {"name": "echo", "stdin": True, "command": ["sh", "-c", "while read l; do echo got:$l; echo err:$l >&2; done"]},
        namespace="team-a",
    ),
    pod("other", {"name": "main", "command": ["sleep", "3600"]}, namespace="team-b"),
]
# The pod's servers (tests/podserver.py) bind their ports in order, ECHO_PORT last.
LISTENING = [("team-a/web-0/app", ECHO_PORT)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("cli"), PODS, 4, LISTENING)
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def home(server, tmp_path_factory):
    """A user who has logged in."""
    home = tmp_path_factory.mktemp("home")
    r = cli(home, "login", "--server", server.url, "--token", TOKEN, "--certificate-authority", ca(server))
    assert r.returncode == 0, r.stderr
    return home


def test_login_saves_a_private_profile(server, tmp_path):
    r = cli(tmp_path, "login", "--server", server.url, "--token", TOKEN)
    assert r.returncode == 1
    assert r.stderr.startswith(b"podshell: the certificate of " + server.url.encode() + b" is not trusted")
    assert b"give --certificate-authority FILE" in r.stderr
    r = cli(
        tmp_path,
        "login",
        "--server",
        server.url,
        "--token",
        "wrong-token-0123456789",
        "--certificate-authority",
        ca(server),
    )
    assert r.returncode == 1 and b"the server refused the token" in r.stderr
    assert not (tmp_path / ".config" / "podshell").exists()
    r = cli(tmp_path, "login", "--server", server.url, "--token", TOKEN, "--certificate-authority", ca(server))
    assert r.returncode == 0, r.stderr
    profile = tmp_path / ".config" / "podshell" / "profile.yaml"
    assert stat.S_IMODE(profile.stat().st_mode) == 0o600
    assert stat.S_IMODE(profile.parent.stat().st_mode) == 0o700
    assert TOKEN in profile.read_text() and "BEGIN CERTIFICATE" in profile.read_text()


def test_the_token_can_come_from_a_file_or_standard_input(server, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    login = ["login", "--server", server.url, "--certificate-authority", ca(server)]
    r = cli(tmp_path, *login, "--token-file", str(token_file))
    assert r.returncode == 0, r.stderr
    r = cli(tmp_path, "get", "pods", "-n", "team-a", "--token-file", "-", input=TOKEN.encode())
    assert r.returncode == 0 and b"web-0" in r.stdout, r.stderr
    for args, stdin, says in (
        (
            ["--token-file", str(token_file), "--token", TOKEN],
            b"",
            b"podshell: give --token or --token-file, not both\n",
        ),
        (["--token-file", "-"], b"  \n", b"podshell: standard input holds no token (one word expected)\n"),
        (["--token-file", str(tmp_path / "nope")], b"", b"cannot read the token from " + str(tmp_path).encode()),
    ):
        r = cli(tmp_path, *login, *args, input=stdin)
        assert r.returncode == 1 and r.stderr.startswith(says if says.startswith(b"podshell") else b"podshell: " + says)
        assert len(r.stderr.splitlines()) == 1


def test_a_profile_edited_as_yaml_still_works_and_a_broken_one_says_so(server, tmp_path):
    profile = tmp_path / ".config" / "podshell" / "profile.yaml"
    profile.parent.mkdir(parents=True)
    pem = Path(ca(server)).read_text()
    indented = "".join(f"  {line}\n" for line in pem.splitlines())
    profile.write_text(f"# by hand\nserver: {server.url}\ntoken: {TOKEN}\ncertificate-authority-data: |\n{indented}")
    r = cli(tmp_path, "get", "pods", "-n", "team-a")
    assert r.returncode == 0 and b"web-0" in r.stdout, r.stderr
    for text, says in (("server: [unclosed\n", b"invalid YAML"), ("- a list\n", b"not a mapping of settings")):
        profile.write_text(text)
        r = cli(tmp_path, "get", "pods")
        assert r.returncode == 1 and says in r.stderr and r.stderr.endswith(b"run podshell login again\n"), r.stderr
        assert len(r.stderr.splitlines()) == 1


def test_errors_are_one_line_with_what_to_do(server, home, tmp_path):
    r = cli(tmp_path, "get", "pods")
    assert r.stderr == b"podshell: no server or token: run podshell login --server https://HOST:PORT --token TOKEN\n"
    r = cli(home, "get", "pods", "--server", f"https://127.0.0.1:{free_port()}")
    assert r.stderr.startswith(b"podshell: cannot reach https://127.0.0.1:") and b"is the server running?" in r.stderr
    r = cli(home, "get", "pods", extra_env={"PODSHELL_TOKEN": "wrong-token-0123456789"})  # env over the profile
    assert r.returncode == 1 and b"the server refused the token" in r.stderr
    r = cli(home, "get", "pods", "-n", "team-a", extra_env={"PODSHELL_SERVER": f"https://localhost:{free_port()}"})
    assert r.stderr.startswith(b"podshell: cannot reach https://localhost:")
    r = cli(home, "exec", "team-a/web-9", "--", "true")
    assert (r.returncode, r.stderr) == (1, b"podshell: no pod team-a/web-9\n")
    r = cli(home, "exec", "team-b/other", "--", "true")
    assert r.returncode == 1 and r.stderr.startswith(b"podshell: alice may not exec in team-b/other")
    r = cli(home, "exec", "team-a/web-0", "--token", "mallory-token-0123456789abcdef", "--", "true")
    assert r.returncode == 1 and r.stderr.startswith(b"podshell: mallory may not exec")
    r = cli(home, "exec", "team-a/web-0")
    assert r.stderr == b"podshell: say what to run: podshell exec POD -- COMMAND [ARGS...]\n"
    for command in (["exec"], ["attach"], ["port-forward"], ["get", "pods"], ["login"], ["kubeconfig"]):
        r = cli(home, *command, "--help")
        assert r.returncode == 0 and b"example" in r.stdout, command


def test_get_pods(home):
    r = cli(home, "get", "pods", "-n", "team-a")
    lines = r.stdout.decode().splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "NODE"]
    assert lines[1].split()[:4] == ["web-0", "3/3", "Running", "0"]
    r = cli(home, "get", "pods", "-A")
    assert [line.split()[:2] for line in r.stdout.decode().splitlines()] == [["NAMESPACE", "NAME"], ["team-a", "web-0"]]
    r = cli(home, "get", "pods", "-n", "team-a", "-o", "json")
    assert [p["metadata"]["name"] for p in json.loads(r.stdout)["items"]] == ["web-0"]


def test_exec_exit_codes_and_separate_stderr(home):
    for code in (0, 7, 255):
        script = f"echo out; echo err >&2; exit {code}"
        r = cli(home, "exec", "-n", "team-a", "web-0", "-c", "sidecar", "--", "sh", "-c", script)
        assert (r.returncode, r.stdout, r.stderr) == (code, b"out\n", b"err\n")
    r = cli(home, "exec", "team-a/web-0/sidecar", "--", "hostname")
    assert r.stdout == b"web-0\n"


def test_exec_stdin_100_megabytes_reaches_eof(home):
    data = os.urandom(100 << 20)
    r = cli(home, "exec", "-i", "team-a/web-0/sidecar", "--", "sha256sum", input=data)
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest(), r.stderr


def test_exec_with_a_terminal_and_resize(home):
    drive_a_shell(["env", f"HOME={home}", PODSHELL, "exec", "-it", "team-a/web-0/sidecar", "--", "sh"])


def test_kubeconfig_serves_kubectl(home, tmp_path):
    r = cli(home, "kubeconfig", "-n", "team-a")
    (tmp_path / "config").write_bytes(r.stdout)
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "config")}
    r = subprocess.run(
        ["kubectl", "exec", "web-0", "-c", "sidecar", "--", "echo", "via-kubectl"],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert r.stdout == b"via-kubectl\n", r.stderr


def test_port_forward_concurrent_and_refused(home):
    forward = Forward(home, f":{SOURCE_PORT}", f"0:{SINK_PORT}", "7009")
    source, sink, refused = forward.local
    try:
        n = 4 << 20
        data = os.urandom(n)
        with ThreadPoolExecutor(20) as pool:
            downs = [pool.submit(download, source, n) for _ in range(10)]
            ups = [pool.submit(upload, sink, data) for _ in range(10)]
            assert [f.result() for f in downs] == [(n, hashlib.sha256(pattern(n)).hexdigest())] * 10
            assert {f.result() for f in ups} == {f"{n} {hashlib.sha256(data).hexdigest()}".encode()}
        with socket.create_connection(("127.0.0.1", refused), timeout=30) as s:
            assert s.recv(100) == b""
        assert download(source, 1000)[0] == 1000
        if IPV6_LOOPBACK:
            assert download(source, 1000, host="::1") == (1000, hashlib.sha256(pattern(1000)).hexdigest())
        assert forward.proc.poll() is None
    finally:
        err = forward.stop()
    assert b"error forwarding 7009 -> 7009: error forwarding port 7009 to pod team-a/web-0: nothing listens" in err


def test_port_forward_survives_a_server_restart(server, home):
    forward = Forward(home, f":{SOURCE_PORT}")
    (source,) = forward.local
    try:
        assert download(source, 1000)[0] == 1000
        server.stop()
        time.sleep(1)  # the point: the server stays down a while, and the forward must wait it out
        server.start()

        def served() -> bool:  # the listener stayed; the forward comes back by itself
            try:
                return download(source, 1000) == (1000, hashlib.sha256(pattern(1000)).hexdigest())
            except OSError:  # refused or cut while it reconnects
                return False

        wait_until(served, 30, "the port-forward to reconnect")
        assert forward.proc.poll() is None
    finally:
        err = forward.stop()
    assert b"Lost connection to the server; reconnecting" in err and b"Reconnected" in err


def test_attach_joins_the_main_process(home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PODSHELL_")}
    proc = subprocess.Popen(
        [PODSHELL, "attach", "-i", "team-a/web-0/echo"],
        env={**env, "HOME": str(home)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(b"hello\n")
    proc.stdin.flush()
    assert proc.stdout.readline() == b"got:hello\n"
    assert proc.stderr.readline() == b"err:hello\n"
    proc.terminate()
    proc.communicate(timeout=15)
