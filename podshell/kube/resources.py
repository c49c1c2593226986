"""The API's resources: discovery, pods, and the streaming subresources.

Every request is authenticated (bearer token or client certificate) before
routing; pods are visible to an identity that may use them; every stream goes
through the same gate (policy, audit) as SSH.  A stream for a pod on another
node is handed, once allowed, to that node agent and spliced byte for byte;
a node agent serves the same routes to its gateways, plus the two stream
protocols SSH needs (L{rc.PROCESS}, L{rc.PORT}).  pods/log is gated the
same way (verb C{logs}) and spliced the same way: a streamed GET.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any
from urllib.parse import quote, urlencode

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, ITransport

from podshell.auth.gate import Denied, Gate, Resolve
from podshell.auth.identity import OnBehalf
from podshell.auth.policy import POD_VERBS, Access, Verb
from podshell.core.addresses import ip_of
from podshell.core.contracts import Grant, Nodes, Placement, ProcessRequest, RecordMode
from podshell.core.denial import answer
from podshell.core.process import TAR_SERVER
from podshell.core.target import NoSuchPod, Target, TargetError
from podshell.kube import logs, objects, websocket
from podshell.kube.channels import ChannelCommand, ChannelPort, ChannelPortForward
from podshell.kube.command import Start
from podshell.kube.front import Handler, HTTPError, Request, Upgrade
from podshell.kube.limits import StreamLimits
from podshell.kube.spdy import SpdyCommand, SpdyPortForward, SpdyServer, SpdyTunnel, StreamHandler
from podshell.kube.websocket import MessageApp
from podshell.protocols import channels, tar
from podshell.protocols import remotecommand as rc
from podshell.protocols.remotecommand import StreamOptions

POD_PATH = re.compile(
    r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)(?:/(?P<sub>exec|attach|portforward|log))?$"
)
NAMESPACE_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)$")
PODS_PATH = re.compile(r"^/api/v1/(?:namespaces/(?P<ns>[^/]+)/)?pods$")
# podshell's own: the sessions under way, for operators (verb admin).
_SESSIONS = re.compile(r"^/podshell/v1/sessions(?:/(?P<id>[0-9a-f]{32}))?$")
# How long exec output waits after the upgrade for clients that read before
# they are ready for it (L{_reads_before_its_streams}).
STREAMS_NOT_READY_HOLD = 0.02
# What a node agent needs of the client's upgrade request; the rest (its
# credentials above all) stays at the gateway.
_PASSED_ON = (
    "upgrade",
    "connection",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-extensions",
    "x-stream-protocol-version",
    "user-agent",
)


class KubeAPI:
    def __init__(
        self, gate: Gate, cluster: Nodes, reactor, agent: bool = False, limits: StreamLimits | None = None
    ) -> None:
        """@param agent: serve as a node agent, to gateways: their own
        stream protocols, and the environment they pass with a command.
        @param limits: of each upgraded connection (pings, streams, forwarded connections)."""
        self.limits = limits or StreamLimits()
        self.gate = gate
        self.cluster = cluster
        self.reactor = reactor
        self.agent = agent
        extra = [rc.PROCESS] if agent else []
        self.exec_protocols = extra + rc.WEBSOCKET_EXEC
        self.port_protocols = ([rc.PORT] if agent else []) + rc.WEBSOCKET_PORT_FORWARD

    def route(self, method: str, path: str) -> Handler | None:
        if (m := _SESSIONS.match(path)) and not self.agent:
            return self._sessions_route(method, m["id"])
        if method not in ("GET", "POST"):
            return None
        fixed: dict[str, Callable[[Request], tuple[int, Any]]] = {
            "/version": lambda r: (200, objects.version()),
            "/api": lambda r: (200, objects.api_versions(r.header("host") or "")),
            "/apis": lambda r: (200, objects.API_GROUPS),
            "/api/v1": lambda r: (200, objects.API_V1),
        }
        if path.rstrip("/") in fixed and method == "GET":
            return fixed[path.rstrip("/")]
        if (m := NAMESPACE_PATH.match(path)) and method == "GET":
            namespace = m["ns"]
            return lambda r: self.get_namespace(r, namespace)
        if (m := PODS_PATH.match(path)) and method == "GET":
            namespace = m["ns"]
            return lambda r: self.list_pods(r, namespace)
        if m := POD_PATH.match(path):
            ns, pod, sub = m["ns"], m["pod"], m["sub"]
            if sub is None:
                return (lambda r: self.get_pod(r, ns, pod)) if method == "GET" else None
            if sub == "portforward":
                return lambda r: self.port_forward(r, ns, pod)
            if sub == "log":
                return (lambda r: self.logs(r, ns, pod)) if method == "GET" else None
            verb: Verb = "exec" if sub == "exec" else "attach"  # all the pattern leaves
            return lambda r: self.command(r, ns, pod, verb)
        return None

    # Sessions under way: listed and ended by whoever may admin where they are.
    def _sessions_route(self, method: str, session_id: str | None) -> Handler | None:
        if session_id is None:
            return self.list_sessions if method == "GET" else None
        return (lambda r: self.kill_session(r, session_id)) if method == "DELETE" else None

    def list_sessions(self, request: Request) -> tuple[int, Any]:
        now = self.reactor.seconds()
        found = self._as_operator(lambda: self.gate.sessions(request.identity, request.peer, "api"))
        items = sorted((live.fields(now) for live in found), key=lambda f: f["start"])
        return 200, {"kind": "SessionList", "apiVersion": "podshell/v1", "items": items}

    def kill_session(self, request: Request, session_id: str) -> tuple[int, Any]:
        live = self._as_operator(lambda: self.gate.kill(request.identity, request.peer, "api", session_id))
        return 200, {"kind": "Session", "apiVersion": "podshell/v1", **live.fields(self.reactor.seconds())}

    def _as_operator(self, act: Callable[[], Any]) -> Any:
        try:
            return act()
        except Denied as e:
            said = answer(e.kind)
            raise HTTPError(said.status, said.reason, str(e)) from None

    # Pods: visible to whoever may use them.
    def _visible(self, request: Request, pod: dict[str, Any]) -> bool:
        return self._may_know(request, pod["metadata"]["namespace"], pod["metadata"]["name"])

    def list_pods(self, request: Request, namespace: str | None) -> tuple[int, Any]:
        pods = [p for p in self.cluster.pods(namespace) if self._visible(request, p)]
        if _wants_table(request):
            return 200, objects.pod_table(pods, datetime.now(UTC))
        return 200, objects.pod_list(pods)

    def get_pod(self, request: Request, namespace: str, name: str) -> tuple[int, Any]:
        try:
            pod = self.cluster.find(namespace, name)
        except TargetError as e:
            raise HTTPError(409, "Conflict", str(e)) from None
        if pod is None or not self._visible(request, pod):
            if pod is None and self._may_know(request, namespace, name):
                raise HTTPError(404, "NotFound", f'pods "{name}" not found', details={"name": name, "kind": "pods"})
            raise HTTPError(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: User "{request.identity.name}" cannot get resource "pods" '
                f'in namespace "{namespace}"',
                details={"name": name, "kind": "pods"},
            )
        if _wants_table(request):
            return 200, objects.pod_table([pod], datetime.now(UTC))
        return 200, pod

    def get_namespace(self, request: Request, name: str) -> tuple[int, Any]:
        pods = self.cluster.pods(name)
        if any(self._visible(request, p) for p in pods):
            return 200, objects.namespace_json(name)
        if pods:
            raise HTTPError(
                403,
                "Forbidden",
                f'namespaces "{name}" is forbidden: User "{request.identity.name}" cannot get resource "namespaces"',
                details={"name": name, "kind": "namespaces"},
            )
        raise HTTPError(404, "NotFound", f'namespaces "{name}" not found', details={"name": name, "kind": "namespaces"})

    def _may_know(self, request: Request, namespace: str, name: str) -> bool:
        access = Access(request.identity, POD_VERBS[0], namespace, name, source=ip_of(request.peer))
        return any(self.gate.policy.decide(replace(access, verb=verb)) for verb in POD_VERBS)

    # Streaming: exec, attach, port-forward, over WebSocket or SPDY.
    def command(self, request: Request, namespace: str, name: str, verb: Verb) -> Upgrade:
        command: list[str] | None = None
        if verb == "exec":
            command = request.query.get("command", [])
            if not command:
                raise HTTPError(400, "BadRequest", "you must specify at least one command for the container")
        try:
            options = StreamOptions.fromQuery(request.query)
        except ValueError as e:
            raise HTTPError(400, "BadRequest", str(e)) from None
        container = (request.query.get("container") or [""])[0] or None
        # podshell's own parameter (kubectl has none): a container user to run as.
        run_as = (request.query.get("user") or [""])[0] or None
        if run_as is not None and verb != "exec":
            raise HTTPError(400, "BadRequest", "user is a parameter of exec only")
        upgrade, protocol = _negotiate(request, self.exec_protocols, rc.SPDY_EXEC)
        granted = self._enter(request, verb, Target(namespace, name, container), command, run_as=run_as)
        query = [("container", granted.handle.container)] + [("command", c) for c in command or []]
        query += [(k, "1") for k in ("stdin", "stdout", "stderr", "tty") if getattr(options, k)]
        query += [("user", run_as)] if run_as is not None else []
        spliced = self._splice(request, granted, verb, query)
        if spliced is not None:
            return spliced
        env = _env(request.query.get("env", [])) if self.agent else None
        start: Start
        if command is not None:
            # kubectl cp's tar: the container's own if it has one, else podshell's.
            argv = (TAR_SERVER, *command) if tar.parse(command) is not None else tuple(command)
            asked = ProcessRequest(argv, env or {}, options.tty)
            start = lambda sink: self.cluster.process(granted, asked, sink)  # noqa: E731
        else:
            start = lambda sink: self.cluster.attach(granted, sink)  # noqa: E731
        if upgrade is Transport.WEBSOCKET:
            app = ChannelCommand(protocol, options, granted.session, command, start)
            hold = STREAMS_NOT_READY_HOLD if _reads_before_its_streams(request.header("user-agent") or "") else 0.0
            return self._websocket(request, protocol, app, hold)
        return self._spdy(
            protocol, lambda server: SpdyCommand(server, protocol, options, granted.session, command, start)
        )

    def port_forward(self, request: Request, namespace: str, name: str) -> Upgrade:
        upgrade, protocol = _negotiate(request, self.port_protocols, [rc.PORT_FORWARD])
        ports: list[int] = []
        if protocol in (rc.V4, rc.V4_B64, rc.PORT):
            try:
                ports = channels.parse_ports(request.query.get("ports", []))
            except ValueError as e:
                raise HTTPError(400, "BadRequest", str(e)) from None
        audit_ports = [f"ports {','.join(map(str, ports))}"] if ports else None
        if protocol == rc.PORT and len(ports) != 1:
            raise HTTPError(400, "BadRequest", f"{rc.PORT} forwards exactly one port")
        granted = self._enter(request, "port-forward", Target(namespace, name, None), audit_ports)
        spliced = self._splice(request, granted, "portforward", [("ports", str(p)) for p in ports])
        if spliced is not None:
            return spliced

        def connect(port: int, factory: IProtocolFactory) -> Deferred[IProtocol]:
            return self.cluster.connect(granted, port, factory)

        pod = f"{namespace}/{name}"
        if protocol == rc.PORT:
            return self._websocket(request, protocol, ChannelPort(ports[0], connect, granted.session))
        if protocol == rc.SPDY_TUNNEL:
            tunnel = SpdyTunnel(
                self.reactor, lambda server: SpdyPortForward(server, connect, pod, granted.session, False), self.limits
            )
            return self._websocket(request, protocol, tunnel)
        if upgrade is Transport.WEBSOCKET:
            app = ChannelPortForward(ports, protocol == rc.V4_B64, connect, pod, granted.session)
            return self._websocket(request, protocol, app)
        report = _errors_are_harmless(request.header("user-agent") or "")
        return self._spdy(protocol, lambda server: SpdyPortForward(server, connect, pod, granted.session, report))

    # Logs: from the files of the node that runs the pod, whether the container runs or not.
    def logs(self, request: Request, namespace: str, name: str) -> Upgrade:
        if self.agent and not isinstance(request.identity, OnBehalf):
            raise HTTPError(403, "Forbidden", "a gateway must say on whose behalf it reads logs (Impersonate-User)")
        try:
            wanted = logs.LogRequest.fromQuery(request.query, time.time_ns())
        except ValueError as e:
            raise HTTPError(400, "BadRequest", str(e)) from None
        target = Target(namespace, name, wanted.container)
        granted = self._enter(request, "logs", target, wanted.audit(), resolve=self._log_placement)
        query = [("container", granted.handle.container), *wanted.query]
        # The node closes after its answer: nothing else may follow on a connection it trusts.
        headers = [(k, v) for k, v in request.headers if k == "user-agent"] + [("connection", "close")]
        spliced = self._splice(request, granted, "log", query, headers)
        if spliced is not None:
            return spliced
        try:  # not spliced: this process runs the pod
            source = self.cluster.node(granted).logs(granted, wanted.previous, wanted.options)
        except TargetError as e:
            granted.session.end(f"failed: {e}")
            raise HTTPError(400, "BadRequest", str(e)) from None

        def switch(transport: ITransport, trailing: bytes) -> IProtocol:
            stream = logs.LogStream(self.reactor, source, granted.session, wanted.follow)
            stream.makeConnection(transport)
            return stream

        return switch

    def _log_placement(self, namespace: str, name: str, container: str | None) -> Placement:
        """Where the logs are: the pod's node, any container of it (running or not)."""
        pod = self.cluster.find(namespace, name)
        if pod is None:
            raise NoSuchPod(namespace, name)
        chosen = logs.container_of(pod, container)
        node = next(n for n in self.cluster.nodes.values() if n.container_names(namespace, name) is not None)
        return Placement(namespace, name, chosen, node.name)

    def _splice(
        self,
        request: Request,
        granted: Grant,
        sub: str,
        query: list[tuple[str, str]],
        headers: list[tuple[str, str]] | None = None,
    ) -> Upgrade | None:
        """Hand the stream to the node agent that runs the pod, if that is not
        this process: the same request, cleaned, on behalf of the identity.
        A session to record is served here instead (through the node hop),
        because a spliced stream passes the recorder by."""
        if granted.record is not RecordMode.OFF and sub != "log":
            return None
        where = granted.handle
        target = f"/api/v1/namespaces/{quote(where.namespace)}/pods/{quote(where.pod)}/{sub}?{urlencode(query)}"
        if headers is None:
            headers = [(k, v) for k, v in request.headers if k in _PASSED_ON]
        return self.cluster.node(granted).upgrade(granted, target, headers)

    def _websocket(self, request: Request, protocol: str, app: MessageApp, hold: float = 0.0) -> Upgrade:
        def switch(transport: ITransport, trailing: bytes) -> IProtocol:
            data, ws = websocket.accept(request.raw_headers, request.target, protocol)
            transport.write(data)
            endpoint = websocket.WebSocketEndpoint(ws, app, self.reactor, self.limits)
            if hold:
                endpoint.hold(hold)
            endpoint.makeConnection(transport)
            if trailing:
                endpoint.dataReceived(trailing)
            return endpoint

        return switch

    def _spdy(self, protocol: str, handler: Callable[[SpdyServer], StreamHandler]) -> Upgrade:
        def switch(transport: ITransport, trailing: bytes) -> IProtocol:
            transport.write(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                b"X-Stream-Protocol-Version: " + protocol.encode() + b"\r\n\r\n"
            )
            server = SpdyServer(self.reactor, handler, self.limits)
            server.makeConnection(transport)
            if trailing:
                server.dataReceived(trailing)
            return server

        return switch

    def _enter(
        self,
        request: Request,
        verb: Verb,
        target: Target,
        command: list[str] | None,
        resolve: Resolve | None = None,
        run_as: str | None = None,
    ) -> Grant:
        try:
            peer, via = request.peer, "api"
            if isinstance(request.identity, OnBehalf):  # a node agent, for a gateway
                peer, via = request.identity.source or peer, f"gateway {request.identity.gateway} ({request.peer})"
            return self.gate.enter(request.identity, verb, target, peer, via, command, resolve, run_as)
        except Denied as e:
            said = answer(e.kind)
            raise HTTPError(said.status, said.reason, str(e)) from None


class Transport(Enum):
    """What a streaming request upgrades to (its C{Upgrade} header, lower-cased)."""

    WEBSOCKET = "websocket"
    SPDY = "spdy/3.1"


def _negotiate(request: Request, websocket_protocols: list[str], spdy_protocols: list[str]) -> tuple[Transport, str]:
    """The upgrade and the stream protocol: the first of the client's that
    we support (apimachinery's rule)."""
    upgrade = request.upgrade
    if upgrade == Transport.WEBSOCKET.value:
        offered = request.header_values("sec-websocket-protocol")
        protocol = rc.choose(offered, websocket_protocols) if offered else ""
        if protocol is None:
            raise _unsupported(websocket_protocols)
        return Transport.WEBSOCKET, protocol
    if upgrade == Transport.SPDY.value:
        offered = request.header_values("x-stream-protocol-version")
        if not offered:
            raise HTTPError(
                400, "BadRequest", "missing X-Stream-Protocol-Version: say which stream protocols you speak"
            )
        protocol = rc.choose(offered, spdy_protocols)
        if protocol is None:
            raise _unsupported(spdy_protocols)
        return Transport.SPDY, protocol
    raise HTTPError(400, "BadRequest", "Upgrade request required: use a WebSocket or SPDY/3.1 client such as kubectl")


def _env(values: list[str]) -> dict[str, str]:
    """C{NAME=VALUE} pairs a gateway passes with a command (already allow-listed there)."""
    env = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name or "\0" in item:
            raise HTTPError(400, "BadRequest", f"env {item!r} is not NAME=VALUE")
        env[name] = value
    return env


def _kubectl_minor(user_agent: str) -> int | None:
    m = re.match(r"kubectl(?:\.[\d.]+)?/v1\.(\d+)", user_agent)
    return int(m[1]) if m else None


def _errors_are_harmless(user_agent: str) -> bool:
    """Whether port-forward error text is safe to send: kubectl 1.23 and
    later end the whole forward when any arrives (kubernetes PR #103526)."""
    minor = _kubectl_minor(user_agent)
    return minor is None or minor < 23


def _reads_before_its_streams(user_agent: str) -> bool:
    """kubectl 1.29-1.32 start reading an exec's WebSocket before they have
    made its streams, and drop what comes first ("Unknown stream id 1,
    discarding message"; kubernetes issue #131189, fixed in 1.33).  A real
    container's start hides that; ours starts in a millisecond or two."""
    minor = _kubectl_minor(user_agent)
    return minor is not None and 29 <= minor <= 32


def _wants_table(request: Request) -> bool:
    accept = request.header("accept") or ""
    return "as=Table" in accept and "g=meta.k8s.io" in accept


def _unsupported(supported: list[str]) -> HTTPError:
    return HTTPError(
        403,
        "Forbidden",
        f"unable to upgrade: none of the offered protocols is supported (supported: {', '.join(supported)})",
        [("x-accepted-stream-protocol-versions", p) for p in supported],
    )
