"""The native CLI as a user runs it: the console script beside the
interpreter, a home of its own, and podshell port-forward in the background."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

PODSHELL = shutil.which("podshell", path=str(Path(sys.executable).parent))


def cli_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a user whose home is C{home} (none of ours leaks in)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PODSHELL_", "XDG_"))}
    return {**env, "HOME": str(home), **extra}


def cli(home: Path, *args: str, extra_env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    assert PODSHELL, "the podshell console script is installed next to the interpreter"
    kw.setdefault("capture_output", True)
    kw.setdefault("timeout", 120)
    return subprocess.run([PODSHELL, *args], env=cli_env(home, **(extra_env or {})), **kw)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


IPV6_LOOPBACK = _has_ipv6_loopback()


class Forward:
    def __init__(self, home: Path, *specs: str, pod: str = "team-a/web-0") -> None:
        self.proc = subprocess.Popen(
            [PODSHELL, "port-forward", pod, *specs],
            env=cli_env(home),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.local = []
        for _ in specs:  # kubectl's localhost: both loopbacks, on one port
            v4 = self.proc.stdout.readline().decode()
            assert v4.startswith("Forwarding from 127.0.0.1:"), v4
            if IPV6_LOOPBACK:
                v6 = self.proc.stdout.readline().decode()
                assert v6 == v4.replace("127.0.0.1:", "[::1]:"), v6
            self.local.append(int(v4.split(":")[1].split()[0]))

    def stop(self) -> bytes:
        self.proc.terminate()
        return self.proc.communicate(timeout=15)[1]
