"""A real podshell server (twistd subprocess) and a real OpenSSH client for tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import yaml

TWISTD = str(Path(sys.executable).parent / "twistd")
PODSERVER = str(Path(__file__).parent / "podserver.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


class PodshellServer:
    """twistd -n podshell with a generated configuration, users and pods."""

    def __init__(
        self,
        root: Path,
        pods: list[dict],
        users: list[dict],
        policy: list[dict],
        api: str | None = None,
        ciphers: list[str] | None = None,
        wrap: list[str] | None = None,
        runtime: dict | None = None,
        metrics: str | None = None,
        twistd_options: list[str] | None = None,
        ssh: dict | None = None,
        sessions: dict | None = None,
        extra: dict | None = None,
    ) -> None:
        """C{wrap}: an argv prefix that execs the rest in place (the pid stays twistd's);
        C{twistd_options}: twistd's own, before the plugin's name;
        C{runtime}: the runtime section instead of the local one running C{pods};
        C{metrics}: the metrics listener's endpoint; C{ssh}: more of the ssh section;
        C{sessions}: the sessions section; C{extra}: more top-level sections."""
        self.root = root
        self.port = free_port()
        (root / "pods.yaml").write_text(yaml.safe_dump_all(pods))
        config = {
            "state_dir": "./state",
            "ssh": {"listen": f"tcp:{self.port}:interface=127.0.0.1", "accept_env": ["PODSHELL_*"]},
            "users": users,
            "policy": policy,
            "runtime": {"pods": "./pods.yaml", "backoff": {"initial": 0.5, "max": 1}},
        }
        if runtime is not None:
            config["runtime"] = runtime
        if api:
            config["api"] = {"listen": api}
        if metrics:
            config["metrics"] = {"listen": metrics}
        if ciphers:
            config["ssh"]["ciphers"] = ciphers
        config["ssh"].update(ssh or {})
        # A test's server stops at once even with a session left open (the default grace is 30 s).
        config["sessions"] = {"shutdown_grace": 0.5, **(sessions or {})}
        config.update(extra or {})
        (root / "podshell.yaml").write_text(yaml.safe_dump(config))
        self.log = root / "twistd.log"
        argv = [*(wrap or []), TWISTD, "-n", "--pidfile=", *(twistd_options or []), "podshell"]
        self.proc = subprocess.Popen(
            [*argv, "--config", str(root / "podshell.yaml")],
            cwd=root,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        self.audit = root / "state" / "audit.jsonl"
        self.known_hosts = root / "known_hosts"

    def wait_ready(self, containers: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log.read_text()
            if self.proc.poll() is not None:
                raise AssertionError(f"twistd exited:\n{text}")
            if "SSH listening" in text and text.count(" started, pid ") >= containers:
                break
            time.sleep(0.05)
        else:
            raise AssertionError(f"server not ready:\n{self.log.read_text()}")
        key = (self.root / "state" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(key)}\n")

    @property
    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Client:
    """Stock OpenSSH with a private config: no system ssh_config, no agent."""

    def __init__(self, server: PodshellServer, key: Path, prefix: list[str] | None = None) -> None:
        self.server = server
        self.key = key
        self.prefix = prefix or []  # e.g. ip netns exec HOST: the client runs on another host

    def options(self) -> list[str]:
        return [
            "-F", "/dev/null",
            "-i", str(self.key),
            "-o", "IdentitiesOnly=yes",
            "-o", "IdentityAgent=none",
            "-o", f"UserKnownHostsFile={self.server.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            "-o", "LogLevel=ERROR",
        ]  # fmt: skip

    def ssh_argv(self, target: str, *args: str) -> list[str]:
        # Options given first win in OpenSSH: the test's own come before the defaults.
        return [*self.prefix, "ssh", *args, *self.options(), "-p", str(self.server.port), f"{target}@127.0.0.1"]

    def ssh(self, target: str, command: str | None = None, *args: str, **kw) -> subprocess.CompletedProcess:
        argv = self.ssh_argv(target, *args) + ([command] if command is not None else [])
        kw.setdefault("capture_output", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(argv, **kw)

    def background(self, target: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.ssh_argv(target, *args), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def scp(self, *args: str, **kw) -> subprocess.CompletedProcess:
        argv = ["scp", *self.options(), "-P", str(self.server.port), *args]
        return subprocess.run(argv, capture_output=True, timeout=120, **kw)

    def sftp(self, target: str, batch: str) -> subprocess.CompletedProcess:
        argv = ["sftp", *self.options(), "-P", str(self.server.port), "-b", "-", f"{target}@127.0.0.1"]
        return subprocess.run(argv, input=batch.encode(), capture_output=True, timeout=120)

    def rsync(self, *args: str) -> subprocess.CompletedProcess:
        shell = " ".join(["ssh", *self.options(), "-p", str(self.server.port)])
        return subprocess.run(["rsync", "-e", shell, *args], capture_output=True, timeout=120)


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


def have(program: str) -> bool:
    return shutil.which(program) is not None


def environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LC_", "LANG"))}
    env.update(extra)
    return env
