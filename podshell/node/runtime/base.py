"""What every runtime hands to the spawner: a way into one container."""

from __future__ import annotations

from dataclasses import dataclass, field


class TargetError(Exception):
    """A target that cannot be reached: its message is meant for the user."""


class NoSuchPod(TargetError):
    def __init__(self, namespace: str, pod: str) -> None:
        super().__init__(f"no pod {namespace}/{pod}")


class NoSuchContainer(TargetError):
    def __init__(self, namespace: str, pod: str, container: str, known: list[str]) -> None:
        super().__init__(
            f"pod {namespace}/{pod} has no container {container!r} "
            f"(it has: {', '.join(known)})"
        )


class ContainerNotRunning(TargetError):
    def __init__(self, namespace: str, pod: str, container: str, state: str) -> None:
        super().__init__(f"container {container!r} of pod {namespace}/{pod} is not running ({state})")


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

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.pod}/{self.container}"
