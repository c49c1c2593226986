"""The audit log: one JSON object per line for every session and every denial.

Lines are written and flushed as they happen so that a crash loses nothing
already recorded; the file is opened in append mode with O_APPEND so that
several processes (gateway and node agent) may share it.  The server's
metrics (L{podshell.core.metrics}) are counted here, with each record: the
one place every front door's sessions and denials pass.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from podshell.auth.identity import Identity
from podshell.core.contracts import Door
from podshell.core.denial import DenialKind
from podshell.core.metrics import Metrics


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Request:
    """Who asked for what, from where, through which front door."""

    identity: Identity | None
    peer: str
    via: str
    verb: str
    target: str
    command: list[str] | None = None
    run_as: str | None = None  # the container user asked for, if not its own

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "user": self.identity.name if self.identity else None,
            "groups": sorted(self.identity.groups) if self.identity else [],
            "from": self.peer,
            "via": self.via,
            "verb": self.verb,
            "target": self.target,
        }
        if self.command is not None:
            out["command"] = self.command
        if self.run_as is not None:
            out["run_as"] = self.run_as
        return out


@dataclass
class AuditedSession:
    log: AuditLog
    request: Request
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    start: str = field(default_factory=_now)
    _t0: float = field(default_factory=time.monotonic)
    _ended: bool = False
    _notes: dict[str, Any] = field(default_factory=dict)
    _ending: list[Callable[[], None]] = field(default_factory=list)
    door: Door | None = None  # how its front door ends it (none: it cannot be ended from outside)

    def serve(self, door: Door) -> None:
        self.door = door

    @property
    def ended(self) -> bool:
        return self._ended

    def note(self, **fields: Any) -> None:
        self._notes.update(fields)

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call C{callback} when the session ends (at once if it has)."""
        if self._ended:
            callback()
            return
        self._ending.append(callback)

    def end(self, status: str, bytes_in: int = 0, bytes_out: int = 0) -> None:
        """Record how the session ended (once; later calls are ignored)."""
        if self._ended:
            return
        self._ended = True
        for callback in self._ending:
            callback()
        self.log.write(
            "session.end",
            id=self.id,
            **self.request.fields(),
            start=self.start,
            end=_now(),
            seconds=round(time.monotonic() - self._t0, 3),
            status=status,
            bytes_in=bytes_in,
            bytes_out=bytes_out,
            **self._notes,
        )
        if self.log.metrics is not None:
            self.log.metrics.session_ended(self.request.via, self.request.verb, status, bytes_in, bytes_out)


class AuditLog:
    def __init__(self, path: Path, metrics: Metrics | None = None) -> None:
        self.path = path
        self.metrics = metrics
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._file: IO[str] = os.fdopen(fd, "a", encoding="utf-8", buffering=1)

    def write(self, event: str, **fields: Any) -> None:
        record = {"time": _now(), "event": event, **fields}
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")

    def denied(self, request: Request, reason: str, kind: DenialKind = DenialKind.FORBIDDEN) -> None:
        self.write("denied", **request.fields(), reason=reason)
        if self.metrics is not None:
            self.metrics.denied(request.via, request.verb, kind)

    def session(self, request: Request, asked: float | None = None, recorded: bool = False) -> AuditedSession:
        """@param asked: C{time.monotonic()} when the request reached the gate.
        @param recorded: the session is recorded, under its own id."""
        session = AuditedSession(self, request)
        named = {"recording": session.id} if recorded else {}
        self.write("session.start", id=session.id, **request.fields(), start=session.start, **named)
        if self.metrics is not None:
            waited = time.monotonic() - asked if asked is not None else None
            self.metrics.session_started(request.via, request.verb, waited)
        return session

    def close(self) -> None:
        self._file.close()
