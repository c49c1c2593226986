"""exec and attach, whatever carries them (WebSocket channels or SPDY
streams): the process side is the same, only the framing differs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from podshell.core.contracts import Process, Session
from podshell.core.contracts import Sink as ProcessSink
from podshell.core.flow import Pausable, Valve
from podshell.core.process import ExitStatus, WindowSize
from podshell.core.target import TargetError
from podshell.protocols import remotecommand as rc
from podshell.protocols.remotecommand import StreamOptions


class Output(Protocol):
    """What a transport does for a command session."""

    def send(self, channel: int, data: bytes) -> None:
        """Deliver output on C{rc.STDOUT}, C{rc.STDERR} or C{rc.ERROR}."""

    def finish(self) -> None:
        """Everything has been sent: end the streams, then the connection."""


class Sink(Protocol):
    def registerProducer(self, producer: Pausable, streaming: bool) -> None: ...


Start = Callable[[ProcessSink], Process]


class CommandSession:
    """One exec or attach: client input to the target, the target's output
    and end (as a Kubernetes status) to the client."""

    def __init__(
        self, output: Output, protocol: str, options: StreamOptions, audit: Session, command: list[str] | None
    ) -> None:
        self.output = output
        self.protocol = protocol
        self.options = options
        self.audit = audit
        self.command = command  # None for attach
        self.target: Process | None = None
        self.resizes = rc.ResizeDecoder()
        self.ended = False

    def begin(self, start: Start, sink: Sink, valve: Valve) -> None:
        """Start the target; a slow client pauses it, and a target that does
        not read its stdin stops us reading the client.  A command asked for
        without stdin reads EOF at once, as in Kubernetes (whatever the
        transport: this is where every exec comes, on a node agent too)."""
        try:
            self.target = start(self)
        except TargetError as e:  # the container stopped a moment ago
            self.fail(str(e))
            return
        sink.registerProducer(self.target, True)
        if self.ended:
            return
        self.audit.serve(self)
        if self.command is not None and not self.options.stdin:  # not an attachment: its stdin is the container's
            self.target.closeStdin()
        else:
            self.target.registerProducer(valve.producer("stdin"), True)

    # From the client.
    def stdin(self, data: bytes) -> None:
        if self.target is not None and self.options.stdin and not self.ended:
            self.target.write(data)

    def stdin_closed(self) -> None:
        if self.target is not None and self.options.stdin and not self.ended:
            self.target.closeStdin()

    def signal(self, name: str) -> None:
        """Raises ValueError for a name that is not a signal."""
        if self.target is not None and not self.ended:
            self.target.signal(name)

    def resize(self, data: bytes) -> None:
        """Raises ValueError for a message that is not a window size."""
        if self.target is not None and not self.ended:
            for size in self.resizes.feed(data):
                self.target.resize(WindowSize(size.rows, size.cols))

    def client_gone(self) -> None:
        if self.target is not None and not self.ended:
            self.ended = True
            self.target.hangup()
            self.audit.end("client went away", self.target.bytes_in, self.target.bytes_out)

    # From the target (ProcessSink).
    def outReceived(self, data: bytes) -> None:
        self.output.send(rc.STDOUT, data)

    def errReceived(self, data: bytes) -> None:
        self.output.send(rc.STDERR if self.options.stderr else rc.STDOUT, data)

    def processEnded(self, status: ExitStatus) -> None:
        if self.ended:
            return
        self.ended = True
        if self.target is not None:
            self.audit.end(str(status), self.target.bytes_in, self.target.bytes_out)
        if self.command is None:
            payload = rc.final_status(rc.Ended(0), [], self.protocol)
        else:
            payload = rc.final_status(rc.Ended(status.code, status.signal), self.command, self.protocol)
        if payload:
            self.output.send(rc.ERROR, payload)
        self.output.finish()

    def fail(self, message: str) -> None:
        """End the session with an error the client shows (e.g. a container
        that went away, streams that never came, a resize stream we cannot
        read); a target still running is hung up, as when the client goes."""
        self.stop(message, f"failed: {message}")

    # Door: the registry of live sessions ends it (an operator, a timeout, a shutdown).
    def moved(self) -> tuple[int, int]:
        return (self.target.bytes_in, self.target.bytes_out) if self.target is not None else (0, 0)

    def tell(self, line: str) -> None:
        if self.options.tty and not self.ended:
            self.output.send(rc.STDOUT, f"\r\n{line}\r\n".encode())

    def stop(self, line: str, status: str) -> None:
        """The client shows C{line} as the error the session ended with."""
        if self.ended:
            return
        self.ended = True
        if self.target is not None and self.target.status is None:
            self.target.hangup()
        self.audit.end(status, *self.moved())
        self.output.send(rc.ERROR, rc.internal_error(line, self.protocol))
        self.output.finish()
