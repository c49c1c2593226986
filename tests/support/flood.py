"""A flood of SSH connections that send a version line and stall, from one
source address (any of 127.0.0.0/8 reaches a server on 127.0.0.1), as the
attack on unauthenticated connections makes them."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time

LINE = b"SSH-2.0-flood\r\n"


def stalled(port: int, source: str, timeout: float = 30) -> socket.socket:
    """One connection from C{source} that has sent its version line and
    will send nothing more."""
    s = socket.socket()
    try:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.sendall(LINE)
    except BaseException:
        s.close()
        raise
    s.setblocking(False)
    return s


class Flood:
    """A stalled connection from each of C{sources} (an address may repeat),
    and what the server did with each: held it (its version line came, the
    connection stays) or refused it (closed)."""

    def __init__(self, port: int, sources: list[str]) -> None:
        self.port = port
        self.sockets = [stalled(port, source) for source in sources]
        self.received = {s: b"" for s in self.sockets}
        self.closed: set[socket.socket] = set()

    def settle(self, timeout: float = 60) -> tuple[int, int]:
        """Wait until the server has answered every connection: (held, refused)."""
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            for s in self.sockets:
                sel.register(s, selectors.EVENT_READ)
            while sel.get_map():
                if time.monotonic() > deadline:
                    raise AssertionError(f"{len(sel.get_map())} flood connections never answered")
                for key, _ in sel.select(0.5):
                    s = key.fileobj
                    assert isinstance(s, socket.socket)
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    except ConnectionResetError:
                        data = b""
                    self.received[s] += data
                    if not data:
                        self.closed.add(s)
                    if not data or self.received[s].startswith(b"SSH-2.0-"):
                        sel.unregister(s)  # decided: closed, or held (it says no more)
        return len(self.sockets) - len(self.closed), len(self.closed)

    def refusals(self) -> set[bytes]:
        return {self.received[s] for s in self.closed}

    def close(self) -> None:
        for s in self.sockets:
            s.close()


class Reconnecting:
    """A thread that opens stalled connections from C{source} again and again,
    as fast as the server refuses them, until stopped."""

    def __init__(self, port: int, source: str) -> None:
        self.port, self.source = port, source
        self.attempts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                s = stalled(self.port, self.source, timeout=5)
                with s:
                    s.setblocking(True)
                    s.settimeout(5)
                    while s.recv(4096):
                        pass
            self.attempts += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
