"""SIGTERM: stop accepting at once, let the sessions under way finish for a
grace, then end them, and only then stop the rest (pods, runtime, metrics).

twistd stops the application's services on SIGTERM; this is the top one, so
the order is its own: the front doors' listeners first (C{/readyz} turns
false with them), the grace, then every other service at once.  With no
session open there is no grace to wait: the server stops at once.
"""

from __future__ import annotations

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.logger import Logger

from podshell.auth.live import LiveSessions
from podshell.core.yamlfile import count

log = Logger()


class Graceful(MultiService):
    def __init__(self, live: LiveSessions, grace: float) -> None:
        super().__init__()
        self.live = live
        self.grace = grace
        self.doors: Service | None = None  # what stops accepting first

    def stopService(self) -> Deferred[object]:
        open_now = len(self.live)
        if open_now:
            log.info(
                "shutting down: {n} under way, ended in {grace} s unless they end first",
                n=count(open_now, "session"),
                grace=self.grace,
            )
        accepting = maybeDeferred(self.doors.stopService) if self.doors is not None else succeed(None)
        accepting.addCallback(lambda _: self.live.drain(self.grace))
        accepting.addCallback(lambda _: MultiService.stopService(self))
        return accepting
