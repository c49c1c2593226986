"""Processes behave as in Kubernetes and sshd, whatever the front door:

* a command asked for without stdin reads EOF at once (kubectl exec without
  -i, over WebSocket and SPDY; the Python client; the CLI; through a gateway);
* a terminal session ends when its shell exits, though a background job
  holds the terminal, and the job runs on (ssh -t, kubectl exec -it,
  podshell exec -it);
* a Ctrl-C on the terminal of a foreground twistd stops the pods with
  SIGTERM, as promised, not SIGINT.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from podshell.core import kubeconfig

from .conftest import PYTHON, needs_root, pod
from .sshserver import Client, PodshellServer, free_port, keygen
from .support.cluster import Cluster
from .support.kubectl import kubectl_binary, transport_env
from .support.terminal import Terminal
from .support.waiting import wait_until

pytestmark = needs_root

PODSHELL = shutil.which("podshell", path=str(Path(sys.executable).parent))
TOKEN = "alice-token-0123456789abcdef"
TARGET = ("-n", "team-a", "web-0")
# The jobs left behind, told apart by their durations; the pods' end ends them.
JOBS = {"ssh": "1001", "kubectl": "1002", "cli": "1003", "gateway": "1004"}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("semantics")
    users = [{"name": "alice", "groups": ["dev"], "ssh_keys": [keygen(root / "id_alice")], "tokens": [TOKEN]}]
    policy = [{"subjects": ["group:dev"], "verbs": ["*"], "namespaces": ["team-a"]}]
    pods = [pod("web-0", {"name": "main", "command": ["sleep", "3600"]}, namespace="team-a")]
    port = free_port()
    srv = PodshellServer(root, pods, users, policy, api=f"ssl:{port}:interface=127.0.0.1")
    try:
        srv.wait_ready(containers=1)
        srv.api_url = f"https://127.0.0.1:{port}"
        srv.kubeconfig = root / "kubeconfig"
        ca = root / "state" / "ca.crt"
        kubeconfig.write(srv.kubeconfig, kubeconfig.render(srv.api_url, "alice", TOKEN, ca.read_bytes(), "team-a"))
        srv.home = root / "home"
        srv.home.mkdir()
        r = cli(srv, "login", "--server", srv.api_url, "--token", TOKEN, "--certificate-authority", str(ca))
        assert r.returncode == 0, r.stderr
        yield srv
    finally:
        srv.stop()
    assert_gone("ssh", "kubectl", "cli")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A gateway and two node agents on three hosts, as in test_nodes."""
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.hosts.close()
    assert_gone("gateway")


def assert_gone(*jobs: str) -> None:
    """The jobs left in pods ended with their pods."""
    argvs = [["sleep", JOBS[job]] for job in jobs]
    left = [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] in argvs]
    _, alive = psutil.wait_procs(left, timeout=10)
    assert not alive, f"left behind: {alive}"


def kubectl_argv(server, version: str | None = None) -> list[str]:
    return [kubectl_binary(version), "--kubeconfig", str(server.kubeconfig)]


def cli(server, *args: str, **kw) -> subprocess.CompletedProcess:
    assert PODSHELL, "the podshell console script is installed next to the interpreter"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PODSHELL_", "XDG_"))}
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 20)
    return subprocess.run([PODSHELL, *args], env={**env, "HOME": str(server.home)}, **kw)


def timed(argv: list[str], **kw) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    r = subprocess.run(argv, capture_output=True, timeout=20, **kw)
    return r, time.monotonic() - started


# Without stdin, EOF at once.


@pytest.mark.parametrize(("version", "transport"), [("1.33", "websocket"), ("1.33", "spdy"), ("1.20", "spdy")])
def test_kubectl_exec_without_stdin_reads_eof_at_once(server, version, transport):
    env = {**os.environ, **transport_env(transport)}
    r, took = timed([*kubectl_argv(server, version), "exec", *TARGET, "--", "cat"], env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert took < 5


def test_python_client_exec_without_stdin_reads_eof_at_once(server):
    from kubernetes import client, config
    from kubernetes.stream import stream

    core = client.CoreV1Api(config.new_client_from_config(str(server.kubeconfig)))
    resp = stream(
        core.connect_get_namespaced_pod_exec, "web-0", "team-a", command=["cat"],
        stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False,
    )  # fmt: skip
    resp.run_forever(timeout=10)
    assert (resp.returncode, resp.read_stdout(), resp.read_stderr()) == (0, "", "")


def test_cli_exec_without_stdin_reads_eof_at_once(server):
    r, took = timed([PODSHELL, "exec", "team-a/web-0", "--", "cat"], env={**os.environ, "HOME": str(server.home)})
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert took < 5


def test_through_a_gateway_without_stdin_reads_eof_at_once(gateway):
    for version in ("1.33", "1.20"):
        argv = gateway.hosts.argv("gw", *gateway.kubectl_argv(version), "exec", "-n", "team-a", "beta", "--", "cat")
        r, took = timed(argv)
        assert (r.returncode, r.stdout, r.stderr, took < 5) == (0, b"", b"", True)
    r, took = timed(
        gateway.hosts.argv(
            "gw", PODSHELL, "exec", "--server", "https://127.0.0.1:8443", "--token", TOKEN,
            "--certificate-authority", str(gateway.ca), "team-a/beta", "--", "cat",
        )
    )  # fmt: skip
    assert (r.returncode, r.stdout, r.stderr, took < 5) == (0, b"", b"", True)


# A shell that exits ends its terminal session, though a job holds the terminal.


def leave_a_job_and_exit(argv: list[str], job: str) -> None:
    """An interactive shell starts C{sleep job &} and exits: the session
    ends at once with its last words, as sshd ends it."""
    term = Terminal(argv, 24, 80)
    try:
        term.send(f"sleep {job} &\r".encode())
        term.send(b"echo last-$((40+2)); exit\r")
        term.expect(b"last-42")
        started = time.monotonic()
        assert term.proc.wait(10) == 0
        assert time.monotonic() - started < 5
    finally:
        if term.proc.poll() is None:
            term.proc.kill()
            term.proc.wait()
        os.close(term.master)


def job_runs(argv: list[str], job: str) -> bool:
    r = subprocess.run([*argv, "ps -eo args"], capture_output=True, timeout=20)
    return f"sleep {job}" in r.stdout.decode().splitlines()


def test_ssh_terminal_ends_when_the_shell_exits_and_the_job_runs_on(server):
    alice = Client(server, server.root / "id_alice")
    leave_a_job_and_exit(alice.ssh_argv("team-a.web-0", "-tt"), JOBS["ssh"])
    assert job_runs(alice.ssh_argv("team-a.web-0"), JOBS["ssh"])


def test_kubectl_terminal_ends_when_the_shell_exits(server):
    leave_a_job_and_exit([*kubectl_argv(server), "exec", "-it", *TARGET, "--", "bash"], JOBS["kubectl"])
    assert job_runs([*kubectl_argv(server), "exec", *TARGET, "--", "sh", "-c"], JOBS["kubectl"])


def test_cli_terminal_ends_when_the_shell_exits(server):
    argv = ["env", f"HOME={server.home}", PODSHELL, "exec", "-it", "team-a/web-0", "--", "bash"]
    leave_a_job_and_exit(argv, JOBS["cli"])
    assert job_runs([*kubectl_argv(server), "exec", *TARGET, "--", "sh", "-c"], JOBS["cli"])


def test_through_a_gateway_the_terminal_ends_when_the_shell_exits(gateway):
    leave_a_job_and_exit(gateway.ssh.ssh_argv("team-a.beta", "-tt"), JOBS["gateway"])
    assert job_runs(gateway.ssh.ssh_argv("team-a.beta"), JOBS["gateway"])


def test_a_job_that_keeps_writing_to_the_terminal_does_not_keep_the_session(server):
    alice = Client(server, server.root / "id_alice")
    r = alice.ssh("team-a.web-0", "trap '' HUP; yes & sleep 0.2; exit 3", "-tt", timeout=20)
    assert (r.returncode, r.stdout[:6]) == (3, b"y\r\ny\r\n")


def test_without_a_terminal_ssh_waits_for_a_job_holding_the_pipes(server):
    """As sshd does (it ends the channel on EOF, not on the command's exit):
    what the job writes still arrives."""
    alice = Client(server, server.root / "id_alice")
    r = alice.ssh("team-a.web-0", "(sleep 0.5; echo late) & echo early")
    assert (r.returncode, r.stdout) == (0, b"early\nlate\n")


# Ctrl-C on a foreground server.

# Puts the command that it execs on the terminal given first, as its
# foreground job: a shell's job control in a few lines.
ON_TERMINAL = (
    "import fcntl, os, sys, termios\n"
    "os.setsid()\n"
    "fd = os.open(sys.argv[1], os.O_RDWR)\n"
    "fcntl.ioctl(fd, termios.TIOCSCTTY, 0)\n"
    "os.dup2(fd, 0)\n"
    "os.close(fd)\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def test_ctrl_c_on_a_foreground_server_stops_pods_with_sigterm(tmp_path):
    marker = tmp_path / "marker"
    trap = f"trap 'echo TERM > {marker}; exit 0' TERM; trap 'echo INT > {marker}; exit 1' INT"
    pods = [pod("web-0", {"name": "main", "command": ["sh", "-c", f"{trap}; while :; do sleep 0.05; done"]})]
    pods[0]["spec"]["terminationGracePeriodSeconds"] = 10
    master, slave = os.openpty()
    try:
        wrap = [PYTHON, "-c", ON_TERMINAL, os.ttyname(slave)]
        srv = PodshellServer(tmp_path, pods, [], [], wrap=wrap)
        try:
            srv.wait_ready(containers=1)
            assert os.tcgetpgrp(master) == srv.proc.pid  # twistd is the terminal's foreground job
            twistd = psutil.Process(srv.proc.pid)
            # A sandbox, a helper, a command.
            wait_until(lambda: len(twistd.children(recursive=True)) >= 3, 10, "the pod's three processes")
            pods_processes = twistd.children(recursive=True)
            os.write(master, b"\x03")  # Ctrl-C
            srv.proc.wait(20)
            assert marker.read_text() == "TERM\n"
            _, alive = psutil.wait_procs(pods_processes, timeout=10)
            assert not alive
        finally:
            srv.stop()
    finally:
        os.close(master)
        os.close(slave)
