"""The server's log as one JSON object per line, for log shippers:

    twistd -n --logger podshell.server.jsonlog.observer podshell --config ...

Each line has C{time} (UTC, ISO 8601), C{level}, C{namespace} (the module
that logged), C{system}, C{message} (the text the plain log shows) and, for an
error with one, C{traceback}.  It writes to standard output, where a container
runtime or a process supervisor collects it (C{--logfile} does not apply).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from zope.interface import implementer


@implementer(ILogObserver)
class JSONLines:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: LogEvent) -> None:
        level = event.get("log_level")
        record: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time", 0), UTC).isoformat(timespec="milliseconds"),
            "level": level.name if level is not None else "info",
            "namespace": event.get("log_namespace", ""),
            "system": event.get("log_system", "-"),
            "message": formatEvent(event),
        }
        failure = event.get("log_failure")
        if failure is not None:
            record["traceback"] = failure.getTraceback()
        self.out.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.out.flush()


def observer() -> ILogObserver:
    """The factory C{twistd --logger} names."""
    return JSONLines(sys.stdout)
