"""C{twistd -n podshell} as a user starts it, its output captured to a file."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from ..sshserver import TWISTD
from .waiting import wait_until


class Server:
    """A twistd process, its log captured to a file."""

    def __init__(self, cwd: Path, *args: str, env: dict | None = None) -> None:
        self.log = cwd / "twistd.out"
        self.proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "podshell", *args],
            cwd=cwd,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )

    def output(self) -> str:
        return self.log.read_text()

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        try:
            wait_until(lambda: text in self.output() or self.proc.poll() is not None, timeout, repr(text))
        except AssertionError as e:
            raise AssertionError(f"{e} in the log:\n{self.output()}") from None
        assert text in self.output(), f"twistd ended before {text!r}:\n{self.output()}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout)
