"""A podshell server for the CLI's tests, restartable on the same port and
state: alice (group dev) may do anything in team-a, mallory nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..conftest import PYTHON
from ..sshserver import PodshellServer, free_port
from .cli import PODSHELL, cli_env
from .waiting import listens_argv, wait_until

TOKEN = "alice-token-0123456789abcdef"
USERS = [
    {"name": "alice", "groups": ["dev"], "tokens": [TOKEN]},
    {"name": "mallory", "tokens": ["mallory-token-0123456789abcdef"]},
]
POLICY = [{"subjects": ["group:dev"], "verbs": ["*"], "namespaces": ["team-a"]}]


class Server:
    """C{pods} with C{containers} containers in all; C{start} returns once
    each (namespace/pod/container, port) of C{listening} is listened on."""

    def __init__(self, root: Path, pods: list[dict], containers: int, listening: list[tuple[str, int]]) -> None:
        self.root = root
        self.pods = pods
        self.containers = containers
        self.listening = listening
        self.api_port = free_port()
        self.url = f"https://127.0.0.1:{self.api_port}"
        self.start()

    def start(self) -> None:
        self.proc = PodshellServer(self.root, self.pods, USERS, POLICY, api=f"ssl:{self.api_port}:interface=127.0.0.1")
        try:
            self.proc.wait_ready(containers=self.containers)
            for target, port in self.listening:
                wait_until(lambda t=target, p=port: self._listens(t, p), 15, f"port {port} in {target}")
        except BaseException:
            self.proc.stop()
            raise

    def _listens(self, target: str, port: int) -> bool:
        assert PODSHELL, "the podshell console script is installed next to the interpreter"
        connection = ["--server", self.url, "--token", TOKEN, "--certificate-authority", ca(self)]
        argv = [PODSHELL, "exec", *connection, target, "--", *listens_argv(PYTHON, port)]
        return subprocess.run(argv, env=cli_env(self.root), capture_output=True, timeout=60).returncode == 0

    def stop(self) -> None:
        self.proc.stop()


def ca(server: Server) -> str:
    return str(server.root / "state" / "ca.crt")
