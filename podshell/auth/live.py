"""The sessions under way, and what ends them before their user does: an
operator (C{podshell sessions kill}), the idle timeout, the maximum
duration, a server shutting down.

One registry per server with front doors, fed by the gate (every audited
session passes it); each front door says how its sessions end and what
they moved (L{Door}).  Idleness is read from those bytes, once a second
while any session is open, so no front door has to report its activity;
time is the reactor's (IReactorTime): tests run on a C{Clock}.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall

from podshell.auth.audit import AuditedSession
from podshell.core.denial import DenialKind
from podshell.core.durations import spoken
from podshell.core.yamlfile import count

TICK = 1.0  # seconds between looks at the sessions' bytes
WARNING = 60.0  # an idle session's terminal is told this long before it ends (half its timeout if shorter)

KILLED = "ended by an operator"
IDLE = "ended: idle timeout"
TOO_LONG = "ended: maximum duration"
SHUTDOWN = "ended: server shutdown"


@dataclass(frozen=True)
class Limits:
    """The server's own (C{sessions:} in its configuration); None: no limit."""

    idle_timeout: float | None = 4 * 3600.0
    max_duration: float | None = None
    max_per_user: int | None = None


@dataclass
class Live:
    """One session under way."""

    session: AuditedSession
    since: float  # the reactor's seconds
    idle_timeout: float | None
    moved: tuple[int, int] = (0, 0)
    active: float = 0.0  # when its bytes last changed
    warned: bool = False

    @property
    def user(self) -> str | None:
        identity = self.session.request.identity
        return identity.name if identity is not None else None

    @property
    def bytes(self) -> tuple[int, int]:
        door = self.session.door
        return door.moved() if door is not None else self.moved

    def fields(self, now: float) -> dict[str, Any]:
        """What C{podshell sessions list} shows of it."""
        bytes_in, bytes_out = self.bytes
        return {
            "id": self.session.id,
            **self.session.request.fields(),
            "start": self.session.start,
            "seconds": round(now - self.since, 3),
            "idle_seconds": round(now - self.active, 3),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        }


@dataclass
class _Drain:
    done: Deferred[None] = field(default_factory=Deferred)
    call: IDelayedCall | None = None


class LiveSessions:
    def __init__(self, clock: IReactorTime, limits: Limits | None = None) -> None:
        self.clock = clock
        self.limits = limits or Limits()
        self._sessions: dict[str, Live] = {}
        self._look = LoopingCall(self._tick)
        self._look.clock = clock
        self._drain: _Drain | None = None

    def __iter__(self) -> Iterator[Live]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> Live | None:
        return self._sessions.get(session_id)

    @property
    def shutting_down(self) -> bool:
        return self._drain is not None

    def refusal(self, user: str) -> tuple[str, DenialKind] | None:
        """Why a new session of C{user}'s may not open, if it may not."""
        if self._drain is not None:
            return "the server is shutting down: try again in a moment", DenialKind.UNAVAILABLE
        cap = self.limits.max_per_user
        if cap is not None and sum(1 for live in self._sessions.values() if live.user == user) >= cap:
            return f"{user} has {count(cap, 'session')} open, as many as one user may", DenialKind.TOO_MANY
        return None

    def add(self, session: AuditedSession, idle_timeout: float | None = None) -> Live:
        """A session opened; C{idle_timeout}: its policy rule's, if shorter than the server's."""
        idle = min((t for t in (self.limits.idle_timeout, idle_timeout) if t is not None), default=None)
        now = self.clock.seconds()
        live = self._sessions[session.id] = Live(session, now, idle, active=now)
        session.on_end(lambda: self._gone(session.id))
        if not self._look.running:
            self._look.start(TICK, now=False)
        return live

    def kill(self, live: Live, by: str, peer: str) -> None:
        """End C{live} for an operator, who is named in its audit record."""
        assert live.session.door is not None, "the gate lets only sessions that can end be killed"
        live.session.note(ended_by={"user": by, "from": peer})
        live.session.door.stop("podshell: an operator ended this session", KILLED)

    def drain(self, grace: float) -> Deferred[None]:
        """Take no new sessions; tell every terminal; end what is left after
        C{grace} seconds.  Fires when none is left (at once if none is open)."""
        if self._drain is not None:
            return self._drain.done
        self._drain = _Drain()
        if not self._sessions:
            self._drain.done.callback(None)
            return succeed(None)
        for live in self:
            if live.session.door is not None:
                live.session.door.tell(f"podshell: the server is shutting down; this session ends in {spoken(grace)}")
        self._drain.call = self.clock.callLater(grace, self._end_all)
        return self._drain.done

    def _end_all(self) -> None:
        for live in self:
            if live.session.door is not None:
                live.session.door.stop("podshell: the server shut down", SHUTDOWN)
            else:
                live.session.end(SHUTDOWN, *live.moved)
        if self._drain is not None and not self._drain.done.called:
            self._drain.done.callback(None)

    def _gone(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)
        if self._sessions:
            return
        if self._look.running:
            self._look.stop()
        drain = self._drain
        if drain is not None and not drain.done.called:
            if drain.call is not None and drain.call.active():
                drain.call.cancel()
            drain.done.callback(None)

    def _tick(self) -> None:
        now = self.clock.seconds()
        most = self.limits.max_duration
        for live in self:
            door = live.session.door
            if door is None or live.session.ended:
                continue
            moved = door.moved()
            if moved != live.moved:
                live.moved, live.active, live.warned = moved, now, False
            if most is not None and now - live.since >= most:
                door.stop(f"podshell: this session reached its maximum duration ({spoken(most)})", TOO_LONG)
                continue
            idle = live.idle_timeout
            if idle is None:
                continue
            quiet = now - live.active
            lead = min(WARNING, idle / 2)
            if quiet >= idle:
                door.stop(f"podshell: this session was idle for {spoken(idle)}, and has ended", IDLE)
            elif not live.warned and quiet >= idle - lead:
                live.warned = True
                door.tell(f"podshell: this session is idle; it ends in {spoken(idle - quiet)} without input or output")
