"""Kubernetes watch streams, sans-IO: bytes in, events out.

A watch (C{GET …?watch=1}) answers with one JSON object per line,
C{{"type": "ADDED", "object": {...}}}, until the server ends it.  An
C{ERROR} event carries a C{Status} (C{410 Gone}: the resourceVersion asked
from is compacted away, list again); a C{BOOKMARK} only moves the
resourceVersion on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any

# One event holds one object; a Pod is a few KiB, the API server's own
# limit on an object is 1.5 MiB.  A line longer than this is not a watch.
MAX_EVENT = 4 * 1024 * 1024


class EventKind(Enum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"
    BOOKMARK = "BOOKMARK"
    ERROR = "ERROR"


class WatchError(Exception):
    """The stream is not a watch: malformed, or an event too long."""


@dataclass(frozen=True)
class WatchEvent:
    kind: EventKind
    object: dict[str, Any]

    @property
    def resource_version(self) -> str:
        return str((self.object.get("metadata") or {}).get("resourceVersion") or "")

    @property
    def status_code(self) -> int | None:
        """An ERROR event's HTTP status (410: list again)."""
        if self.kind is not EventKind.ERROR:
            return None
        code = self.object.get("code")
        return code if isinstance(code, int) else None


class WatchDecoder:
    """Splits a watch stream into events; partial lines wait for the rest."""

    def __init__(self, max_event: int = MAX_EVENT) -> None:
        self.max_event = max_event
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[WatchEvent]:
        """@raise WatchError: a line that is no watch event, or too long."""
        events, start = [], 0
        while (newline := data.find(b"\n", start)) >= 0:
            line = bytes(self._partial) + data[start:newline] if self._partial else data[start:newline]
            self._partial = bytearray()
            if line.strip():
                events.append(parse_event(line))
            start = newline + 1
        self._partial += data[start:]
        if len(self._partial) > self.max_event:
            raise WatchError(f"a watch event longer than {self.max_event} bytes")
        return events

    def end(self) -> None:
        """The stream ended.  @raise WatchError: in the middle of an event."""
        if self._partial.strip():
            raise WatchError("the watch stream ended in the middle of an event")


def parse_event(line: bytes) -> WatchEvent:
    try:
        raw = json.loads(line)
    except ValueError as e:
        raise WatchError(f"a watch event is not JSON: {e}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("object"), dict):
        raise WatchError("a watch event is not {type, object}")
    try:
        kind = EventKind(raw.get("type"))
    except ValueError:
        raise WatchError(f"unknown watch event type {raw.get('type')!r}") from None
    return WatchEvent(kind, raw["object"])
