"""Logging policy: Conch logs every key exchange, packet type and channel at
debug and info level; in a server with many sessions that drowns what matters.
Our Conch subclasses log through L{conch_logger}, which keeps warnings and up.
What happened in a session is in the audit log."""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger, LogLevel


class _WarningsAndUp(Logger):
    """Drops debug and info before an event is built, and is one logger for
    every class that uses it: Conch looks its class-attribute logger up (a
    descriptor that makes a new L{Logger} each time) for every packet and
    channel event: profiled, a tenth of the server's CPU time per exec."""

    def __get__(self, instance: object, owner: type | None = None) -> _WarningsAndUp:
        return self

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if level >= LogLevel.warn:
            super().emit(level, format, **kwargs)


conch_logger = _WarningsAndUp(namespace="twisted.conch")
