"""Session recordings end to end: a real server whose policy requires them,
the stock OpenSSH client in tmux, and the real asciinema reading the result."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import shlex
import shutil
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import yaml

from podshell.core import kubeconfig
from podshell.protocols.asciicast import data_bytes, read_events

from .conftest import PYTHON, needs_root, pod
from .podserver import SINK_PORT
from .sshserver import PODSERVER, Client, PodshellServer, free_port, keygen, wait_port
from .support.kubectl import kubectl_binary
from .support.sink import upload
from .support.terminal import Terminal
from .support.waiting import listens_argv, wait_until

pytestmark = needs_root
TOKEN = "alice-token-0123456789abcdef"
PODSHELL = shutil.which("podshell", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("recording")
    key = keygen(root / "id_alice")
    pods = [pod("web-0", {"name": "app", "command": [PYTHON, PODSERVER]}, namespace="team-a")]
    users = [{"name": "alice", "ssh_keys": [key], "tokens": [TOKEN]}]
    policy = [{"subjects": ["user:alice"], "verbs": ["*"], "namespaces": ["team-a"], "record": "required"}]
    srv = PodshellServer(root, pods, users, policy, api=f"ssl:{free_port()}:interface=127.0.0.1")
    try:
        srv.wait_ready(containers=1)
        probe = Client(srv, root / "id_alice")
        listening = shlex.join(listens_argv(PYTHON, SINK_PORT))
        wait_until(lambda: probe.ssh("team-a.web-0.app", listening).returncode == 0, 15, "the pod's servers to listen")
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def alice(server):
    return Client(server, server.root / "id_alice")


def recordings(server) -> Path:
    return server.root / "state" / "recordings"


def ended(server, command: list[str] | None = None) -> dict | None:
    """The last session.end record (of C{command}), once its recording is closed."""
    ends = [json.loads(line) for line in server.audit.read_text().splitlines()]
    ends = [e for e in ends if e["event"] == "session.end" and (command is None or e.get("command") == command)]
    return ends[-1] if ends and "recording_sha256" in ends[-1] else None


def cli(*args: str) -> subprocess.CompletedProcess:
    assert PODSHELL, "the podshell console script is installed next to the interpreter"
    return subprocess.run([PODSHELL, *args], capture_output=True, timeout=60)


def asciinema_cat(cast: Path) -> subprocess.CompletedProcess:
    """asciinema cat opens /dev/tty: give it a terminal of its own, and its stdout a pipe."""
    master, slave = pty.openpty()
    try:
        return subprocess.run(
            ["asciinema", "cat", str(cast)],
            stdin=slave,
            capture_output=True,
            timeout=60,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
    finally:
        os.close(master)
        os.close(slave)


def tmux(socket: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["tmux", "-S", str(socket), *args], capture_output=True, text=True, timeout=30)


def test_an_ssh_shell_in_tmux_is_recorded_as_the_client_saw_it(server, alice, tmp_path):
    sock, seen, go = tmp_path / "tmux.sock", tmp_path / "seen.bin", tmp_path / "go"
    ssh = " ".join(alice.ssh_argv("team-a.web-0.app", "-tt", "-q"))
    # The shell in the pane waits for "go" so that pipe-pane sees the client's first byte.
    command = f"while [ ! -e {go} ]; do sleep 0.05; done; exec {ssh}"
    assert tmux(sock, "-f", "/dev/null", "new-session", "-d", "-x", "80", "-y", "24", command).returncode == 0
    try:
        assert tmux(sock, "pipe-pane", "-o", f"cat > {seen}").returncode == 0
        go.touch()
        wait_until(lambda: seen.exists() and seen.read_bytes().rstrip().endswith((b"$", b"#")), 20, "a prompt")
        tmux(sock, "send-keys", "-l", "printf 'caf\\303\\251 %s\\n' $((6*7))")
        tmux(sock, "send-keys", "Enter")
        wait_until(lambda: "café 42" in tmux(sock, "capture-pane", "-p").stdout, 20, "the command's output")
        tmux(sock, "resize-window", "-x", "100", "-y", "30")
        tmux(sock, "send-keys", "-l", "stty size")
        tmux(sock, "send-keys", "Enter")
        wait_until(lambda: "30 100" in tmux(sock, "capture-pane", "-p").stdout, 20, "the new size in the pod")
        tmux(sock, "send-keys", "-l", "exit")
        tmux(sock, "send-keys", "Enter")
        wait_until(lambda: tmux(sock, "has-session").returncode != 0, 20, "ssh to end")
    finally:
        tmux(sock, "kill-server")
    wait_until(lambda: ended(server, ["(shell)"]), 20, "the session's end and its recording's")
    end = ended(server, ["(shell)"])
    assert end is not None
    cast = recordings(server) / f"{end['id']}.cast"
    head, events = read_events(cast.read_bytes().splitlines())
    assert head["podshell"]["kind"] == "terminal" and head["podshell"]["user"] == "alice"
    assert (head["width"], head["height"]) == (80, 24) and "100x30" in [d for _, c, d in events if c == "r"]
    recorded = b"".join(data_bytes(d) for _, c, d in events if c == "o")
    wait_until(lambda: seen.read_bytes() == recorded, 10, "the client's bytes to equal the recording's")
    assert b"caf\xc3\xa9 42" in recorded
    shown = asciinema_cat(cast)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == seen.read_bytes()
    verified = cli("recordings", "verify", end["id"][:12], "--dir", str(recordings(server)))
    assert verified.returncode == 0 and b"OK" in verified.stdout and end["recording_sha256"].encode() in verified.stdout
    listed = cli("recordings", "list", "--user", "alice", "--since", "1h", "--dir", str(recordings(server)))
    assert end["id"].encode() in listed.stdout
    exported = cli("recordings", "export", end["id"], "--dir", str(recordings(server)))
    assert exported.stdout == cast.read_bytes()


def test_a_command_with_stderr_keeps_its_streams_apart(server, alice):
    r = alice.ssh("team-a.web-0.app", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    command = ["echo out; echo err >&2; exit 3"]
    wait_until(lambda: ended(server, command), 20, "the recording's end")
    end = ended(server, command)
    assert end is not None
    head, events = read_events((recordings(server) / f"{end['id']}.cast").read_bytes().splitlines())
    assert head["podshell"]["kind"] == "exec" and head["podshell"]["session"] == end["id"]
    assert [(c, d) for _, c, d in events if c in "oex"] == [("o", "out\n"), ("e", "err\n"), ("x", "exit code 3")]
    played = cli("recordings", "play", end["id"], "--speed", "100", "--dir", str(recordings(server)))
    assert (played.stdout, played.stderr) == (b"out\n", b"err\n")


def test_required_with_an_unwritable_directory_refuses_the_session(server, alice):
    where = recordings(server)
    aside = where.with_name("recordings.aside")
    where.rename(aside)
    where.write_text("a file where the recording directory should be")
    try:
        r = alice.ssh("team-a.web-0.app", "echo should-not-run")
    finally:
        where.unlink()
        aside.rename(where)
    assert r.returncode == 1 and b"should-not-run" not in r.stdout
    assert r.stderr.startswith(b"podshell: this session must be recorded, and cannot be: ")
    assert r.stderr.count(b"\n") == 1


def test_a_port_forward_records_each_connection_with_its_bytes(server, alice):
    local = free_port()
    client = alice.background(
        "team-a.web-0", "-N", "-o", "ExitOnForwardFailure=yes", "-L", f"{local}:localhost:{SINK_PORT}"
    )
    try:
        wait_port(local)
        data = os.urandom(300_000)
        answer = upload(local, data)  # the pod's sink answers after our half-close
        assert answer.split()[0] == b"300000"
    finally:
        client.kill()
        client.wait(10)
    command = [f"-L localhost:{SINK_PORT}"]
    wait_until(lambda: ended(server, command), 20, "the forward's session to end with its recording")
    end = ended(server, command)
    assert end is not None
    head, events = read_events((recordings(server) / f"{end['id']}.cast").read_bytes().splitlines())
    assert head["podshell"]["kind"] == "forward"
    assert [(c, d) for _, c, d in events] == [
        ("c", f"1 localhost:{SINK_PORT}"),
        ("d", f"1 300000 {len(answer)}"),
    ]


def api_url(server) -> str:
    return yaml.safe_load((server.root / "podshell.yaml").read_text())["api"]["listen"].split(":")[1]


def terminal_output(argv: list[str], expected: bytes) -> tuple[bytes, int]:
    """All a terminal client wrote to its terminal, and its exit code."""
    term = Terminal(argv, 24, 80)
    term.expect(expected)
    code = term.proc.wait(30)
    while True:
        try:
            chunk = os.read(term.master, 65536)
        except OSError:  # EIO: the client and its terminal are gone
            break
        if not chunk:
            break
        term.seen += chunk
    os.close(term.master)
    return term.seen, code


COMMAND = "printf 'caf\\303\\251 %s\\n' $((6*7))"  # exit 0: kubectl adds a line of its own for others


@pytest.mark.parametrize("client", ["podshell exec -t", "kubectl exec -it"])
def test_a_terminal_exec_is_recorded_as_its_client_showed_it(server, tmp_path, client):
    port = api_url(server)
    ca = server.root / "state" / "ca.crt"
    if client.startswith("podshell"):
        assert PODSHELL, "the podshell console script is installed next to the interpreter"
        connection = ["--server", f"https://127.0.0.1:{port}", "--token", TOKEN, "--certificate-authority", str(ca)]
        argv = ["env", f"HOME={tmp_path}", PODSHELL, "exec", "-t", *connection, "team-a/web-0", "--"]
    else:
        config = tmp_path / "kubeconfig"
        kubeconfig.write(config, kubeconfig.render(f"https://127.0.0.1:{port}", "alice", TOKEN, ca.read_bytes()))
        argv = ["env", f"KUBECONFIG={config}", kubectl_binary(None), "exec", "-it", "-n", "team-a", "web-0", "--"]
    command = ["sh", "-c", COMMAND, client.split()[0]]  # $0: each case's own session in the audit log
    seen, code = terminal_output([*argv, *command], b"caf\xc3\xa9 42")
    assert code == 0
    wait_until(lambda: ended(server, command), 20, "the exec's end and its recording's")
    end = ended(server, command)
    assert end is not None
    cast = recordings(server) / f"{end['id']}.cast"
    head, events = read_events(cast.read_bytes().splitlines())
    assert head["podshell"]["kind"] == "terminal"
    assert b"".join(data_bytes(d) for _, c, d in events if c == "o") == seen
    assert asciinema_cat(cast).stdout == seen
