"""Logging policy: Conch logs every key exchange, packet type and channel at
debug and info level; in a server with many sessions that drowns what matters.
Our Conch subclasses log through L{conch_logger}, which keeps warnings and up.
What happened in a session is in the audit log."""

from __future__ import annotations

from twisted.logger import FilteringLogObserver, Logger, LogLevel, LogLevelFilterPredicate, globalLogPublisher

conch_logger = Logger(
    observer=FilteringLogObserver(globalLogPublisher, [LogLevelFilterPredicate(defaultLogLevel=LogLevel.warn)])
)
