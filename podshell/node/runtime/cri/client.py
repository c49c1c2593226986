"""A blocking CRI client that reads what a node agent needs: the kubelet's
pods and containers as plain records, with the verbose details (PIDs, the
OCI spec, the pod IP) fetched once per sandbox or container state.  Run it
off the reactor thread (L{podshell.node.runtime.cri.runtime})."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

import grpc
from grpc import RpcError

from podshell.node.nsexec import start_time
from podshell.node.runtime.base import ProcessRef
from podshell.node.runtime.cri import api_pb2 as cri
from podshell.node.runtime.cri import events_pb2 as events
from podshell.node.runtime.cri.api_pb2_grpc import RuntimeServiceStub
from podshell.node.runtime.cri.events_pb2_grpc import EventsStub

__all__ = [
    "CONTAINERD",
    "CRIO",
    "Client",
    "Container",
    "Events",
    "RpcError",
    "Sandbox",
    "State",
    "default_endpoint",
]

CONTAINERD = "unix:///run/containerd/containerd.sock"
CRIO = "unix:///var/run/crio/crio.sock"
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"
RESTART_COUNT = "io.kubernetes.container.restartCount"
KUBELET_NAMESPACE = "k8s.io"  # containerd's namespace for the CRI's sandboxes and containers
TIMEOUT = 2.0  # seconds for one call: a runtime that does not answer is reported, not waited for


def default_endpoint() -> str:
    """containerd's socket, else CRI-O's if only it exists."""
    for endpoint in (CONTAINERD, CRIO):
        if os.path.exists(endpoint.removeprefix("unix://")):
            return endpoint
    return CONTAINERD


class State(Enum):
    """A CRI container's state."""

    CREATED = cri.CONTAINER_CREATED
    RUNNING = cri.CONTAINER_RUNNING
    EXITED = cri.CONTAINER_EXITED
    UNKNOWN = cri.CONTAINER_UNKNOWN


def _time(ns: int) -> datetime | None:
    return datetime.fromtimestamp(ns / 1e9, UTC) if ns else None


def _process(pid: int) -> ProcessRef | None:
    """C{pid} told apart from later processes, if it (still) exists: the
    runtime reports host PIDs, so the node agent runs in the host's pid namespace."""
    if pid <= 0:
        return None
    try:
        return ProcessRef(pid, start_time(pid))
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Sandbox:
    """A pod sandbox the kubelet made."""

    id: str
    namespace: str
    name: str
    uid: str
    created: datetime
    ready: bool
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    hostname: str
    ip: str | None
    process: ProcessRef | None  # owns the pod's network namespace


@dataclass(frozen=True)
class Container:
    """One run of a kubelet's container."""

    id: str
    sandbox_id: str
    name: str
    restart_count: int
    image: str
    image_id: str
    state: State
    created: datetime
    started: datetime | None
    finished: datetime | None
    exit_code: int
    reason: str
    message: str
    labels: Mapping[str, str]
    log_path: str
    process: ProcessRef | None
    spec: dict[str, Any] | None  # the full OCI runtime spec
    # How the kubelet made its stdio (ContainerConfig): attach must ask for the same.
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False


class Client:
    """The CRI at C{endpoint} (C{unix:///path}); gRPC reconnects by itself."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.channel = grpc.insecure_channel(endpoint)
        self._cri = RuntimeServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def events(self) -> Events:
        """containerd's event stream for the kubelet's containers."""
        return Events(self.channel)

    def runtime_name(self) -> str:
        """As a kubelet prefixes container IDs with it (C{containerd}, C{cri-o})."""
        return self._cri.Version(cri.VersionRequest(), timeout=TIMEOUT).runtime_name

    def sandboxes(self, known: Mapping[str, Sandbox]) -> dict[str, Sandbox]:
        """The kubelet's sandboxes; C{known} ones are asked about again only
        when their state changed."""
        found = {}
        for item in self._cri.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=TIMEOUT).items:
            labels = item.labels
            if POD_NAME not in labels or POD_NAMESPACE not in labels:
                continue  # not the kubelet's
            ready = item.state == cri.SANDBOX_READY
            old = known.get(item.id)
            found[item.id] = old if old is not None and old.ready == ready else self._sandbox(item, ready)
        return found

    def _sandbox(self, item: cri.PodSandbox, ready: bool) -> Sandbox:
        reply = self._cri.PodSandboxStatus(
            cri.PodSandboxStatusRequest(pod_sandbox_id=item.id, verbose=True), timeout=TIMEOUT
        )
        info = json.loads(reply.info.get("info", "{}"))
        spec = info.get("runtimeSpec") or {}
        return Sandbox(
            id=item.id,
            namespace=item.labels[POD_NAMESPACE],
            name=item.labels[POD_NAME],
            uid=item.labels.get(POD_UID, item.metadata.uid),
            created=_time(item.created_at) or datetime.now(UTC),
            ready=ready,
            labels=dict(item.labels),
            annotations=dict(item.annotations),
            hostname=spec.get("hostname") or item.metadata.name,
            ip=reply.status.network.ip or None,
            process=_process(int(info.get("pid", 0))) if ready else None,
        )

    def containers(self, known: Mapping[str, Container]) -> dict[str, Container]:
        """The kubelet's containers; C{known} ones are asked about again only
        when their state changed."""
        found = {}
        for item in self._cri.ListContainers(cri.ListContainersRequest(), timeout=TIMEOUT).containers:
            if CONTAINER_NAME not in item.labels:
                continue
            state = State(item.state)
            old = known.get(item.id)
            found[item.id] = old if old is not None and old.state is state else self._container(item.id)
        return found

    def _container(self, container_id: str) -> Container:
        reply = self._cri.ContainerStatus(
            cri.ContainerStatusRequest(container_id=container_id, verbose=True), timeout=TIMEOUT
        )
        status = reply.status
        info = json.loads(reply.info.get("info", "{}"))
        state = State(status.state)
        config = info.get("config") or {}  # containerd's; a runtime without it: the spec says tty
        spec = info.get("runtimeSpec") or {}
        tty = bool(config.get("tty", (spec.get("process") or {}).get("terminal", False)))
        restarts = status.annotations.get(RESTART_COUNT, "")
        return Container(
            id=status.id,
            sandbox_id=info.get("sandboxID", ""),
            name=status.labels[CONTAINER_NAME],
            restart_count=int(restarts) if restarts.isdigit() else status.metadata.attempt,
            image=status.image.image,
            image_id=status.image_ref,
            state=state,
            created=_time(status.created_at) or datetime.now(UTC),
            started=_time(status.started_at),
            finished=_time(status.finished_at),
            exit_code=status.exit_code,
            reason=status.reason,
            message=status.message,
            labels=dict(status.labels),
            log_path=status.log_path,
            process=_process(int(info.get("pid", 0))) if state is State.RUNNING else None,
            spec=info.get("runtimeSpec"),
            stdin=bool(config.get("stdin", "config" not in info)),  # unknown: ask, and let the runtime decide
            stdin_once=bool(config.get("stdin_once", False)),
            tty=tty,
        )

    def attach(self, container_id: str, stdin: bool, tty: bool) -> str:
        """The streaming URL of an attachment to the container's stdio
        (stdout, and stderr unless it has a terminal)."""
        request = cri.AttachRequest(container_id=container_id, stdin=stdin, tty=tty, stdout=True, stderr=not tty)
        return str(self._cri.Attach(request, timeout=TIMEOUT).url)


class Events:
    """What changes in containerd's kubelet namespace, as event topics
    (C{/tasks/start}, C{/tasks/exit}, ...), for as long as it is iterated;
    L{cancel} (from any thread) ends the iteration.  A runtime without the
    service (CRI-O) fails the first step with C{UNIMPLEMENTED}."""

    def __init__(self, channel: grpc.Channel) -> None:
        request = events.SubscribeRequest(filters=[f"namespace=={KUBELET_NAMESPACE}"])
        self._call = EventsStub(channel).Subscribe(request)

    def __iter__(self) -> Iterator[str]:
        for envelope in self._call:
            yield envelope.topic

    def cancel(self) -> None:
        self._call.cancel()
