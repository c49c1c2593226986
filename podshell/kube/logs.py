"""pods/log: the request as the kube-apiserver reads it, and the response
streamed from a container's log files as the client takes it.

The answer is C{text/plain}, chunked, and ends the connection (a gateway
splices it from a node agent, which then closes): the log is read from
disk a chunk at a time and only while the transport wants more, so a slow
reader holds no memory and never slows the container.  Following, it waits
for the container's next write and ends when that run of it ends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from podshell.core.logs import LogSource, Options, parse_timestamp
from podshell.core.target import LogsUnavailable

if TYPE_CHECKING:
    from podshell.core.contracts import Session

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
    b"Cache-Control: no-cache, private\r\nConnection: close\r\n\r\n"
)
_TRUE = ("1", "t", "T", "TRUE", "true", "True")  # Go's strconv.ParseBool, which the API server uses
_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_INTEGER = re.compile(r"^[+-]?\d+$")


def _bool(query: dict[str, list[str]], name: str) -> bool:
    value = (query.get(name) or ["false"])[0]
    if value in _TRUE:
        return True
    if value in _FALSE or value == "":
        return False
    raise ValueError(f'invalid value for {name}: strconv.ParseBool: parsing "{value}": invalid syntax')


def _int(query: dict[str, list[str]], name: str, least: int) -> int | None:
    values = query.get(name)
    if not values or values[0] == "":
        return None
    if not _INTEGER.match(values[0]):
        raise ValueError(f'invalid value for {name}: strconv.ParseInt: parsing "{values[0]}": invalid syntax')
    value = int(values[0])
    if value < least:
        what = "greater than or equal to 0" if least == 0 else "greater than 0"
        raise ValueError(f"PodLogOptions is invalid: {name}: Invalid value: {value}: must be {what}")
    return value


@dataclass(frozen=True)
class LogRequest:
    """A pods/log query (C{PodLogOptions})."""

    container: str | None
    follow: bool
    previous: bool
    options: Options
    query: tuple[tuple[str, str], ...]  # what to pass on to the node that has the files

    @classmethod
    def fromQuery(cls, query: dict[str, list[str]], now_ns: int) -> LogRequest:
        """@raise ValueError: with the API server's message.
        C{insecureSkipTLSVerifyBackend} is accepted and means nothing here."""
        since_seconds = _int(query, "sinceSeconds", 1)
        since_time = (query.get("sinceTime") or [""])[0]
        if since_seconds is not None and since_time:
            raise ValueError("PodLogOptions is invalid: at most one of `sinceTime` or `sinceSeconds` may be specified")
        since = now_ns - since_seconds * 1_000_000_000 if since_seconds is not None else None
        if since_time:
            try:
                since = parse_timestamp(since_time.encode())
            except ValueError:
                raise ValueError(f'invalid value for sinceTime: parsing time "{since_time}" as RFC3339') from None
        options = Options(_bool(query, "timestamps"), _int(query, "tailLines", 0), since, _int(query, "limitBytes", 1))
        follow, previous = _bool(query, "follow"), _bool(query, "previous")
        on = (("follow", follow), ("previous", previous), ("timestamps", options.timestamps))
        flags = [(name, "true") for name, value in on if value]
        passed = [(k, query[k][0]) for k in ("sinceSeconds", "sinceTime", "tailLines", "limitBytes") if query.get(k)]
        return cls((query.get("container") or [""])[0] or None, follow, previous, options, (*flags, *passed))

    def audit(self) -> list[str]:
        """The options, for the audit record: which run, how much."""
        return [f"{k}={v}" for k, v in self.query]


def container_of(pod: dict[str, Any], container: str | None) -> str:
    """The container pods/log reads: the one named, or the only one (the
    API server does not apply kubectl's default-container annotation).

    @raise LogsUnavailable: with the API server's message.
    """
    name = pod["metadata"]["name"]
    names = [str(c["name"]) for c in pod["spec"]["containers"]]
    if container is None:
        if len(names) == 1:
            return names[0]
        raise LogsUnavailable(f"a container name must be specified for pod {name}, choose one of: [{' '.join(names)}]")
    if container not in names:
        raise LogsUnavailable(f"container {container} is not valid for pod {name}")
    return container


class LogStream(TwistedProtocol):
    """The response: one chunk per turn of the reactor while the transport
    is not paused; following, a write of the container wakes it."""

    def __init__(self, reactor, source: LogSource, session: Session, follow: bool) -> None:
        self.reactor = reactor
        self.source = source
        self.session = session
        self.follow = follow
        self.paused = False
        self.bytes_out = 0
        self._call: IDelayedCall | None = None
        self._over = False

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(HEAD)
        self.transport.registerProducer(self, True)  # type: ignore[attr-defined]
        if self.follow:
            self.source.watch(self._wake)
        self._wake()

    def _wake(self) -> None:
        if self._call is None and not self.paused and not self._over:
            self._call = self.reactor.callLater(0, self._pump)

    def _pump(self) -> None:
        self._call = None
        if self.paused or self._over or self.transport is None:
            return
        data = self.source.read()
        if data:
            self.bytes_out += len(data)
            self.transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        if self.source.done or (self.source.at_end and not (self.follow and self.source.live)):
            self._end()
        elif not self.source.at_end:
            self._wake()

    def _end(self) -> None:
        assert self.transport is not None
        self.transport.write(b"0\r\n\r\n")
        self._close("closed")
        self.transport.unregisterProducer()  # type: ignore[attr-defined]
        self.transport.loseConnection()

    def _close(self, status: str) -> None:
        if self._over:
            return
        self._over = True
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self.source.close(self._wake if self.follow else None)
        self.session.end(status, 0, self.bytes_out)

    def dataReceived(self, data: bytes) -> None:
        """Nothing is asked of a client once it has asked for the log."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._close("closed by the client")

    # IPushProducer, for the transport.
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        self._close("closed by the client")
