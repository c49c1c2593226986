"""A client under a real pseudo-terminal, as a person runs it: its size,
resizes, keys typed and what the screen shows."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import termios
import time


def _winsize(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("4H", rows, cols, 0, 0))


class Terminal:
    """C{argv} (ssh -tt, kubectl exec -it, ...) on the slave side of a new pty."""

    def __init__(self, argv: list[str], rows: int, cols: int) -> None:
        self.master, slave = pty.openpty()
        _winsize(slave, rows, cols)
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.seen = b""
        self._probes = 0

    def expect(self, text: bytes, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"did not see {text!r} in {self.seen[-500:]!r}"
            if select.select([self.master], [], [], left)[0]:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    break
        assert text in self.seen, self.seen[-500:]

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def resize(self, rows: int, cols: int, timeout: float = 15) -> None:
        """Resize, and return once the remote side reports the new size
        (the change travels as its own message, after the keys typed before)."""
        _winsize(self.master, rows, cols)
        deadline = time.monotonic() + timeout
        while True:
            self._probes += 1
            marker = b"size-probe-%d" % self._probes
            self.send(b"stty size; echo size-probe-$((%d))\r" % self._probes)
            self.expect(marker)
            if b"%d %d\r\n%s\r\n" % (rows, cols, marker) in self.seen:
                return
            assert time.monotonic() < deadline, f"the terminal never became {rows}x{cols}: {self.seen[-500:]!r}"
            time.sleep(0.05)

    def close(self) -> int:
        rc = self.proc.wait(15)
        os.close(self.master)
        return rc


def drive_a_shell(argv: list[str]) -> None:
    """A shell under a real terminal: its size, a resize, and its exit code."""
    term = Terminal(argv, 30, 90)
    term.send(b"stty size; echo mark-$((40+2))\r")
    term.expect(b"30 90")
    term.expect(b"mark-42")
    term.resize(45, 120)
    term.send(b"stty size; exit 4\r")
    term.expect(b"45 120")
    assert term.close() == 4
