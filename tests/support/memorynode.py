"""A node in memory, for the adapter tests: pods as data, and processes that
behave like ``cat``.  Real enough for the gate and the front doors to run on
it (the names, the errors, flow control both ways) without root or pods."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory, IPushProducer, IReactorTime
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from podshell.core.addresses import PortRefused
from podshell.core.contracts import Grant, Placement, ProcessRequest, Sink
from podshell.core.flow import Pausable
from podshell.core.process import ExitStatus, WindowSize, signal_name, signal_number
from podshell.core.target import ContainerNotRunning, NoSuchContainer, NoSuchPod

# What a pipe holds before its writer blocks (Linux's default pipe size).
PIPE_SIZE = 64 * 1024


@implementer(IPushProducer)
class CatProcess:
    """``cat`` as seen through the Process contract: stdin comes back on
    stdout, EOF ends it with 0, a signal ends it with that signal.  Output
    waits while paused, and once a pipe's worth waits it stops reading stdin
    (pauses the producer registered with it), as a blocked ``cat`` does."""

    def __init__(
        self, clock: IReactorTime, sink: Sink, argv: Sequence[str], env: Mapping[str, str] | None, tty: bool
    ) -> None:
        self.clock = clock
        self.sink = sink
        self.argv = list(argv)
        self.env = dict(env or {})
        self.tty = tty
        self.sizes: list[WindowSize] = []
        self.bytes_in = 0
        self.bytes_out = 0
        self.status: ExitStatus | None = None
        self.paused = False
        self.producer: Pausable | None = None
        self.readingPaused = False
        self._pending = bytearray()
        self._eof = False
        self._ending: ExitStatus | None = None

    def write(self, data: bytes) -> None:
        if self._ending is not None:
            return
        self.bytes_in += len(data)
        self._pending += data
        self._flush()

    def closeStdin(self) -> None:
        self._eof = True
        self._flush()

    def _flush(self) -> None:
        if not self.paused and self._pending and self._ending is None:
            data = bytes(self._pending)
            self._pending.clear()
            self.bytes_out += len(data)
            self.sink.outReceived(data)
        if self.producer is not None:
            full = len(self._pending) >= PIPE_SIZE
            if full and not self.readingPaused:
                self.readingPaused = True
                self.producer.pauseProducing()
            elif not full and self.readingPaused:
                self.readingPaused = False
                self.producer.resumeProducing()
        if self._eof and not self._pending and not self.paused:
            self._end(ExitStatus(code=0))

    def _end(self, status: ExitStatus) -> None:
        """The end is known later, as a real child's is (when it is reaped)."""
        if self._ending is None:
            self._ending = status
            self.clock.callLater(0, self._reaped, status)

    def _reaped(self, status: ExitStatus) -> None:
        self.status = status
        self.sink.processEnded(status)

    def resize(self, size: WindowSize) -> None:
        self.sizes.append(size)

    def signal(self, sig: str | int) -> None:
        self._end(ExitStatus(signal=signal_name(signal_number(sig))))

    def hangup(self) -> None:
        self.signal("HUP")

    def registerProducer(self, producer: Pausable, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._flush()

    def stopProducing(self) -> None:
        self.hangup()


@dataclass
class MemoryPod:
    namespace: str
    name: str
    # Each container's state: "Running", or why it is not (as the runtime says it).
    containers: dict[str, str]
    listening: set[int] = field(default_factory=set)  # ports something in the pod listens on


class PodSocket(StringTransport):
    """The pod's end of a forwarded connection: what is written into the pod
    is in C{value()}; the test plays the program in the pod by calling the
    protocol (C{dataReceived}, C{readConnectionLost}) of the connection."""

    writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True

    def unregisterProducer(self) -> None:  # as Twisted's TCP transport: harmless without one
        self.producer = None


@implementer(IListeningPort)
class PodListener:
    """A listening socket in the pod (``ssh -R``): the test plays a program
    in the pod connecting to it with L{dial}."""

    def __init__(self, factory: IProtocolFactory, host: str, port: int) -> None:
        self.factory = factory
        self.address = IPv4Address("TCP", host, port)
        self.listening = True

    def dial(self) -> tuple[IProtocol, PodSocket]:
        assert self.listening, "nobody listens any more"
        protocol = self.factory.buildProtocol(self.address)
        assert protocol is not None
        socket = PodSocket(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
        protocol.makeConnection(socket)
        return protocol, socket

    def getHost(self) -> IPv4Address:
        return self.address

    def startListening(self) -> None:
        self.listening = True

    def stopListening(self) -> None:
        self.listening = False


@dataclass
class MemoryNode:
    """The part of the Node contract that finding a container, running a
    command and connecting to a port use (its streams are served in this
    process: no upgrade); every process and connection it made is kept, for the tests to look at.
    Processes end when C{clock} is advanced."""

    name: str
    pods_here: list[MemoryPod]
    problem: str | None = None
    clock: Clock = field(default_factory=Clock)
    processes: list[CatProcess] = field(default_factory=list)
    sockets: list[tuple[IProtocol, PodSocket]] = field(default_factory=list)
    listeners: list[PodListener] = field(default_factory=list)

    def _pod(self, namespace: str, pod: str) -> MemoryPod | None:
        return next((p for p in self.pods_here if (p.namespace, p.name) == (namespace, pod)), None)

    def container_names(self, namespace: str, pod: str) -> list[str] | None:
        found = self._pod(namespace, pod)
        return list(found.containers) if found else None

    def resolve(self, namespace: str, pod: str, container: str | None) -> Placement:
        found = self._pod(namespace, pod)
        if found is None:
            raise NoSuchPod(namespace, pod)
        name = container or next(iter(found.containers))
        if name not in found.containers:
            raise NoSuchContainer(namespace, pod, name, list(found.containers))
        if found.containers[name] != "Running":
            raise ContainerNotRunning(namespace, pod, name, found.containers[name])
        return Placement(namespace, pod, name, self.name)

    def upgrade(self, grant: Grant, target: str, headers: list[tuple[str, str]]) -> None:
        return None

    def process(self, grant: Grant, request: ProcessRequest, sink: Sink) -> CatProcess:
        where = grant.handle
        self.resolve(where.namespace, where.pod, where.container)  # it may have stopped since the grant
        process = CatProcess(self.clock, sink, list(request.argv), request.env, request.tty)
        if request.size is not None:
            process.resize(request.size)
        self.processes.append(process)
        return process

    def connect(self, grant: Grant, port: int, factory: IProtocolFactory, host: str) -> Deferred[IProtocol]:
        where = grant.handle
        pod = self._pod(where.namespace, where.pod)
        if pod is None or port not in pod.listening:
            return fail(PortRefused(f"nothing listens on {host}:{port} in pod {where.namespace}/{where.pod}"))
        protocol = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert protocol is not None
        socket = PodSocket()
        protocol.makeConnection(socket)
        self.sockets.append((protocol, socket))
        return succeed(protocol)

    def listen(self, grant: Grant, port: int, factory: IProtocolFactory, host: str) -> Deferred[IListeningPort]:
        listener = PodListener(factory, host, port or 40000 + len(self.listeners))
        self.listeners.append(listener)
        return succeed(listener)
