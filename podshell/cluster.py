"""The nodes a gateway routes to, seen as one: where each pod runs, and the
one interface every front door uses to start processes and open sockets.

A L{Node} is either the node agent in this process (the embedded default and
the node agent itself: an in-process hop to the spawner) or a node agent
across mutual TLS.  Front doors never ask which: they hold a L{Grant} and
call L{Cluster}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory, ITransport

from podshell.flow import Pausable
from podshell.node.process import ExitStatus, WindowSize
from podshell.target import ContainerNotRunning, NoSuchContainer, NoSuchPod, TargetError

if TYPE_CHECKING:
    from podshell.auth.audit import AuditedSession

DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
# Takes over an HTTP connection whose request asked for an upgrade.
Upgrade = Callable[[ITransport, bytes], IProtocol]


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


@dataclass(frozen=True)
class Grant:
    """What the gate hands a front door: where to go, and the audited
    session on whose behalf (the node agent is told who)."""

    handle: Placement
    session: AuditedSession


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
    problem: str | None  # why the node cannot be reached now, or None

    def pods(self) -> list[dict[str, Any]]:
        """Its pods as v1 Pod objects."""

    def container_names(self, namespace: str, pod: str) -> list[str] | None: ...

    def resolve(self, namespace: str, pod: str, container: str | None) -> Placement:
        """@raise TargetError: no such pod or container, or not running."""

    def process(
        self,
        grant: Grant,
        argv: Sequence[str],
        sink: Sink,
        env: Mapping[str, str] | None,
        tty: bool,
        size: WindowSize | None,
    ) -> Process: ...

    def attach(self, grant: Grant, sink: Sink) -> Process: ...

    def connect(self, grant: Grant, port: int, factory: IProtocolFactory, host: str) -> Deferred[IProtocol]: ...

    def listen(self, grant: Grant, port: int, factory: IProtocolFactory, host: str) -> Deferred[IListeningPort]: ...

    def upgrade(self, grant: Grant, target: str, headers: list[tuple[str, str]]) -> Upgrade | None:
        """Hand an upgrade request (path and query C{target}, the client's
        protocol headers) to the node agent; None: it is served here."""


class PodConflict(TargetError):
    def __init__(self, namespace: str, pod: str, nodes: list[str]) -> None:
        super().__init__(
            f"pod {namespace}/{pod} is reported by nodes {' and '.join(nodes)}: "
            "pod names must be unique in a namespace, ask an operator to remove one"
        )


class Cluster:
    """Every node, as one runtime (for the gate) and one spawner (for the
    front doors)."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = {node.name: node for node in nodes}

    def _home(self, namespace: str, pod: str) -> tuple[Node, list[str]] | None:
        found = [(n, c) for n in self.nodes.values() if (c := n.container_names(namespace, pod)) is not None]
        if len(found) > 1:
            raise PodConflict(namespace, pod, [n.name for n, _ in found])
        return found[0] if found else None

    def container_names(self, namespace: str, pod: str) -> list[str] | None:
        home = self._home(namespace, pod)
        return home[1] if home else None

    def resolve(self, namespace: str, pod: str, container: str | None = None) -> Placement:
        home = self._home(namespace, pod)
        if home is None:
            raise NoSuchPod(namespace, pod)
        return home[0].resolve(namespace, pod, container)

    def unreachable(self) -> list[str]:
        """Why some nodes' pods are not known now (a pod not found may be there)."""
        return [f"node {n.name} is unreachable ({n.problem})" for n in self.nodes.values() if n.problem]

    def pods(self, namespace: str | None = None) -> list[dict[str, Any]]:
        found = [p for node in self.nodes.values() for p in node.pods()]
        found = [p for p in found if namespace is None or p["metadata"]["namespace"] == namespace]
        return sorted(found, key=lambda p: (p["metadata"]["namespace"], p["metadata"]["name"]))

    def find(self, namespace: str, name: str) -> dict[str, Any] | None:
        home = self._home(namespace, name)
        if home is None:
            return None
        return next(
            p for p in home[0].pods() if p["metadata"]["namespace"] == namespace and p["metadata"]["name"] == name
        )

    def node(self, grant: Grant) -> Node:
        return self.nodes[grant.handle.node]

    def process(
        self,
        grant: Grant,
        argv: Sequence[str],
        sink: Sink,
        env: Mapping[str, str] | None = None,
        tty: bool = False,
        size: WindowSize | None = None,
    ) -> Process:
        return self.node(grant).process(grant, argv, sink, env, tty, size)

    def attach(self, grant: Grant, sink: Sink) -> Process:
        return self.node(grant).attach(grant, sink)

    def connect(
        self, grant: Grant, port: int, factory: IProtocolFactory, host: str = "localhost"
    ) -> Deferred[IProtocol]:
        return self.node(grant).connect(grant, port, factory, host)

    def listen(
        self, grant: Grant, port: int, factory: IProtocolFactory, host: str = "127.0.0.1"
    ) -> Deferred[IListeningPort]:
        return self.node(grant).listen(grant, port, factory, host)


def placement_in(pod: dict[str, Any], container: str | None, node: str) -> Placement:
    """Where C{container} (None: the default) of a v1 Pod object is, if it runs.

    @raise TargetError: no such container, or not running.
    """
    meta, spec = pod["metadata"], pod["spec"]
    namespace, name = meta["namespace"], meta["name"]
    names: list[str] = [str(c["name"]) for c in spec["containers"]]
    default = (meta.get("annotations") or {}).get(DEFAULT_CONTAINER)
    wanted: str = container or (default if default in names else names[0])
    if wanted not in names:
        raise NoSuchContainer(namespace, name, wanted, names)
    for status in pod.get("status", {}).get("containerStatuses") or []:
        if status.get("name") == wanted:
            state = status.get("state") or {}
            if "running" in state:
                return Placement(namespace, name, wanted, node)
            detail: dict[str, Any] = next(iter(state.values()), {}) if state else {}
            reason = str(detail.get("reason") or next(iter(state), "unknown"))
            raise ContainerNotRunning(namespace, name, wanted, reason)
    raise ContainerNotRunning(namespace, name, wanted, "no status yet")
