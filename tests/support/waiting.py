"""Waiting on a condition instead of sleeping for a guess: as quick as the
thing is, and a timeout that says what never happened."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout: float, what: str, step: float = 0.05) -> None:
    """Return as soon as C{predicate()} is true; fail naming C{what} after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(step)


def listens_argv(python: str, port: int) -> list[str]:
    """A command that succeeds once something listens on C{port} where it
    runs: inside a pod, whose loopback only its own processes reach."""
    return [python, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=1).close()"]
