"""Container logs of the CRI runtime: the files containerd and CRI-O write
for the kubelet (its CRI log format, C{<log dir>/<container>/<restart>.log}),
read with the local runtime's reader.  Nothing tells podshell that a file
grew, so a follower is woken every L{FOLLOW_POLL} seconds."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from twisted.internet.task import LoopingCall

from podshell.core.logs import Options
from podshell.core.target import LogsUnavailable
from podshell.node import logfile
from podshell.node.logfile import Reader

FOLLOW_POLL = 0.1  # seconds: how late a followed line may come
_RUN_FILE = re.compile(r"^(\d+)\.log$")


class CRILog:
    """One read of a run's log; C{running} says whether that run still writes."""

    def __init__(self, reactor, path: str, options: Options, running: Callable[[], bool]) -> None:
        file = Path(path)
        run = _RUN_FILE.match(file.name)
        if not path or run is None:
            raise LogsUnavailable(f"the container's log file {path!r} is not in the kubelet's layout (N.log)")
        self.reactor = reactor
        self.reader = Reader(file.parent, int(run[1]), options)
        self._running = running
        self._poll: LoopingCall | None = None

    @property
    def live(self) -> bool:
        return self._running()

    def read(self, size: int = logfile.READ_SIZE) -> bytes:
        return self.reader.read(size)

    @property
    def at_end(self) -> bool:
        return self.reader.at_end

    @property
    def done(self) -> bool:
        return self.reader.done

    def watch(self, watcher: Callable[[], None]) -> None:
        self._poll = LoopingCall(watcher)
        self._poll.clock = self.reactor
        self._poll.start(FOLLOW_POLL, now=False)

    def close(self, watcher: Callable[[], None] | None = None) -> None:
        if self._poll is not None and self._poll.running:
            self._poll.stop()
        self._poll = None
        self.reader.close()
