"""The node spawner: the one place where processes and sockets inside
containers are made.  SSH, the Kubernetes API and the CLI all come here.

A command in a container is forked by the server itself, born in the
container's pid namespace (the server points its children's pid namespace
there for the length of one fork), and enters the other namespaces before
anything else runs in it: no helper process stays beside it, so an exec
costs a fork, and an idle shell only the shell.  Pod sandboxes and
containers' main processes go through the L{nsexec} helper, which creates
namespaces.  Either way the process is handed back as a L{ProcessSession}:
write stdin, close it, resize the terminal, send signals, and receive
stdout, stderr and the exit status on a L{ProcessSink}.  The session is an
C{IPushProducer} of the process output, so a slow reader pauses the process
(its pipe fills, it blocks in write) instead of growing memory.

An argv naming one of podshell's own programs (L{BUILTINS}: the SFTP
server, legacy scp) takes the same path to the last step; there, instead
of exec'ing, the child runs that program, already the container's in
every way, so nothing of it needs to be in the image.
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
from signal import SIGHUP
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory, IPushProducer
from twisted.internet.main import CONNECTION_DONE
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from podshell.core.process import SCP_SERVER, SFTP_SERVER, TAR_SERVER, ExitStatus, WindowSize, signal_number
from podshell.core.twisted_private import ForkHooks, Process, PTYProcess, read_in_chunks_of
from podshell.node import confine, nsexec, scpserver, sftpserver, tarserver
from podshell.node.confine import Confinement
from podshell.node.netns import NetnsSockets
from podshell.node.runtime.base import ContainerHandle, ContainerNotRunning, ProcessRef

if TYPE_CHECKING:
    from podshell.node.nsexec import Spec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ALL_NAMESPACES = ["ipc", "uts", "net", "pid", "mnt"]
READ_SIZE = 65536
# What we read of a terminal once its command has exited: more than it holds,
# and a bound, for a job that keeps writing to it must not keep us reading.
DRAIN_LIMIT = 1 << 20


class ProcessSink(Protocol):
    """Where a session's output goes (an SSH channel, a WebSocket, a test)."""

    def outReceived(self, data: bytes) -> None: ...

    def errReceived(self, data: bytes) -> None: ...

    def processEnded(self, status: ExitStatus) -> None: ...


class _HelperProcess(Protocol):
    """What we use of Twisted's C{Process} and C{PTYProcess}; both have it,
    though C{IProcessTransport} does not promise all of it."""

    pid: int | None
    connected: int

    def write(self, data: bytes) -> None: ...

    def closeStdin(self) -> None: ...

    def fileno(self) -> int: ...

    def signalProcess(self, signalID: str | int) -> None: ...

    def connectionLost(self, reason: Failure) -> None: ...

    def registerProducer(self, producer: object, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


@implementer(IPushProducer)
class ProcessSession(ProcessProtocol):
    """One process in a container, as seen by a front door."""

    log = Logger()

    def __init__(self, reactor, sink: ProcessSink, tty: bool, description: str, direct: bool = False) -> None:
        self._reactor = reactor
        self.direct = direct  # the command itself, not a helper that relays signals
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

    def processExited(self, reason: Failure) -> None:
        """The command is gone, but a job it left in the background may hold
        the terminal open.  Like sshd, end the session anyway: take what the
        terminal still has (the last words before an C{exit}), then close it;
        the job runs on.  Pipes are another matter: sshd waits for their
        EOF, and so do we."""
        process = self.process
        if not self.tty or not process.connected:
            return
        fd, left = process.fileno(), DRAIN_LIMIT
        while left > 0:
            try:
                data = os.read(fd, READ_SIZE)
            except OSError:  # EAGAIN: nothing more; EIO: nobody holds the terminal
                break
            if not data:
                break
            left -= len(data)
            self.childDataReceived(1, data)
        # Now, not once written: input for a shell that is gone could wait
        # forever for a job that never reads it.
        process.unregisterProducer()
        process.connectionLost(Failure(CONNECTION_DONE))

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
        """Send a signal to the command; a hangup goes to its whole process
        group, as a terminal's does (a helper relays it the same way)."""
        number = signal_number(sig)
        pid = self.process.pid
        if self.direct and number == SIGHUP and pid is not None and self.status is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, number)
            return
        with contextlib.suppress(ProcessExitedAlready):
            self.process.signalProcess(number)

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


class _BornInContainer(ForkHooks):
    """What turns Twisted's C{Process} and C{PTYProcess} into a command in a
    container: the fork happens with the container's pid namespace for
    children, the child joins the container's other namespaces first thing,
    and then becomes the command (L{nsexec.become}) instead of exec'ing
    what Twisted was given.  (No posix_spawn: it cannot enter namespaces.)"""

    _spec: Spec
    _env: dict[str, str]
    _pidfd: int

    def around_fork(self, fork: Callable[[], None]) -> None:
        pid, started = self._spec["target"]
        self._pidfd = os.pidfd_open(pid)
        try:
            if nsexec.start_time(pid) != started:
                raise ProcessLookupError(f"process {pid} is gone")
            nsexec.setns(self._pidfd, nsexec.CLONE_NEWPID)
            try:
                super().around_fork(fork)
            finally:
                nsexec.setns(_own_pid_namespace(), nsexec.CLONE_NEWPID)
        finally:
            os.close(self._pidfd)

    def in_child(self) -> None:
        confinement: Confinement | None = self._spec.get("confinement")
        if confinement is not None:
            try:
                confinement.join_cgroups()  # while the host's cgroup filesystems are in view
            except OSError as e:  # said once stderr is the session's (L{nsexec.become})
                self._spec["refused"] = f"cannot take the container's cgroups and OOM score: {e}"
        try:
            nsexec.setns(self._pidfd, _JOINED_AFTER_FORK | (confinement.namespaces if confinement else 0))
        except OSError as e:
            os.write(2, f"podshell: cannot enter the container: {e}\n".encode())
            os._exit(126)
        super().in_child()

    def exec_child(self, path, uid, gid, executable, args, environment) -> None:
        builtin = self._spec.get("builtin")
        argv = self._spec["argv"]
        nsexec.become(self._spec, dict(self._env), (lambda env: BUILTINS[builtin](env, argv)) if builtin else None)


# podshell's own programs, which a child runs instead of exec'ing a binary
# of the image: by the name a front door asks for in argv[0], the entry
# point (called with the environment and argv once the child is the
# container's, see L{nsexec.become}).  Imported with this module, long
# before any child enters a container.
BUILTINS: dict[str, Callable[[dict[str, str], list[str]], int]] = {
    SFTP_SERVER: sftpserver.main,
    SCP_SERVER: scpserver.main,
    TAR_SERVER: tarserver.main,
}


class _OwnSession(ForkHooks):
    """A child without a terminal, in a session of its own, as a terminal's
    child is in Twisted's C{PTYProcess}: pods are not part of the server's
    job.  A Ctrl-C on the terminal of a foreground C{twistd} stops the
    server, which stops its pods as promised (SIGTERM, then SIGKILL),
    instead of reaching them as SIGINT first.  (No posix_spawn: it makes no
    session.)"""

    def in_child(self) -> None:
        os.setsid()
        super().in_child()


class _NsexecProcess(_OwnSession, Process):
    """The L{nsexec} helper of a sandbox or a container without a terminal."""


class _CommandProcess(_OwnSession, _BornInContainer, Process):
    def __init__(self, reactor, spec: Spec, env: dict[str, str], proto: ProcessProtocol) -> None:
        self._spec, self._env = spec, env
        Process.__init__(self, reactor, sys.executable, [sys.executable], {}, None, proto)


class _CommandPTYProcess(_BornInContainer, PTYProcess):
    def __init__(self, reactor, spec: Spec, env: dict[str, str], proto: ProcessProtocol, pty: tuple) -> None:
        self._spec, self._env = spec, env
        PTYProcess.__init__(self, reactor, sys.executable, [sys.executable], {}, None, proto, usePTY=pty)


_JOINED_AFTER_FORK = nsexec.CLONE_NEWIPC | nsexec.CLONE_NEWUTS | nsexec.CLONE_NEWNET | nsexec.CLONE_NEWNS
_PID_NAMESPACE: list[int] = []


def _own_pid_namespace() -> int:
    """A descriptor of the server's own pid namespace, to return to."""
    if not _PID_NAMESPACE:
        _PID_NAMESPACE.append(os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC))
    return _PID_NAMESPACE[0]


class Spawner:
    """Starts processes and opens sockets inside containers."""

    log = Logger()

    def __init__(self, reactor, python: str = sys.executable) -> None:
        self._reactor = reactor
        self._python = python
        self._sockets = NetnsSockets(reactor)

    def _launch(
        self,
        spec: Spec,
        sink: ProcessSink,
        env: Mapping[str, str],
        tty: bool,
        size: WindowSize | None,
        description: str,
    ) -> ProcessSession:
        spec = {**spec, "parent": os.getpid(), "tty": tty}
        direct = spec["mode"] == "exec"
        session = ProcessSession(self._reactor, sink, tty, description, direct)
        usePTY: tuple | bool = False
        if tty:
            master, slave = pty.openpty()
            fcntl.ioctl(master, termios.TIOCSWINSZ, (size or WindowSize(24, 80)).pack())
            usePTY = (master, slave, os.ttyname(slave))
        process: Any
        try:
            if direct and isinstance(usePTY, tuple):
                process = _CommandPTYProcess(self._reactor, spec, dict(env), session, usePTY)
            elif direct:
                process = _CommandProcess(self._reactor, spec, dict(env), session)
        except ProcessLookupError:
            if isinstance(usePTY, tuple):
                os.close(usePTY[0])
                with contextlib.suppress(OSError):
                    os.close(usePTY[1])
            raise
        if not direct:
            argv = [self._python, "-I", "-S", nsexec.__file__, json.dumps(spec)]
            if isinstance(usePTY, tuple):  # its own session already: the terminal's
                process = PTYProcess(self._reactor, self._python, argv, dict(env), None, session, usePTY=usePTY)
            else:
                process = _NsexecProcess(self._reactor, self._python, argv, dict(env), None, session)
        # Each chunk becomes an SSH packet or a WebSocket frame downstream:
        # 64 KiB reads are a quarter of the per-chunk work of Twisted's 8 KiB.
        read_in_chunks_of(READ_SIZE, process)
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
        """Run C{argv} in the container, in all of its namespaces.

        @raise ContainerNotRunning: it stopped since C{handle} was made.
        """
        if not argv:
            raise ValueError("no command given")
        if argv[0] in BUILTINS:
            tty = False  # a server on a byte stream, whatever terminal was asked for
        spec: Spec = {
            "mode": "exec",
            "target": [handle.init.pid, handle.init.started],
            "join": ALL_NAMESPACES,
            "argv": list(argv),
            "user": user if user is not None else handle.user,
            "workdir": workdir or handle.working_dir,
        }
        if argv[0] in BUILTINS:
            spec["builtin"] = argv[0]
        try:
            environment = self.environment(handle.hostname, handle.env, env, tty)
            if handle.runtime_spec is not None:
                spec["run_as"] = user  # the spec's user unless another is asked for
                try:
                    spec["confinement"] = confined = confine.prepare(handle.runtime_spec, handle.init.pid, workdir)
                    environment = confined.environment(env, tty)
                except confine.ConfinementError as e:  # the exec fails, as one that cannot start does
                    spec["refused"] = f"cannot confine the command as its container is: {e}"
            return self._launch(spec, sink, environment, tty, size, f"{handle.path}: {' '.join(argv)}")
        except ProcessLookupError:
            raise ContainerNotRunning(handle.namespace, handle.pod, handle.container, "it stopped") from None

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
        spec: Spec = {
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
        spec: Spec = {"mode": "sandbox", "hostname": hostname}
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
