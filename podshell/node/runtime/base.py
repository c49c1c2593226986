"""What every runtime hands to the spawner: a way into one container."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from podshell.core.contracts import Process, Sink
from podshell.core.logs import LogSource, Options
from podshell.core.pods import PodStatus
from podshell.core.target import ContainerNotRunning, NoSuchContainer, NoSuchPod, TargetError

__all__ = [
    "ContainerHandle",
    "ContainerNotRunning",
    "NoSuchContainer",
    "NoSuchPod",
    "ProcessRef",
    "Runtime",
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
    # the container's OCI spec: exec is confined as runc exec confines it
    runtime_spec: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"


class Runtime(Protocol):
    """What a node's pods come from: podshell's own (L{local.LocalRuntime})
    or a CRI's (L{cri.runtime.CRIRuntime}); L{podshell.node.inprocess.LocalNode}
    serves either."""

    @property
    def problem(self) -> str | None:
        """Why the runtime cannot be asked now (its socket is gone), or None."""

    def statuses(self) -> list[PodStatus]: ...

    def container_names(self, namespace: str, pod: str) -> list[str] | None: ...

    def resolve(self, namespace: str, pod: str, container: str | None = None) -> ContainerHandle:
        """The container as it runs now.

        @raise TargetError: no such pod or container, or not running."""

    def attach(self, handle: ContainerHandle, sink: Sink) -> Process: ...

    def read_log(self, namespace: str, pod: str, container: str, previous: bool, options: Options) -> LogSource: ...
