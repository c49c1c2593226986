"""Container logs as every layer sees them: what pods/log asks for, the
times it speaks in, and one read of a container run's log."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

_TIME = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)$")


def parse_timestamp(text: bytes) -> int:
    """Nanoseconds since the epoch. @raise ValueError: not RFC 3339."""
    m = _TIME.match(text)
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    zone = m[3].decode().replace("Z", "+00:00")
    seconds = datetime.fromisoformat(m[1].decode() + zone).timestamp()
    return int(seconds) * 1_000_000_000 + int((m[2] or b"0").ljust(9, b"0"))


@dataclass(frozen=True)
class Options:
    """What pods/log asks for (C{PodLogOptions})."""

    timestamps: bool = False
    tail: int | None = None  # the last lines only
    since: int | None = None  # entries at or after this time (ns) only
    limit: int | None = None  # at most this many bytes of output


class LogSource(Protocol):
    """One read of a container run's log (a runtime's, e.g. L{podshell.node.runtime.local.ContainerLog})."""

    @property
    def live(self) -> bool: ...

    @property
    def at_end(self) -> bool: ...

    @property
    def done(self) -> bool: ...

    def read(self) -> bytes: ...

    def watch(self, watcher: Callable[[], None]) -> None: ...

    def close(self, watcher: Callable[[], None] | None = None) -> None: ...
