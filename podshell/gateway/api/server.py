"""The API's resources: discovery, pods, and the streaming subresources.

Every request is authenticated (bearer token or client certificate) before
routing; pods are visible to an identity that may use them; every stream goes
through the same gate (policy, audit) as SSH.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from twisted.internet.interfaces import IProtocol, ITransport

from podshell.gateway.access import Denied, Gate
from podshell.gateway.api import objects, streams, websocket
from podshell.gateway.api.front import Handler, HTTPError, Request, Upgrade
from podshell.gateway.api.streams import StreamOptions
from podshell.node.runtime.local import LocalPod, LocalRuntime
from podshell.node.spawner import ProcessSink, Spawner
from podshell.target import Target

_POD = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)(?:/(?P<sub>exec|attach|portforward))?$")
_PODS = re.compile(r"^/api/v1/(?:namespaces/(?P<ns>[^/]+)/)?pods$")
_DENIED = {"forbidden": (403, "Forbidden"), "not-found": (404, "NotFound"), "invalid": (400, "BadRequest")}


class KubeAPI:
    def __init__(self, gate: Gate, runtime: LocalRuntime, spawner: Spawner, reactor, node: str = "podshell") -> None:
        self.gate = gate
        self.runtime = runtime
        self.spawner = spawner
        self.reactor = reactor
        self.node = node

    def route(self, method: str, path: str) -> Handler | None:
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
        if (m := _PODS.match(path)) and method == "GET":
            namespace = m["ns"]
            return lambda r: self.list_pods(r, namespace)
        if m := _POD.match(path):
            ns, pod, sub = m["ns"], m["pod"], m["sub"]
            if sub is None:
                return (lambda r: self.get_pod(r, ns, pod)) if method == "GET" else None
            if sub == "exec":
                return lambda r: self.exec(r, ns, pod)
        return None

    # Pods: visible to whoever may use them.
    def _visible(self, request: Request, pod: LocalPod) -> bool:
        source = request.peer.rsplit(":", 1)[0].strip("[]")
        return any(
            self.gate.policy.decide(request.identity, verb, pod.namespace, pod.name, None, source)
            for verb in ("exec", "attach", "port-forward")
        )

    def list_pods(self, request: Request, namespace: str | None) -> tuple[int, Any]:
        pods = [p for p in self.runtime.pods(namespace) if self._visible(request, p)]
        if _wants_table(request):
            return 200, objects.pod_table(pods, self.node, datetime.now(UTC))
        return 200, objects.pod_list([objects.pod_json(p, self.node) for p in pods])

    def get_pod(self, request: Request, namespace: str, name: str) -> tuple[int, Any]:
        pod = self.runtime.find(namespace, name)
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
            return 200, objects.pod_table([pod], self.node, datetime.now(UTC))
        return 200, objects.pod_json(pod, self.node)

    def _may_know(self, request: Request, namespace: str, name: str) -> bool:
        source = request.peer.rsplit(":", 1)[0].strip("[]")
        return any(
            self.gate.policy.decide(request.identity, verb, namespace, name, None, source)
            for verb in ("exec", "attach", "port-forward")
        )

    # exec
    def exec(self, request: Request, namespace: str, name: str) -> Upgrade:
        command = request.query.get("command", [])
        if not command:
            raise HTTPError(400, "BadRequest", "you must specify at least one command for the container")
        try:
            options = StreamOptions.fromQuery(request.query)
        except ValueError as e:
            raise HTTPError(400, "BadRequest", str(e)) from None
        container = (request.query.get("container") or [""])[0] or None
        upgrade = request.upgrade
        if upgrade == "websocket":
            offered = request.header_values("sec-websocket-protocol")
            protocol = streams.choose(offered, streams.WEBSOCKET_EXEC) if offered else ""
            if protocol is None:
                raise _unsupported(streams.WEBSOCKET_EXEC)
        elif upgrade == "spdy/3.1":
            raise HTTPError(400, "BadRequest", "SPDY is not supported yet; use a WebSocket client (kubectl 1.30+)")
        else:
            raise HTTPError(400, "BadRequest", "Upgrade request required")
        granted = self._enter(request, "exec", Target(namespace, name, container), command)

        def start(sink: ProcessSink):
            return self.spawner.process(granted.handle, command, sink, tty=options.tty)

        def switch(transport: ITransport, trailing: bytes) -> IProtocol:
            data, ws = websocket.accept(request.raw_headers, request.target, protocol)
            transport.write(data)
            session = websocket.ChannelSession(ws, protocol, options, start, granted.session, command, self.reactor)
            session.makeConnection(transport)
            if trailing:
                session.dataReceived(trailing)
            return session

        return switch

    def _enter(self, request: Request, verb: str, target: Target, command: list[str] | None):
        try:
            return self.gate.enter(request.identity, verb, target, request.peer, "api", command)
        except Denied as e:
            code, reason = _DENIED.get(e.kind, (400, "BadRequest"))
            raise HTTPError(code, reason, str(e)) from None


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
