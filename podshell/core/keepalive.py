"""Noticing a dead peer: probe a connection that has gone quiet, and give up
on one that answers none of several probes.

A peer that vanished without a FIN or RST (a laptop closed, a NAT that
forgot the connection) otherwise holds its session, process and sockets
until TCP's own timeout, hours later.  The rule is sshd's
C{ClientAliveInterval} and C{ClientAliveCountMax}: every C{interval} seconds
with nothing heard from the peer, a probe goes out (an SSH keepalive request,
a WebSocket ping, a SPDY PING); anything heard from the peer (the answer or
any other traffic) resets the count; with C{count_max} probes unanswered the
connection is dropped, about C{interval * (count_max + 1)} seconds after the
peer went quiet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IDelayedCall, IReactorTime


@dataclass(frozen=True)
class KeepaliveSettings:
    """Seconds between probes of a quiet peer; probes it may leave unanswered."""

    interval: float
    count_max: int


class Keepalive:
    """Probes one connection's peer while it is quiet; L{heard} on anything
    from the peer, L{stop} when the connection ends."""

    def __init__(
        self,
        clock: IReactorTime,
        settings: KeepaliveSettings,
        probe: Callable[[], None],
        dead: Callable[[], None],
    ) -> None:
        self.clock = clock
        self.settings = settings
        self.probe = probe
        self.dead = dead
        self.unanswered = 0
        self._last = clock.seconds()
        self._timer: IDelayedCall | None = clock.callLater(settings.interval, self._tick)

    def heard(self) -> None:
        """The peer said something: it is alive (a stamp per packet, no timer change)."""
        self._last = self.clock.seconds()
        self.unanswered = 0

    def stop(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _tick(self) -> None:
        self._timer = None
        quiet_for = self.clock.seconds() - self._last
        if quiet_for < self.settings.interval:
            self._timer = self.clock.callLater(self.settings.interval - quiet_for, self._tick)
            return
        if self.unanswered >= self.settings.count_max:
            self.dead()
            return
        self.unanswered += 1
        self.probe()
        self._timer = self.clock.callLater(self.settings.interval, self._tick)
