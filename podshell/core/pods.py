"""Pods and containers as a runtime reports them: plain data, the same for
every runtime, which the Kubernetes adapters render as v1 Pod objects
(L{podshell.kube.objects.pod_json})."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

StateKind = Literal["waiting", "running", "terminated"]
Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]


@dataclass(frozen=True)
class ContainerState:
    """A container state as Kubernetes reports it: waiting, running or terminated."""

    kind: StateKind
    reason: str | None = None
    message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    signal: int | None = None
    instance: int | None = None  # which run of the container (its restart count then): its log files


@dataclass(frozen=True)
class ContainerStatus:
    name: str
    image: str
    state: ContainerState
    last_state: ContainerState | None
    restart_count: int
    pid: int | None  # its init process now, if it runs
    container_id: str | None = None  # "RUNTIME://ID", where a runtime names its containers
    image_id: str = ""  # the image's digest reference, where the runtime gives it


@dataclass(frozen=True)
class PodStatus:
    """A pod: its manifest (C{metadata} and C{spec} as JSON, as written) and
    what became of it."""

    manifest: dict[str, Any]
    uid: str
    created: datetime
    started: datetime | None
    phase: Phase
    failure: str | None  # why the pod failed as a whole (its sandbox), if it did
    containers: tuple[ContainerStatus, ...]
    ip: str | None = None  # the pod's address, where its runtime gives it one (CNI)
