"""The node in this process: the cluster's in-process hop to the runtime and
the spawner (the embedded default, and a node agent serving its gateways)."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IListeningPort, IProtocol, IProtocolFactory

from podshell.core.contracts import Grant, Placement, Process, ProcessRequest, Sink, Upgrade
from podshell.core.logs import LogSource, Options
from podshell.core.target import TargetError
from podshell.kube.objects import pod_json
from podshell.node.runtime.base import ContainerHandle, Runtime
from podshell.node.spawner import Spawner


class LocalNode:
    def __init__(self, name: str, runtime: Runtime, spawner: Spawner) -> None:
        self.name = name
        self.runtime = runtime
        self.spawner = spawner

    @property
    def problem(self) -> str | None:
        """The runtime's: every request that finds no pod says it."""
        return self.runtime.problem

    def pods(self) -> list[dict[str, Any]]:
        return [pod_json(p, self.name) for p in self.runtime.statuses()]

    def container_names(self, namespace: str, pod: str) -> list[str] | None:
        return self.runtime.container_names(namespace, pod)

    def resolve(self, namespace: str, pod: str, container: str | None) -> Placement:
        handle = self.runtime.resolve(namespace, pod, container)
        return Placement(handle.namespace, handle.pod, handle.container, self.name)

    def _handle(self, grant: Grant) -> ContainerHandle:
        """The container now: it may have restarted since the grant."""
        where = grant.handle
        return self.runtime.resolve(where.namespace, where.pod, where.container)

    def process(self, grant: Grant, request: ProcessRequest, sink: Sink) -> Process:
        handle = self._handle(grant)
        argv = list(request.argv)
        return self.spawner.process(handle, argv, sink, request.env, request.tty, request.size, user=grant.run_as)

    def attach(self, grant: Grant, sink: Sink) -> Process:
        return self.runtime.attach(self._handle(grant), sink)

    def connect(self, grant: Grant, port: int, factory: IProtocolFactory, host: str) -> Deferred[IProtocol]:
        try:
            handle = self._handle(grant)
        except TargetError as e:
            return fail(e)
        return self.spawner.connect(handle, port, factory, host)

    def upgrade(self, grant: Grant, target: str, headers: list[tuple[str, str]]) -> Upgrade | None:
        return None  # served in this process

    def logs(self, grant: Grant, previous: bool, options: Options) -> LogSource:
        where = grant.handle
        return self.runtime.read_log(where.namespace, where.pod, where.container, previous, options)

    def listen(self, grant: Grant, port: int, factory: IProtocolFactory, host: str) -> Deferred[IListeningPort]:
        try:
            handle = self._handle(grant)
        except TargetError as e:
            return fail(e)
        return self.spawner.listen(handle, port, factory, host)
