"""What one upgraded streaming connection of the Kubernetes API may hold,
and how its client is probed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from podshell.core.keepalive import KeepaliveSettings
from podshell.core.metrics import APILimit
from podshell.protocols import spdy


def _uncounted(limit: APILimit) -> None:
    """No metrics: nothing counts a limit hit."""


@dataclass(frozen=True)
class StreamLimits:
    """C{keepalive}: WebSocket pings and SPDY PINGs to a quiet client (None:
    none); C{max_streams}: SPDY streams open at once on one connection;
    C{max_forward_connections}: TCP connections at once in one port-forward
    (None: no limit); C{hit}: told of each limit hit."""

    keepalive: KeepaliveSettings | None = None
    max_streams: int = spdy.MAX_STREAMS
    max_forward_connections: int | None = None
    hit: Callable[[APILimit], None] = field(default=_uncounted, compare=False)
