"""The nodes a gateway routes to, seen as one: where each pod runs (a pod
name is unique in its namespace across nodes), and the calls front doors
make, passed to the node that runs the pod."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory

from podshell.auth.recording import Recorder
from podshell.core.contracts import Grant, Node, Placement, Process, ProcessRequest, Sink
from podshell.core.target import NoSuchPod, TargetError


class PodConflict(TargetError):
    def __init__(self, namespace: str, pod: str, nodes: list[str]) -> None:
        super().__init__(
            f"pod {namespace}/{pod} is reported by nodes {' and '.join(nodes)}: "
            "pod names must be unique in a namespace, ask an operator to remove one"
        )


class Cluster:
    """Every node, as one runtime (for the gate) and one spawner (for the
    front doors).  With a L{Recorder} (a gateway's, or the embedded
    server's; never a node agent's), sessions are recorded here: once."""

    def __init__(
        self,
        nodes: Sequence[Node] | Mapping[str, Node],
        recorder: Recorder | None = None,
        problems: Callable[[], list[str]] | None = None,
    ) -> None:
        """@param nodes: a mapping is live: nodes come and go (a gateway's inventory).
        @param problems: why nodes may be missing (an API server not answering)."""
        self.nodes: Mapping[str, Node] = nodes if isinstance(nodes, Mapping) else {n.name: n for n in nodes}
        self.recorder = recorder
        self.problems = problems

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
        also = self.problems() if self.problems else []
        return also + [f"node {n.name} is unreachable ({n.problem})" for n in self.nodes.values() if n.problem]

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

    def process(self, grant: Grant, request: ProcessRequest, sink: Sink) -> Process:
        node = self.node(grant)
        if self.recorder is None:
            return node.process(grant, request, sink)
        return self.recorder.process(grant, request, sink, lambda tee: node.process(grant, request, tee))

    def attach(self, grant: Grant, sink: Sink) -> Process:
        node = self.node(grant)
        if self.recorder is None:
            return node.attach(grant, sink)
        return self.recorder.process(grant, None, sink, lambda tee: node.attach(grant, tee))

    def connect(
        self, grant: Grant, port: int, factory: IProtocolFactory, host: str = "localhost"
    ) -> Deferred[IProtocol]:
        node = self.node(grant)
        if self.recorder is None:
            return node.connect(grant, port, factory, host)
        return self.recorder.connect(grant, f"{host}:{port}", factory, lambda f: node.connect(grant, port, f, host))

    def listen(
        self, grant: Grant, port: int, factory: IProtocolFactory, host: str = "127.0.0.1"
    ) -> Deferred[IListeningPort]:
        node = self.node(grant)
        if self.recorder is None:
            return node.listen(grant, port, factory, host)
        return self.recorder.listen(grant, f"{host}:{port}", factory, lambda f: node.listen(grant, port, f, host))
