"""Where pods run and where each node's agent is, from the API server.

Two informers: every pod (or those a selector picks) for its node,
containers and their states; and the node agents' own pods (the
DaemonSet's selector) for each node's agent address.  Each node becomes a
L{RemoteNode} whose pods are the API server's, not polled from the agent,
so a pod the API server reports running is reachable at the next event.

A pod is kept slim: a gateway of a large cluster holds every pod, and
needs of each only what routing and C{kubectl get pods} show.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from podshell.core.contracts import DEFAULT_CONTAINER
from podshell.core.metrics import Metrics
from podshell.gateway.kubernetes.client import APIServer
from podshell.gateway.kubernetes.informer import Changes, Informer
from podshell.gateway.nodes import RemoteNode
from podshell.pki.mutual import ClusterIdentity

log = Logger()

Pod = dict[str, Any]


def slim(pod: Pod) -> Pod | None:
    """What a gateway keeps of a pod: None for one not on a node yet."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    if not spec.get("nodeName"):
        return None
    annotations = meta.get("annotations") or {}
    kept_meta = {k: meta[k] for k in ("name", "namespace", "uid", "labels", "creationTimestamp") if meta.get(k)}
    if DEFAULT_CONTAINER in annotations:
        kept_meta["annotations"] = {DEFAULT_CONTAINER: annotations[DEFAULT_CONTAINER]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": kept_meta,
        "spec": {"nodeName": spec["nodeName"], "containers": [_container(c) for c in spec.get("containers") or []]},
        "status": {
            **{k: status[k] for k in ("phase", "podIP", "hostIP", "startTime") if status.get(k)},
            "containerStatuses": [_container_status(c) for c in status.get("containerStatuses") or []],
        },
    }


def _container(c: dict[str, Any]) -> dict[str, Any]:
    return {k: c[k] for k in ("name", "image") if k in c}


def _container_status(c: dict[str, Any]) -> dict[str, Any]:
    return {k: c[k] for k in ("name", "ready", "restartCount", "state", "image") if k in c}


def agent_address(pod: Pod) -> tuple[str, str] | None:
    """(node, address) of a node agent's pod that is ready; None otherwise."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    address = status.get("podIP") or status.get("hostIP")
    if not ready or not spec.get("nodeName") or not address or (pod.get("metadata") or {}).get("deletionTimestamp"):
        return None
    return str(spec["nodeName"]), str(address)


class KubernetesInventory(Service):
    """The cluster's nodes as the gateway routes to them: C{nodes} is live."""

    def __init__(
        self,
        reactor: Any,
        api: APIServer,
        identity: ClusterIdentity,
        agents_namespace: str,
        agents_selector: str,
        agent_port: int,
        pod_selector: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        self.reactor = reactor
        self.identity = identity
        self.agent_port = agent_port
        self.metrics = metrics
        self.nodes: dict[str, RemoteNode] = {}
        self.pods = Informer(reactor, api, "/api/v1/pods", slim, self._pods_changed, pod_selector, "pods")
        self.agents = Informer(
            reactor,
            api,
            f"/api/v1/namespaces/{agents_namespace}/pods",
            agent_address,
            self._agents_changed,
            agents_selector,
            "node agents",
        )
        self._where = f"pods in namespace {agents_namespace} labelled {agents_selector}"

    def startService(self) -> None:
        super().startService()
        self.pods.start()
        self.agents.start()

    def stopService(self) -> Deferred[None] | None:
        self.pods.stop()
        self.agents.stop()
        return super().stopService()

    def synced(self) -> Deferred[Any]:
        """Fires when both lists are in."""
        return DeferredList([self.pods.synced, self.agents.synced])

    def unreachable(self) -> list[str]:
        return [p for p in (self.pods.problem, self.agents.problem) if p]

    @property
    def problem(self) -> str | None:
        """Why the cluster's pods are not known now (for readiness)."""
        return "; ".join(self.unreachable()) or None

    def _node(self, name: str) -> RemoteNode:
        node = self.nodes.get(name)
        if node is None:
            node = self.nodes[name] = RemoteNode(
                self.reactor, name, None, self.agent_port, self.identity, 0, self.metrics
            )
            self._place(node)
        return node

    def _place(self, node: RemoteNode) -> None:
        """Where C{node}'s agent is, from the agent pods now known."""
        found = sorted(a for n, a in self.agents.objects.values() if n == node.name)
        address = found[0] if found else None
        problem = None if address else f"no node agent is ready on node {node.name} ({self._where})"
        if (address, problem) != (node.host, node.problem):
            node.move(address, self.agent_port, problem)
            log.info("node {node}: {news}", node=node.name, news=f"agent at {node.address}" if address else problem)

    def _pods_changed(self, changes: Changes[Pod]) -> None:
        touched = set()
        for key, old, new in changes.each:
            if old is not None:
                touched.add(old["spec"]["nodeName"])
                self._node(old["spec"]["nodeName"]).known.pop(key, None)
            if new is not None:
                touched.add(new["spec"]["nodeName"])
                self._node(new["spec"]["nodeName"]).known[key] = new
        self._forget_empty(touched)

    def _agents_changed(self, changes: Changes[tuple[str, str]]) -> None:
        touched = {v[0] for _, old, new in changes.each for v in (old, new) if v is not None}
        for name in touched:
            self._place(self._node(name))
        self._forget_empty(touched)

    def _forget_empty(self, names: set[str]) -> None:
        """A node with no pods and no agent is gone from the cluster."""
        for name in names:
            node = self.nodes.get(name)
            if node is not None and not node.known and node.host is None:
                del self.nodes[name]

    def __repr__(self) -> str:
        return f"<KubernetesInventory {len(self.nodes)} nodes, {len(self.pods.objects)} pods>"
