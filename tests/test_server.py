"""``twistd podshell`` as a user runs it: start, pods up, stop, nothing left behind."""

from __future__ import annotations

import functools
import os
import select
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from podshell.node.runtime.local import privilege_problem

from .conftest import needs_root, pod
from .sshserver import TWISTD
from .support.twistd import Server
from .support.waiting import wait_until


def processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.fixture
def server_dir(tmp_path):
    servers: list[Server] = []

    def start(*args: str, **kw) -> Server:
        s = Server(tmp_path, *args, **kw)
        servers.append(s)
        return s

    yield start
    for s in servers:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


def write_config(tmp_path: Path, pods: list[dict]) -> str:
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump_all(pods))
    (tmp_path / "podshell.yaml").write_text(
        "state_dir: ./state\nssh: {listen: 'tcp:0:interface=127.0.0.1'}\nruntime: {pods: ./pods.yaml}\n"
    )
    return str(tmp_path / "podshell.yaml")


@needs_root
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopping_the_server_leaves_no_pod_process(tmp_path, server_dir, how):
    marker = f"9{uuid.uuid4().int % 10**9:09d}"  # a unique sleep duration to find our processes by
    config = write_config(
        tmp_path,
        [
            pod(
                "web-0",
                # PID 1 ignores SIGTERM: the grace period and then SIGKILL must end it.
                {"name": "stubborn", "command": ["sleep", marker]},
                {"name": "polite", "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait", marker]},
                terminationGracePeriodSeconds=1,
            ),
            pod("db-0", {"name": "db", "command": ["sh", "-c", "sleep 3600 & sleep 3600", marker]}),
        ],
    )
    server = server_dir("--config", config)
    for path in ("default/web-0/stubborn", "default/web-0/polite", "default/db-0/db"):
        server.wait_for_log(f"container {path} started")
    assert len(processes_with(marker)) >= 4
    code = server.stop(getattr(signal, how))
    wait_until(lambda: not processes_with(marker), 10, "every pod process to end")
    assert code == -getattr(signal, how)  # twistd ends with the signal it got, after a clean stop
    if how == "SIGTERM":
        assert "stopping 2 pods" in server.output()
        assert "container default/web-0/polite ended: exit code 0" in server.output()
        assert "container default/web-0/stubborn ended: signal KILL" in server.output()


@needs_root
def test_the_embedded_default_runs_the_demo_pod(tmp_path, server_dir):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl me@here"
    (home / ".ssh" / "id_ed25519.pub").write_text(key + "\n")
    state = tmp_path / "state"
    env = {**os.environ, "HOME": str(home), "USER": "tester", "LOGNAME": "tester", "PODSHELL_STATE_DIR": str(state)}
    server = server_dir(env=env)
    server.wait_for_log("container default/demo/web started")
    assert "podshell starting from the embedded default: 1 pods" in server.output()
    assert state.is_dir() and (state.stat().st_mode & 0o777) == 0o700
    # The README's kubectl commands, as written there.
    kube = {**env, "KUBECONFIG": str(state / "kubeconfig")}
    run = functools.partial(subprocess.run, env=kube, capture_output=True, timeout=60)
    r = run(["kubectl", "exec", "demo", "--", "sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (r.returncode, r.stdout, r.stderr.splitlines()[0]) == (3, b"out\n", b"err")
    podshell = str(Path(sys.executable).parent / "podshell")
    r = run(
        [
            podshell,
            "login",
            "--server",
            "https://127.0.0.1:8443",
            "--token-file",
            str(state / "token"),
            "--certificate-authority",
            str(state / "ca.crt"),
        ]
    )
    assert r.returncode == 0, r.stderr
    r = run([podshell, "exec", "demo", "--", "sh", "-c", "echo out; exit 3"])
    assert (r.returncode, r.stdout) == (3, b"out\n"), r.stderr
    forward = subprocess.Popen(["kubectl", "port-forward", "demo", "8080:8080"], env=kube, stdout=subprocess.PIPE)
    procs = [forward]
    try:
        assert forward.stdout is not None and forward.stdout.readline().startswith(b"Forwarding from")
        attach = subprocess.Popen(["kubectl", "attach", "demo", "-c", "web"], env=kube, stderr=subprocess.PIPE)
        procs.append(attach)
        assert attach.stderr is not None and attach.stderr.readline().startswith(b"If you don't see")

        def logged() -> bool:
            """A request served; true once one shows on the attached stderr
            (the attachment may be made after kubectl says it is)."""
            with urllib.request.urlopen("http://127.0.0.1:8080/", timeout=30) as page:
                assert page.status == 200 and b"Directory listing" in page.read()
            return bool(select.select([attach.stderr], [], [], 0.5)[0])

        wait_until(logged, 30, "a request in the attached web server's log")
        assert b'"GET / HTTP/1.1" 200' in attach.stderr.readline()  # the web server's access log
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(15)
    assert server.stop() == -signal.SIGTERM
    assert "container default/demo/main ended: exit code 0" in server.output()


def test_a_bad_configuration_is_one_line_and_exit_1(tmp_path):
    (tmp_path / "podshell.yaml").write_text("users:\n  - name: alice\n    tokens: [short]\n")
    result = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "podshell", "--config", str(tmp_path / "podshell.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr == (
        f"podshell: {tmp_path}/podshell.yaml: users[0].tokens: tokens must be at least 16 characters without spaces\n"
    )


@needs_root
def test_not_root_is_a_clear_error_not_a_traceback():
    os.seteuid(65534)
    try:
        problem = privilege_problem()
    finally:
        os.seteuid(0)
    assert problem is not None
    assert problem.startswith("the local runtime creates pod namespaces and needs root (running as uid 65534)")
    assert privilege_problem() is None


def test_twistd_lists_the_plugin():
    out = subprocess.run([TWISTD, "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "podshell" in out
