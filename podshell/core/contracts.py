"""The contracts between layers: a placement and the grant to use it, a
process and where its output goes, a L{Node} (what a runtime's node offers),
and L{Nodes} (the nodes as one, as front doors and adapters see them).

A L{Node} is either the node agent in this process (the embedded default and
the node agent itself: an in-process hop to the spawner) or a node agent
across mutual TLS.  Front doors never ask which: they hold a L{Grant} and
call L{Nodes} (L{podshell.gateway.routing.Cluster}).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory, ITransport

from podshell.core.flow import Pausable
from podshell.core.logs import LogSource, Options
from podshell.core.process import ExitStatus, WindowSize

DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
# Takes over an HTTP connection whose request asked for an upgrade.
Upgrade = Callable[[ITransport, bytes], IProtocol]


@dataclass(frozen=True)
class ProcessRequest:
    """A command to run in a granted container, as every front door asks
    for it and every node hop carries it."""

    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)  # the session's accepted variables
    tty: bool = False
    size: WindowSize | None = None  # the terminal's, with C{tty}

    def __post_init__(self) -> None:
        if not self.argv:
            raise ValueError("no command given")


@dataclass(frozen=True)
class Placement:
    """A container and the node that runs it."""

    namespace: str
    pod: str
    container: str
    node: str

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"


class Person(Protocol):
    """Who a session is for (L{podshell.auth.identity.Identity})."""

    @property
    def name(self) -> str: ...

    @property
    def groups(self) -> frozenset[str]: ...


class Asked(Protocol):
    """What was asked, by whom, from where (L{podshell.auth.audit.Request})."""

    @property
    def identity(self) -> Person | None: ...

    @property
    def peer(self) -> str: ...


class Door(Protocol):
    """How a front door serves one live session, for the registry of live
    sessions (L{podshell.auth.live}): what it moved, and how to end it."""

    def moved(self) -> tuple[int, int]:
        """Bytes so far: into the pod, out of it."""
        ...

    def tell(self, line: str) -> None:
        """Show C{line} on the session's terminal; nothing if it has none."""

    def stop(self, line: str, status: str) -> None:
        """End the session now: C{line} to its user (on a terminal or
        stderr, where the front door has one), C{status} in the audit log."""


class Session(Protocol):
    """An audited session (L{podshell.auth.audit.AuditedSession})."""

    @property
    def id(self) -> str: ...

    @property
    def request(self) -> Asked: ...

    def note(self, **fields: Any) -> None:
        """More for the session's end record (its recording's digest)."""

    def on_end(self, callback: Callable[[], None]) -> None:
        """Call C{callback} as the session ends, before its end is recorded."""

    def serve(self, door: Door) -> None:
        """The front door says how to end the session and what it moved."""

    def end(self, status: str, bytes_in: int = 0, bytes_out: int = 0) -> None: ...


class RecordMode(StrEnum):
    """Whether a policy rule records its sessions, and what a failure to record does."""

    OFF = "off"
    BEST_EFFORT = "best-effort"  # the session goes on; the failure is audited and counted
    REQUIRED = "required"  # no recording, no session


@dataclass(frozen=True)
class Grant:
    """What the gate hands a front door: where to go, and the audited
    session on whose behalf (the node agent is told who)."""

    handle: Placement
    session: Session
    run_as: str | None = None  # the container user the policy allowed, if not the container's own
    record: RecordMode = RecordMode.OFF
    record_input: bool = False  # a terminal's input too (typed passwords are in it)


class Sink(Protocol):
    """Where a process's output goes (an SSH channel, a WebSocket, a test)."""

    def outReceived(self, data: bytes) -> None: ...

    def errReceived(self, data: bytes) -> None: ...

    def processEnded(self, status: ExitStatus) -> None: ...


class Process(Protocol):
    """A running command or an attachment, local or on another node.  It is
    an IPushProducer of its output; stdin is flow-controlled by
    registering a producer with it."""

    bytes_in: int
    bytes_out: int

    @property
    def status(self) -> ExitStatus | None: ...

    def write(self, data: bytes) -> None: ...

    def closeStdin(self) -> None: ...

    def resize(self, size: WindowSize) -> None: ...

    def signal(self, sig: str | int) -> None:
        """@raise ValueError: not a signal."""

    def hangup(self) -> object: ...

    def registerProducer(self, producer: Pausable, streaming: bool) -> None: ...

    def unregisterProducer(self) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...

    def stopProducing(self) -> None: ...


class Node(Protocol):
    name: str

    @property
    def problem(self) -> str | None:
        """Why the node (or its runtime) cannot be reached now, or None."""

    def pods(self) -> list[dict[str, Any]]:
        """Its pods as v1 Pod objects."""

    def container_names(self, namespace: str, pod: str) -> list[str] | None: ...

    def resolve(self, namespace: str, pod: str, container: str | None) -> Placement:
        """@raise TargetError: no such pod or container, or not running."""

    def process(self, grant: Grant, request: ProcessRequest, sink: Sink) -> Process: ...

    def attach(self, grant: Grant, sink: Sink) -> Process: ...

    def connect(self, grant: Grant, port: int, factory: IProtocolFactory, host: str) -> Deferred[IProtocol]: ...

    def listen(self, grant: Grant, port: int, factory: IProtocolFactory, host: str) -> Deferred[IListeningPort]: ...

    def upgrade(self, grant: Grant, target: str, headers: list[tuple[str, str]]) -> Upgrade | None:
        """Hand an upgrade request (path and query C{target}, the client's
        protocol headers) to the node agent; None: it is served here."""

    def logs(self, grant: Grant, previous: bool, options: Options) -> LogSource:
        """The log of the granted container's current run (or the one before),
        for a node that serves it here (L{upgrade} returned None).

        @raise TargetError: no such pod, container or run (L{LogsUnavailable}).
        """


class Nodes(Protocol):
    """The nodes as one, as the front doors and the API adapters use them."""

    @property
    def nodes(self) -> Mapping[str, Node]: ...

    def container_names(self, namespace: str, pod: str) -> list[str] | None: ...

    def resolve(self, namespace: str, pod: str, container: str | None = None) -> Placement: ...

    def unreachable(self) -> list[str]: ...

    def pods(self, namespace: str | None = None) -> list[dict[str, Any]]: ...

    def find(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    def node(self, grant: Grant) -> Node: ...

    def process(self, grant: Grant, request: ProcessRequest, sink: Sink) -> Process: ...

    def attach(self, grant: Grant, sink: Sink) -> Process: ...

    def connect(
        self, grant: Grant, port: int, factory: IProtocolFactory, host: str = "localhost"
    ) -> Deferred[IProtocol]: ...

    def listen(
        self, grant: Grant, port: int, factory: IProtocolFactory, host: str = "127.0.0.1"
    ) -> Deferred[IListeningPort]: ...
