"""The node spawner: the one place where processes and sockets inside
containers are made.  SSH, the Kubernetes API and the CLI all come here.

A process is started through the L{nsexec} helper and handed back as a
L{ProcessSession}: write stdin, close it, resize the terminal, send signals,
and receive stdout, stderr and the exit status on a L{ProcessSink}.  The
session is an C{IPushProducer} of the process output, so a slow reader pauses
the process (its pipe fills, it blocks in write) instead of growing memory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import sys
import termios
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory, IPushProducer
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from podshell.node import nsexec
from podshell.node.netns import NetnsSockets
from podshell.node.process import ExitStatus, WindowSize, signal_number
from podshell.node.runtime.base import ContainerHandle, ProcessRef

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ALL_NAMESPACES = ["ipc", "uts", "net", "pid", "mnt"]
READ_SIZE = 65536


class ProcessSink(Protocol):
    """Where a session's output goes (an SSH channel, a WebSocket, a test)."""

    def outReceived(self, data: bytes) -> None: ...

    def errReceived(self, data: bytes) -> None: ...

    def processEnded(self, status: ExitStatus) -> None: ...


class _HelperProcess(Protocol):
    """What we use of Twisted's C{Process} and C{PTYProcess}; both have it,
    though C{IProcessTransport} does not promise all of it."""

    pid: int | None

    def write(self, data: bytes) -> None: ...

    def closeStdin(self) -> None: ...

    def fileno(self) -> int: ...

    def signalProcess(self, signalID: str | int) -> None: ...

    def registerProducer(self, producer: object, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


@implementer(IPushProducer)
class ProcessSession(ProcessProtocol):
    """One process in a container, as seen by a front door."""

    log = Logger()

    def __init__(self, reactor, sink: ProcessSink, tty: bool, description: str) -> None:
        self._reactor = reactor
        self.sink = sink
        self.tty = tty
        self.description = description
        self.status: ExitStatus | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self._kill_timer = None
        self.ended: Deferred[ExitStatus] = Deferred()

    @property
    def process(self) -> _HelperProcess:
        """The helper process (set by spawnProcess before anything else runs)."""
        assert self.transport is not None
        return cast(_HelperProcess, self.transport)

    # Output, delivered to the sink.
    def outReceived(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.sink.outReceived(data)

    def errReceived(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.sink.errReceived(data)

    def processEnded(self, reason: Failure) -> None:
        self.status = ExitStatus.fromFailure(reason)
        if self._kill_timer is not None and self._kill_timer.active():
            self._kill_timer.cancel()
        self.sink.processEnded(self.status)
        self.ended.callback(self.status)

    # Input and control, from the front door.
    def write(self, data: bytes) -> None:
        if self.status is None:
            self.bytes_in += len(data)
            self.process.write(data)

    def closeStdin(self) -> None:
        """Deliver EOF.  A terminal has no EOF of its own: like sshd, we
        ignore it there (the user types ^D)."""
        if self.status is None and not self.tty:
            # A transport with a producer waits for it to unregister before
            # it closes: the stdin producer has nothing more to give.
            self.process.unregisterProducer()
            self.process.closeStdin()

    def resize(self, size: WindowSize) -> None:
        if self.tty and self.status is None:
            fcntl.ioctl(self.process.fileno(), termios.TIOCSWINSZ, size.pack())

    def signal(self, sig: str | int) -> None:
        """Send a signal to the command (the helper relays it)."""
        with contextlib.suppress(ProcessExitedAlready):
            self.process.signalProcess(signal_number(sig))

    def hangup(self, grace: float = 5.0) -> Deferred[ExitStatus]:
        """The client went away: SIGHUP now, SIGKILL after C{grace} seconds."""
        return self.terminate(grace, "HUP")

    def terminate(self, grace: float = 5.0, sig: str = "TERM") -> Deferred[ExitStatus]:
        """C{sig} (SIGTERM) now, SIGKILL after C{grace} seconds if still running."""
        if self.status is not None:
            return succeed(self.status)
        d: Deferred[ExitStatus] = Deferred()

        def relay(status: ExitStatus) -> ExitStatus:
            d.callback(status)
            return status

        self.ended.addCallback(relay)
        self.signal(sig)
        if self._kill_timer is None:
            self._kill_timer = self._reactor.callLater(grace, self.signal, "KILL")
        return d

    def registerProducer(self, producer: object, streaming: bool) -> None:
        """Flow control for stdin: C{producer} is paused while the process
        does not read."""
        self.process.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.process.unregisterProducer()

    # IPushProducer: flow control for output.
    def pauseProducing(self) -> None:
        if self.status is None:
            self.process.pauseProducing()

    def resumeProducing(self) -> None:
        if self.status is None:
            self.process.resumeProducing()

    def stopProducing(self) -> None:
        if self.status is None:
            self.signal("KILL")


def _read_more(reader: object, deliver: Callable[[bytes], object]) -> None:
    """Read a process's output 64 KiB at a time instead of Twisted's 8 KiB:
    each chunk becomes an SSH packet or a WebSocket frame downstream, so
    bigger reads mean a quarter of the per-chunk work for bulk output."""
    fd: int = reader.fd  # type: ignore[attr-defined]

    def doRead() -> object:
        try:
            data = os.read(fd, READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return CONNECTION_LOST
        if not data:
            return CONNECTION_DONE
        deliver(data)
        return None

    reader.doRead = doRead  # type: ignore[attr-defined]


class Spawner:
    """Starts processes and opens sockets inside containers."""

    log = Logger()

    def __init__(self, reactor, python: str = sys.executable) -> None:
        self._reactor = reactor
        self._python = python
        self._sockets = NetnsSockets(reactor)

    def _launch(
        self,
        spec: dict,
        sink: ProcessSink,
        env: Mapping[str, str],
        tty: bool,
        size: WindowSize | None,
        description: str,
    ) -> ProcessSession:
        spec = dict(spec, parent=os.getpid(), tty=tty)
        session = ProcessSession(self._reactor, sink, tty, description)
        argv = [self._python, "-I", "-S", nsexec.__file__, json.dumps(spec)]
        usePTY: object = False
        if tty:
            master, slave = pty.openpty()
            fcntl.ioctl(master, termios.TIOCSWINSZ, (size or WindowSize(24, 80)).pack())
            usePTY = (master, slave, os.ttyname(slave))
        process = self._reactor.spawnProcess(session, self._python, argv, env=dict(env), usePTY=usePTY)
        if tty:
            _read_more(process, lambda data: session.childDataReceived(1, data))
        else:
            for fd in (1, 2):
                reader = process.pipes[fd]
                _read_more(reader, reader.dataReceived)
        return session

    @staticmethod
    def environment(
        hostname: str, container: Iterable[tuple[str, str]], session: Mapping[str, str] | None, tty: bool
    ) -> dict[str, str]:
        """A command's whole environment: Kubernetes' defaults, then the
        container's, then the session's.  Never the server's own."""
        env = {"PATH": DEFAULT_PATH, "HOSTNAME": hostname}
        if tty:
            env["TERM"] = "xterm"
        env.update(container)
        env.update(session or {})
        return env

    def process(
        self,
        handle: ContainerHandle,
        argv: Sequence[str],
        sink: ProcessSink,
        env: Mapping[str, str] | None = None,
        tty: bool = False,
        size: WindowSize | None = None,
        user: str | None = None,
        workdir: str | None = None,
    ) -> ProcessSession:
        """Run C{argv} in the container, in all of its namespaces."""
        if not argv:
            raise ValueError("no command given")
        spec = {
            "mode": "exec",
            "target": [handle.init.pid, handle.init.started],
            "join": ALL_NAMESPACES,
            "argv": list(argv),
            "user": user if user is not None else handle.user,
            "workdir": workdir or handle.working_dir,
        }
        return self._launch(
            spec,
            sink,
            self.environment(handle.hostname, handle.env, env, tty),
            tty,
            size,
            f"{handle.path}: {' '.join(argv)}",
        )

    def container(
        self,
        sandbox: ProcessRef,
        argv: Sequence[str],
        sink: ProcessSink,
        env: Mapping[str, str],
        tty: bool = False,
        workdir: str | None = None,
        description: str = "",
    ) -> ProcessSession:
        """Start a container's main process: PID 1 of new pid and mount
        namespaces, in the pod sandbox's network, uts and ipc namespaces."""
        spec = {
            "mode": "run",
            "target": [sandbox.pid, sandbox.started],
            "join": ["ipc", "uts", "net"],
            "new": ["pid", "mnt"],
            "argv": list(argv),
            "workdir": workdir,
        }
        return self._launch(spec, sink, env, tty, None, description)

    def sandbox(self, hostname: str, sink: ProcessSink) -> ProcessSession:
        """Start a pod sandbox; it writes C{ready} on stdout once its
        namespaces exist."""
        spec = {"mode": "sandbox", "hostname": hostname}
        return self._launch(spec, sink, {}, False, None, f"sandbox {hostname}")

    def connect(
        self, handle: ContainerHandle, port: int, factory: IProtocolFactory, host: str = "localhost"
    ) -> Deferred[IProtocol]:
        """A TCP connection to C{host:port} inside the pod's network namespace."""
        return self._sockets.connect(handle, port, factory, host)

    def listen(
        self, handle: ContainerHandle, port: int, factory: IProtocolFactory, host: str = "127.0.0.1"
    ) -> Deferred[IListeningPort]:
        """A TCP listener on C{host:port} inside the pod's network namespace."""
        return self._sockets.listen(handle, port, factory, host)
