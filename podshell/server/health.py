"""The metrics listener: Prometheus' C{/metrics}, C{/healthz} and C{/readyz}.

C{/healthz} answers 200 C{ok} while the process serves.  C{/readyz} answers
200 C{ok} when the server can take sessions: its front doors (or a node
agent's listener) listen, its runtime answers and, on a gateway, at least
one node agent does; otherwise 503, one line per reason.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from podshell.core.metrics import Metrics, Watched


class Listener(Protocol):
    """A listening service (L{podshell.server.tap.Listening}): C{port} once it listens."""

    what: str
    description: str

    @property
    def port(self) -> object | None: ...


@dataclass
class Readiness:
    """What the server needs to take sessions."""

    listeners: Sequence[Listener] = ()
    runtime: Watched | None = None
    nodes: Callable[[], Sequence[tuple[str, Watched]]] | None = None  # a gateway's node agents
    inventory: Watched | None = None  # where a gateway learns of them (the API server)
    stopping: Callable[[], bool] = lambda: False  # SIGTERM came: the sessions' grace

    def reasons(self) -> list[str]:
        """Why it is not ready; empty when it is."""
        out = ["shutting down: taking no new sessions"] if self.stopping() else []
        out += [f"{x.what} is not listening on {x.description!r}" for x in self.listeners if x.port is None]
        if self.runtime is not None and self.runtime.problem:
            out.append(f"runtime: {self.runtime.problem}")
        if self.inventory is not None and self.inventory.problem:
            out.append(f"inventory: {self.inventory.problem}")
        if self.nodes is not None:
            nodes = self.nodes()
            if not any(node.problem is None for _, node in nodes):
                out.append("no node agent is reachable")
                out += [f"node {name}: {node.problem}" for name, node in nodes]
        return out


class _Text(Resource):
    isLeaf = True

    def __init__(self, answer: Callable[[], list[str]]) -> None:
        super().__init__()
        self.answer = answer

    def render_GET(self, request: Request) -> bytes:
        reasons = self.answer()
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        if reasons:
            request.setResponseCode(503)
            return "".join(f"{r}\n" for r in reasons).encode()
        return b"ok\n"

    def render_HEAD(self, request: Request) -> bytes:
        self.render_GET(request)
        return b""


class _Metrics(Resource):
    """The registry in Prometheus' text format, made in the reactor's thread
    (not L{prometheus_client.twisted}'s WSGI thread pool): the state read
    at a scrape (nodes, runtime) is the reactor's."""

    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self.metrics.registry)


class _Quiet(Site):
    noisy = False


def site(metrics: Metrics, readiness: Readiness) -> Site:
    """The metrics listener's web site."""
    root = Resource()
    root.putChild(b"metrics", _Metrics(metrics))
    root.putChild(b"healthz", _Text(lambda: []))
    root.putChild(b"readyz", _Text(readiness.reasons))
    return _Quiet(root)
