"""What every runtime hands to the spawner: a way into one container."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from podshell.core.target import ContainerNotRunning, NoSuchContainer, NoSuchPod, TargetError

__all__ = [
    "ContainerHandle",
    "ContainerNotRunning",
    "NoSuchContainer",
    "NoSuchPod",
    "ProcessRef",
    "TargetError",
]


@dataclass(frozen=True)
class ProcessRef:
    """A live process, told apart from later ones that reuse its PID."""

    pid: int
    started: int


@dataclass(frozen=True)
class ContainerHandle:
    """Everything the spawner needs to work inside one container."""

    namespace: str
    pod: str
    container: str
    hostname: str
    init: ProcessRef  # the container's PID 1: exec joins all its namespaces
    sandbox: ProcessRef  # owns the pod's network namespace: sockets are made there
    env: tuple[tuple[str, str], ...] = ()
    working_dir: str | None = None
    user: str | None = None
    labels: dict[str, str] = field(default_factory=dict, compare=False)
    runtime_spec: dict[str, Any] | None = field(
        default=None, compare=False
    )  # the container's OCI spec: exec is confined as runc exec

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"
