"""Session recordings on disk: what the policy asks to record, written as
L{podshell.protocols.asciicast} says, beside the audit log it names.

Recordings are made where the front doors call the nodes (the gateway's
L{podshell.gateway.routing.Cluster}, or the embedded server's), never on a
node agent: every session through a gateway is recorded once, in the
gateway's recording directory.

Writes never hold the reactor for long: events are buffered and written
(cast, then its chain) when a second has passed since the first unwritten
one, or at once when 64 KiB are waiting, so a crash loses at most the last
second and the buffer never grows past 64 KiB and one read.  A write that
fails (disk full, directory gone) ends the recording: a C{required} rule
then ends the session with a line saying why; a C{best-effort} one lets it
go on, with the failure in the audit log and the metrics.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import directlyProvides, providedBy

from podshell.auth.audit import AuditLog
from podshell.core.contracts import Grant, Process, ProcessRequest, RecordMode, Sink
from podshell.core.flow import Pausable
from podshell.core.process import ExitStatus, WindowSize
from podshell.core.target import TargetError
from podshell.protocols.asciicast import CHAIN_SUFFIX, Chain, Code, Encoder, Kind, header

log = Logger()
FLUSH_SECONDS = 1.0
FLUSH_BYTES = 64 * 1024
SUFFIX = ".cast"

Start = Callable[[Sink], Process]


class RecordingFailed(TargetError):
    """A C{required} recording could not be opened: the session does not start."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"this session must be recorded, and cannot be: {reason}")


def _reason(e: OSError) -> str:
    return f"{e.strerror or e} ({e.filename})" if e.filename else str(e.strerror or e)


class Recording:
    """One recording's two files, written as they go."""

    def __init__(self, clock: IReactorTime, path: Path, head: dict, failed: Callable[[str], None]) -> None:
        """@raise OSError: the files cannot be created, or the header written."""
        self.clock = clock
        self.path = path
        self.id = path.name.removesuffix(SUFFIX)
        self._failed = failed
        self._encoder = Encoder(head)
        self._chain = Chain()
        self._t0 = clock.seconds()
        self._cast: bytearray = bytearray()
        self._links: bytearray = bytearray()
        self._due: IDelayedCall | None = None
        self.closed = False
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        self._fd = os.open(path, flags, 0o600)
        try:
            self._chain_fd = os.open(str(path) + CHAIN_SUFFIX, flags, 0o600)
        except OSError:
            os.close(self._fd)
            raise
        self._add(self._encoder.head)
        try:
            self._write()
        except OSError:
            self._close_files()
            raise

    @property
    def digest(self) -> str:
        return self._chain.digest

    def event(self, code: Code, data: bytes | str) -> None:
        if not self.closed:
            self._add(self._encoder.event(self.clock.seconds() - self._t0, code, data))

    def resize(self, size: WindowSize) -> None:
        if not self.closed:
            self._add(self._encoder.resize(self.clock.seconds() - self._t0, size.cols, size.rows))

    def _add(self, line: bytes | None) -> None:
        if line is None:
            return
        self._cast += line
        self._links += self._chain.add(line)
        if len(self._cast) >= FLUSH_BYTES:
            self.flush()
        elif self._due is None:
            self._due = self.clock.callLater(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self._due is not None and self._due.active():
            self._due.cancel()
        self._due = None
        if self.closed:
            return
        try:
            self._write()
        except OSError as e:
            self._close_files()
            self._failed(_reason(e))

    def _write(self) -> None:
        for fd, buffer in ((self._fd, self._cast), (self._chain_fd, self._links)):
            while buffer:
                del buffer[: os.write(fd, buffer)]

    def close(self) -> None:
        """Write what is left and the chain's end mark."""
        if self.closed:
            return
        self._links += self._chain.trailer()
        self.flush()
        self._close_files()

    def _close_files(self) -> None:
        self.closed = True
        if self._due is not None and self._due.active():
            self._due.cancel()
        self._due = None
        self._cast.clear()
        self._links.clear()
        for fd in (self._fd, self._chain_fd):
            os.close(fd)


class Recorder:
    """Records the sessions the policy says to, in C{directory}."""

    def __init__(self, clock: IReactorTime, directory: Path, audit: AuditLog) -> None:
        self.clock = clock
        self.directory = directory
        self.audit = audit
        self.recording: dict[str, Recording] = {}  # by id: open now, never pruned
        self.forwards: dict[str, Forward] = {}  # by session id

    def process(self, grant: Grant, request: ProcessRequest | None, sink: Sink, start: Start) -> Process:
        """C{start} the process (None: an attachment), recorded as C{grant} says.

        @raise RecordingFailed: it must be recorded and cannot be.
        """
        if grant.record is RecordMode.OFF:
            return start(sink)
        tee = RecordingSink(sink, grant)
        recording = self._open(grant, request, tee.failed)
        if recording is None:
            return start(sink)
        tee.recording = recording
        try:
            process = start(tee)
        except Exception:
            self._closed(grant, recording)
            raise
        tee.ended = lambda: self._closed(grant, recording)
        terminal = request is not None and request.tty
        return RecordedProcess(process, recording, tee, record_input=grant.record_input or not terminal)

    def connect(
        self, grant: Grant, address: str, factory: IProtocolFactory, connect: Callable[[IProtocolFactory], Deferred]
    ) -> Deferred[IProtocol]:
        """A connection into the pod (-L, kubectl port-forward), its open and close recorded."""
        try:
            forward = self._forward(grant, address)
        except RecordingFailed:
            return fail(Failure())
        return connect(factory if forward is None else CountingFactory(factory, forward, address))

    def listen(
        self, grant: Grant, address: str, factory: IProtocolFactory, listen: Callable[[IProtocolFactory], Deferred]
    ) -> Deferred[IListeningPort]:
        """A listener in the pod (-R): each connection to it recorded."""
        try:
            forward = self._forward(grant, address)
        except RecordingFailed:
            return fail(Failure())
        return listen(factory if forward is None else CountingFactory(factory, forward, f"to {address}"))

    def _forward(self, grant: Grant, address: str) -> Forward | None:
        """The session's forward recording (one for all its connections),
        closed when the session ends.  @raise RecordingFailed."""
        if grant.record is RecordMode.OFF:
            return None
        opened = self.forwards.get(grant.session.id)
        if opened is not None:
            return opened

        def failed(reason: str) -> None:
            """Later connections need a new recording (required: refused)."""
            self.forwards.pop(grant.session.id, None)

        recording = self._open(grant, None, failed, Kind.FORWARD, [address])
        if recording is None:
            return None
        forward = self.forwards[grant.session.id] = Forward(recording)

        def ended() -> None:
            self.forwards.pop(grant.session.id, None)
            self._closed(grant, recording)

        grant.session.on_end(ended)
        return forward

    def _open(
        self,
        grant: Grant,
        request: ProcessRequest | None,
        failed: Callable[[str], None],
        kind: Kind | None = None,
        command: list[str] | None = None,
    ) -> Recording | None:
        session = grant.session
        terminal = request is not None and request.tty
        size = (request.size if request is not None else None) or WindowSize(24, 80)
        who = session.request.identity
        fields: dict[str, Any] = {
            "session": session.id,
            "user": who.name if who else None,
            "from": session.request.peer,
            "target": grant.handle.path,
            "node": grant.handle.node,
            "command": list(request.argv) if request is not None else command,
            "mode": grant.record.value,
            "input": grant.record_input or not terminal,
        }
        if grant.run_as is not None:
            fields["run_as"] = grant.run_as
        term = request.env.get("TERM") if request is not None else None
        kind = kind or (Kind.TERMINAL if terminal else Kind.EXEC)
        head = header(kind, size.cols, size.rows, time.time(), term, fields)
        path = self.directory / f"{session.id}{SUFFIX}"
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            recording = Recording(self.clock, path, head, lambda reason: self._failed(grant, reason, failed))
        except OSError as e:
            self._failed(grant, _reason(e), None)
            return None
        self.recording[recording.id] = recording
        return recording

    def _failed(self, grant: Grant, reason: str, ended: Callable[[str], None] | None) -> None:
        """Audited and counted; a required one refuses or ends the session."""
        session = grant.session
        log.warn("recording of session {id} failed: {reason}", id=session.id, reason=reason)
        self.audit.write("recording.failed", id=session.id, mode=grant.record.value, reason=reason)
        if self.audit.metrics is not None:
            self.audit.metrics.recording_failed(grant.record.value)
        session.note(recording_failed=reason)
        self.recording.pop(session.id, None)
        if grant.record is not RecordMode.REQUIRED:
            return
        if ended is None:
            raise RecordingFailed(reason)
        ended(reason)

    def _closed(self, grant: Grant, recording: Recording) -> None:
        was_open = not recording.closed
        recording.close()
        self.recording.pop(recording.id, None)
        if was_open:
            grant.session.note(recording_sha256=recording.digest)

    def close(self) -> None:
        """The server stops: what is buffered goes to disk."""
        for recording in list(self.recording.values()):
            recording.close()
        self.recording.clear()


class RecordingSink:
    """The process's output, recorded on its way to the front door."""

    def __init__(self, sink: Sink, grant: Grant) -> None:
        self.sink = sink
        self.grant = grant
        self.recording: Recording | None = None
        self.process: Process | None = None
        self.ended: Callable[[], None] = lambda: None

    def outReceived(self, data: bytes) -> None:
        if self.recording is not None:
            self.recording.event(Code.OUTPUT, data)
        self.sink.outReceived(data)

    def errReceived(self, data: bytes) -> None:
        if self.recording is not None:
            self.recording.event(Code.STDERR, data)
        self.sink.errReceived(data)

    def processEnded(self, status: ExitStatus) -> None:
        if self.recording is not None:
            self.recording.event(Code.EXIT, str(status))
        self.ended()
        self.sink.processEnded(status)

    def failed(self, reason: str) -> None:
        """A required recording failed mid-session: say so, and end it."""
        self.sink.errReceived(f"\r\npodshell: session ended: the recording failed: {reason}\r\n".encode())
        if self.process is not None:
            self.process.hangup()


@dataclass
class RecordedProcess:
    """A process whose input and resizes are recorded; the rest passes."""

    process: Process
    recording: Recording
    tee: RecordingSink
    record_input: bool

    def __post_init__(self) -> None:
        self.tee.process = self.process

    @property
    def bytes_in(self) -> int:
        return self.process.bytes_in

    @bytes_in.setter
    def bytes_in(self, value: int) -> None:
        self.process.bytes_in = value

    @property
    def bytes_out(self) -> int:
        return self.process.bytes_out

    @bytes_out.setter
    def bytes_out(self, value: int) -> None:
        self.process.bytes_out = value

    @property
    def status(self) -> ExitStatus | None:
        return self.process.status

    def write(self, data: bytes) -> None:
        if self.record_input:
            self.recording.event(Code.INPUT, data)
        self.process.write(data)

    def closeStdin(self) -> None:
        self.process.closeStdin()

    def resize(self, size: WindowSize) -> None:
        self.recording.resize(size)
        self.process.resize(size)

    def signal(self, sig: str | int) -> None:
        self.process.signal(sig)

    def hangup(self) -> object:
        return self.process.hangup()

    def registerProducer(self, producer: Pausable, streaming: bool) -> None:
        self.process.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.process.unregisterProducer()

    def pauseProducing(self) -> None:
        self.process.pauseProducing()

    def resumeProducing(self) -> None:
        self.process.resumeProducing()

    def stopProducing(self) -> None:
        self.process.stopProducing()


@dataclass
class Forward:
    """A port-forward session's recording and how many connections it had."""

    recording: Recording
    connections: int = 0


class CountingFactory(Factory):
    """Builds the front door's protocols, each counted and recorded."""

    def __init__(self, factory: IProtocolFactory, forward: Forward, address: str) -> None:
        self.factory = factory
        self.forward = forward
        self.address = address

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:  # type: ignore[override]
        inner = self.factory.buildProtocol(addr)
        if inner is None:
            return None
        self.forward.connections += 1
        return cast(IProtocol, CountingProtocol(inner, self.forward, self.forward.connections, self.address))


class CountingProtocol:
    """A connection's protocol as it is, but for the bytes it is sent (out of
    the pod) and writes (into it), and its open and close in the recording.
    It provides what the protocol does (half-close too) by passing it on."""

    def __init__(self, inner: IProtocol, forward: Forward, number: int, address: str) -> None:
        directlyProvides(self, providedBy(inner))
        self._inner = inner
        self._recording = forward.recording
        self._number = number
        self._address = address
        self.bytes_in = 0
        self.bytes_out = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def makeConnection(self, transport: Any) -> None:
        self._recording.event(Code.OPENED, f"{self._number} {self._address}")
        self._inner.makeConnection(cast(ITransport, CountingTransport(transport, self)))

    def dataReceived(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self._inner.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        self._recording.event(Code.CLOSED, f"{self._number} {self.bytes_in} {self.bytes_out}")
        self._inner.connectionLost(reason)


class CountingTransport:
    """The pod connection's transport, counting what is written into the pod."""

    def __init__(self, transport: Any, counts: CountingProtocol) -> None:
        directlyProvides(self, providedBy(transport))
        self._transport = transport
        self._counts = counts

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def write(self, data: bytes) -> None:
        self._counts.bytes_in += len(data)
        self._transport.write(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self._counts.bytes_in += sum(map(len, data))
        self._transport.writeSequence(data)


@dataclass(frozen=True)
class Retention:
    max_age: float | None  # seconds
    max_bytes: int | None


def prune(directory: Path, retention: Retention, now: float, busy: set[str]) -> list[str]:
    """Remove recordings older than the age, then the oldest while the total
    (open ones too) is over the size; never one being written.  The ids removed."""
    if not directory.is_dir():
        return []
    found = []
    total = 0
    for path in directory.glob(f"*{SUFFIX}"):
        rid = path.name.removesuffix(SUFFIX)
        chain = Path(str(path) + CHAIN_SUFFIX)
        try:
            stat = path.stat()
            size = stat.st_size + (chain.stat().st_size if chain.exists() else 0)
        except FileNotFoundError:
            continue
        total += size
        if rid not in busy:
            found.append((stat.st_mtime, rid, size, path, chain))
    found.sort()
    removed = []
    for mtime, rid, size, path, chain in found:
        old = retention.max_age is not None and now - mtime > retention.max_age
        big = retention.max_bytes is not None and total > retention.max_bytes
        if not (old or big):
            continue
        path.unlink(missing_ok=True)
        chain.unlink(missing_ok=True)
        total -= size
        removed.append(rid)
    return removed
