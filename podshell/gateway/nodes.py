"""A node agent as a gateway sees it: the pods it reports, and streams to it.

The gateway lists each node's pods every few seconds (a node that does not
answer has its pods withdrawn until it does), and opens one mutual-TLS
connection per stream, on behalf of the person the gateway let in.  Kube
API streams are spliced: the client's own upgrade, cleaned of credentials,
goes to the node, and bytes flow untouched both ways.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import quote, urlencode

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from zope.interface import implementer

from podshell.core.addresses import ip_of, join, set_keepalive, set_no_delay
from podshell.core.contracts import DEFAULT_CONTAINER, Grant, Placement, Process, ProcessRequest, Sink, Upgrade
from podshell.core.logs import LogSource, Options
from podshell.core.metrics import Metrics
from podshell.core.target import ContainerNotRunning, LogsUnavailable, NoSuchContainer, NoSuchPod
from podshell.gateway.node_streams import NodeApp, NodeError, NodeWebSocket, RemotePort, RemoteProcess
from podshell.kube import objects
from podshell.pki.mutual import ClusterIdentity, NodeClientTLS
from podshell.protocols import remotecommand as rc

log = Logger()
CONNECT_TIMEOUT = 5.0


class RemoteNode:
    """One node agent: its pods (L{refresh} keeps them current) and streams to it."""

    def __init__(
        self,
        reactor,
        name: str,
        host: str | None,
        port: int,
        identity: ClusterIdentity,
        refresh: float,
        metrics: Metrics | None = None,
    ) -> None:
        self.reactor = reactor
        self.metrics = metrics
        self.name = name
        self.identity = identity
        self.refresh_every = refresh
        self.known: dict[tuple[str, str], dict[str, Any]] = {}  # its pods, by namespace and name
        self.move(host, port, "not contacted yet")
        self._agent = Agent.usingEndpointFactory(
            reactor, _QuietEndpoints(self), HTTPConnectionPool(reactor, persistent=True)
        )

    # Reaching it.
    def move(self, host: str | None, port: int, problem: str | None = None) -> None:
        """The agent is at C{host} now (None: there is none), with C{problem}
        (None: reachable, as far as we know)."""
        self.host, self.port = host, port
        self.address = join(host, port) if host is not None else "(no address)"
        self.tls = NodeClientTLS(self.identity, self.name, host or "")
        self.problem: str | None = problem

    def endpointForURI(self, uri: object = None) -> IStreamClientEndpoint:
        if self.host is None:
            return _Nowhere(self.reactor, NodeError(self.problem or f"node {self.name} has no node agent"))
        tcp = HostnameEndpoint(self.reactor, self.host, self.port, timeout=CONNECT_TIMEOUT)
        return wrapClientTLS(self.tls, tcp)

    def why(self, failure: Failure) -> str:
        """What to tell a user whose stream to this node failed."""
        if self.host is None:
            return failure.getErrorMessage()
        if self.tls.problem:
            return f"node {self.name} at {self.address} is not trusted: {self.tls.problem}"
        return f"cannot reach node {self.name} at {self.address}: {failure.getErrorMessage()}"

    # The pod list.
    def refresh(self) -> Deferred[None]:
        url = f"https://{self.address}/api/v1/pods".encode()
        asked = time.monotonic()
        d = self._agent.request(b"GET", url, Headers({b"accept": [b"application/json"]}))
        d.addCallback(self._read)
        d.addTimeout(max(CONNECT_TIMEOUT, self.refresh_every), self.reactor)
        return d.addCallbacks(self._listed, self._unreachable, callbackArgs=(asked,))

    def _read(self, response: Any) -> Deferred[bytes]:
        if response.code != 200:
            raise NodeError(f"pod list answered HTTP {response.code}")
        return readBody(response)

    def _listed(self, body: bytes, asked: float | None = None) -> None:
        if self.metrics is not None and asked is not None:
            self.metrics.pods_listed(self.name, time.monotonic() - asked)
        items = json.loads(body)["items"]
        self.known = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in items}
        if self.problem is not None:
            log.info("node {node} at {address}: {n} pods", node=self.name, address=self.address, n=len(items))
        self.problem = None

    def _unreachable(self, failure: Failure) -> None:
        problem = self.why(failure)
        if problem != self.problem:
            log.warn("{problem}; its pods are withdrawn until it answers", problem=problem)
        self.problem = problem
        self.known = {}

    def pods(self) -> list[dict[str, Any]]:
        return list(self.known.values())

    def container_names(self, namespace: str, pod: str) -> list[str] | None:
        found = self.known.get((namespace, pod))
        return [c["name"] for c in found["spec"]["containers"]] if found else None

    def resolve(self, namespace: str, pod: str, container: str | None) -> Placement:
        found = self.known.get((namespace, pod))
        if found is None:
            raise NoSuchPod(namespace, pod)
        return placement_in(found, container, self.name)

    # Streams.
    def _behalf(self, grant: Grant) -> list[tuple[str, str]]:
        request = grant.session.request
        assert request.identity is not None
        groups = [("Impersonate-Group", g) for g in sorted(request.identity.groups)]
        return [("Impersonate-User", request.identity.name), *groups, ("X-Forwarded-For", ip_of(request.peer))]

    def _open(self, grant: Grant, sub: str, query: list[tuple[str, str]], protocol: str, app: NodeApp) -> None:
        where = grant.handle
        target = f"/api/v1/namespaces/{quote(where.namespace)}/pods/{quote(where.pod)}/{sub}?{urlencode(query)}"
        ws = NodeWebSocket(self.reactor, self.address, target, protocol, self._behalf(grant), app)
        ws.why_lost = self.why
        self.endpointForURI().connect(_Once(ws)).addErrback(lambda f: ws.fail(self.why(f)))

    def process(self, grant: Grant, request: ProcessRequest, sink: Sink) -> Process:
        query = [("container", grant.handle.container), *(("command", a) for a in request.argv)]
        query += [("stdin", "1"), ("stdout", "1"), ("tty", "1") if request.tty else ("stderr", "1")]
        query += [("env", f"{k}={v}") for k, v in request.env.items()]
        query += [("user", grant.run_as)] if grant.run_as is not None else []
        process = RemoteProcess(sink, request.tty, self.name)
        self._open(grant, "exec", query, rc.PROCESS, process)
        if request.tty and request.size is not None:
            process.resize(request.size)
        return process

    def attach(self, grant: Grant, sink: Sink) -> Process:
        query = [("container", grant.handle.container), ("stdin", "1"), ("stdout", "1"), ("stderr", "1")]
        process = RemoteProcess(sink, False, self.name)
        self._open(grant, "attach", query, rc.V5, process)
        return process

    def connect(self, grant: Grant, port: int, factory: IProtocolFactory, host: str) -> Deferred[IProtocol]:
        remote = RemotePort(factory)
        self._open(grant, "portforward", [("ports", str(port))], rc.PORT, remote)
        return remote.connected

    def listen(self, grant: Grant, port: int, factory: IProtocolFactory, host: str) -> Deferred[IListeningPort]:
        return fail(
            NodeError(
                f"listening in pods on other nodes (ssh -R) is not supported: {grant.handle.pod} runs on {self.name}"
            )
        )

    def upgrade(self, grant: Grant, target: str, headers: list[tuple[str, str]]) -> Upgrade:
        lines = [f"GET {target} HTTP/1.1", f"Host: {self.address}"]
        lines += [f"{k}: {v}" for k, v in [*headers, *self._behalf(grant)]]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", errors="replace")

        def switch(transport: ITransport, trailing: bytes) -> IProtocol:
            client = _SpliceClient(self, grant, head + trailing)
            client.makeConnection(transport)
            return client

        return switch

    def logs(self, grant: Grant, previous: bool, options: Options) -> LogSource:
        """Never called: L{upgrade} splices pods/log to the node agent, which reads its files."""
        raise LogsUnavailable(f"the logs of {grant.handle.path} are read on node {self.name}")


class _Once(Factory):
    """The factory of one outgoing connection, quiet in the log."""

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_ = protocol

    def buildProtocol(self, addr: object) -> Protocol:
        return self.protocol_


class _QuietEndpoints:
    """The agent's way to the node (C{IAgentEndpointFactory}): pod listings
    every few seconds, without two log lines each from the factory of each
    new pooled connection."""

    def __init__(self, node: RemoteNode) -> None:
        self.node = node

    def endpointForURI(self, uri: object) -> IStreamClientEndpoint:
        return _QuietEndpoint(self.node.endpointForURI(uri))


@implementer(IStreamClientEndpoint)
class _Nowhere:
    """The way to a node with no agent: it fails, saying so, on the next
    turn of the reactor, as a refused connection would: the stream's
    session is wired up by then, and ends with the reason."""

    def __init__(self, reactor: IReactorTime, error: NodeError) -> None:
        self.reactor = reactor
        self.error = error

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred:
        d: Deferred = Deferred()
        self.reactor.callLater(0, d.errback, Failure(self.error))
        return d


@implementer(IStreamClientEndpoint)
class _QuietEndpoint:
    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self.endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred:
        if isinstance(protocolFactory, Factory):
            protocolFactory.noisy = False
        return self.endpoint.connect(protocolFactory)


class _SpliceClient(Protocol):
    """The client's side of a spliced stream."""

    def __init__(self, node: RemoteNode, grant: Grant, head: bytes) -> None:
        self.node = node
        self.grant = grant
        self.pending = [head]
        self.peer: _SpliceNode | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.gone = False

    def connectionMade(self) -> None:
        self.transport.pauseProducing()  # type: ignore[union-attr]  # until the node answers
        d = self.node.endpointForURI().connect(_Once(_SpliceNode(self)))
        d.addErrback(self._unreachable)
        self.grant.session.serve(self)

    # Door: spliced bytes are opaque here; ending it closes both connections.
    def moved(self) -> tuple[int, int]:
        return self.bytes_in, self.bytes_out

    def tell(self, line: str) -> None:
        """No line can be put into a spliced stream."""

    def stop(self, line: str, status: str) -> None:
        self.grant.session.end(status, self.bytes_in, self.bytes_out)
        if self.transport is not None:
            self.transport.loseConnection()

    def _unreachable(self, failure: Failure) -> None:
        message = self.node.why(failure)
        body = json.dumps(objects.status(503, "ServiceUnavailable", message)).encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        ).encode()
        if self.transport is not None and not self.gone:
            self.transport.write(head + body)
            self.transport.loseConnection()
        self.grant.session.end(f"failed: {message}")

    def dataReceived(self, data: bytes) -> None:
        self.bytes_in += len(data)
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.pending.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.unregisterProducer()  # type: ignore[attr-defined]
            self.peer.transport.loseConnection()
        self.grant.session.end("closed", self.bytes_in, self.bytes_out)


class _SpliceNode(Protocol):
    """The node agent's side of a spliced stream."""

    def __init__(self, client: _SpliceClient) -> None:
        self.client = client

    def connectionMade(self) -> None:
        client = self.client
        assert self.transport is not None and client.transport is not None
        if client.gone:
            self.transport.loseConnection()
            return
        set_no_delay(self.transport)
        set_keepalive(self.transport)
        client.peer = self
        self.transport.write(b"".join(client.pending))
        client.pending = []
        client.transport.registerProducer(self.transport, True)  # type: ignore[attr-defined]
        self.transport.registerProducer(client.transport, True)  # type: ignore[attr-defined]
        client.transport.resumeProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        self.client.bytes_out += len(data)
        assert self.client.transport is not None
        self.client.transport.write(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.client.bytes_out == 0:  # refused in the handshake, or gone before answering
            self.client._unreachable(reason)
            return
        client = self.client.transport
        if client is not None and not self.client.gone:
            client.unregisterProducer()  # type: ignore[attr-defined]
            client.loseConnection()


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
