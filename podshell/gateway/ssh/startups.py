"""Limits on unauthenticated SSH connections, as sshd's C{MaxStartups},
C{PerSourceMaxStartups} and C{LoginGraceTime} limit them.

A connection is a I{startup} from its accept until its user is authenticated
(or it ends).  Each one holds a socket and the key exchange's state; without a
cap, anyone who can reach the port can hold thousands of them by sending a
version line and stopping.  Three limits:

  - per source address: at most C{per_source} startups from one address; the
    next is refused.  A flood from a few addresses fills its own share only,
    so a user from elsewhere is not affected.
  - in total, random early drop (C{start:rate:full}): below C{start}
    startups every connection is let in; from C{start} on, a new one is
    refused with probability C{rate}% rising linearly to 100% at C{full}.
  - the login grace time (in L{podshell.gateway.ssh.server}): a startup that
    has not logged in within it is dropped, so a flood cannot hold its places
    for longer than that.

The decisions are here, without Twisted: L{Startups.admit} with a random
source a test can choose, L{Throttled} for one log line per interval in a
flood.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from podshell.core.metrics import SSHLimit

REFUSAL = b"podshell: too many unauthenticated connections, try again later\r\n"

_SPEC = re.compile(r"(\d+)(?::(\d+):(\d+))?")


@dataclass(frozen=True)
class MaxStartups:
    """sshd's C{MaxStartups start:rate:full}; a single number N is N:100:N."""

    start: int
    rate: int
    full: int

    @classmethod
    def parse(cls, text: str) -> MaxStartups:
        match = _SPEC.fullmatch(text.strip())
        if match is None:
            raise ValueError(f"{text!r} is not START:RATE:FULL (e.g. 10:30:100) or a number")
        if match.group(2) is None:
            n = int(match.group(1))
            spec = cls(n, 100, n)
        else:
            spec = cls(int(match.group(1)), int(match.group(2)), int(match.group(3)))
        if spec.full < 1:
            raise ValueError(f"{text!r}: FULL must be at least 1")
        if not 0 <= spec.rate <= 100:
            raise ValueError(f"{text!r}: RATE is a percentage, 0 to 100")
        if spec.start > spec.full:
            raise ValueError(f"{text!r}: START must not be above FULL")
        return spec

    def drop_probability(self, startups: int) -> float:
        """The chance that a new connection is refused while C{startups}
        others are unauthenticated (sshd's C{drop_connection})."""
        if startups < self.start:
            return 0.0
        if startups >= self.full:
            return 1.0
        span = self.full - self.start
        return (self.rate + (100 - self.rate) * (startups - self.start) / span) / 100


class Ticket:
    """One admitted startup; L{release} (once or more) gives its place back."""

    def __init__(self, startups: Startups, source: str) -> None:
        self._startups: Startups | None = startups
        self.source = source

    def release(self) -> None:
        if self._startups is not None:
            self._startups._release(self.source)
            self._startups = None

    @property
    def held(self) -> bool:
        return self._startups is not None


class Startups:
    """The unauthenticated connections, in total and by source address."""

    def __init__(
        self, max_startups: MaxStartups, per_source: int | None, uniform: Callable[[], float] = random.random
    ) -> None:
        """C{per_source}: None for no per-source limit; C{uniform}: a random
        number in [0, 1)."""
        self.max_startups = max_startups
        self.per_source = per_source
        self.uniform = uniform
        self.total = 0
        self.by_source: dict[str, int] = {}

    def admit(self, source: str) -> Ticket | SSHLimit:
        """A ticket for a new connection from C{source}, or the limit that
        refuses it."""
        if self.per_source is not None and self.by_source.get(source, 0) >= self.per_source:
            return SSHLimit.PER_SOURCE
        p = self.max_startups.drop_probability(self.total)
        if p >= 1.0 or (p > 0.0 and self.uniform() < p):
            return SSHLimit.MAX_STARTUPS
        self.total += 1
        self.by_source[source] = self.by_source.get(source, 0) + 1
        return Ticket(self, source)

    def _release(self, source: str) -> None:
        self.total -= 1
        left = self.by_source[source] - 1
        if left:
            self.by_source[source] = left
        else:
            del self.by_source[source]


class Throttled:
    """Whether to write a log line now: the first event, then at most one per
    C{interval} seconds, saying how many happened since the last line."""

    def __init__(self, now: Callable[[], float], interval: float = 10.0) -> None:
        self.now = now
        self.interval = interval
        self.last: float | None = None
        self.unlogged = 0

    def event(self) -> int:
        """Count one event: the number to report now (this one and those not
        yet logged), or 0 to stay quiet."""
        self.unlogged += 1
        t = self.now()
        if self.last is not None and t - self.last < self.interval:
            return 0
        self.last, count, self.unlogged = t, self.unlogged, 0
        return count
