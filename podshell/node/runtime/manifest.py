"""Kubernetes Pod manifests, as far as the local runtime runs them.

Fields the local runtime has no use for (C{image}, resources, probes, ...)
are accepted and ignored, so that real manifests load; fields it cannot
honour in a way a user would rely on are refused with a clear message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from podshell.core.target import label_problem, subdomain_problem
from podshell.core.yamlfile import ConfigError, StrictModel, load_documents, parse

DEFAULT_CONTAINER_ANNOTATION = "kubectl.kubernetes.io/default-container"


class Backoff(StrictModel):
    """Restart back-off of crashed containers (Kubernetes: 10 s doubling to 5 min)."""

    initial: float = Field(default=10.0, gt=0)
    max: float = Field(default=300.0, gt=0)
    reset_after: float = Field(default=600.0, gt=0)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class EnvVar(_Lenient):
    name: str = Field(min_length=1)
    value: str = ""
    valueFrom: dict | None = None

    @model_validator(mode="after")
    def _no_value_from(self) -> EnvVar:
        if self.valueFrom is not None:
            raise ValueError("valueFrom is not supported by the local runtime; give value")
        return self


class ContainerPort(_Lenient):
    containerPort: int = Field(ge=1, le=65535)
    name: str | None = None
    protocol: Literal["TCP", "UDP", "SCTP"] = "TCP"


class Container(_Lenient):
    name: str
    image: str | None = None
    command: list[str] = []
    args: list[str] = []
    env: list[EnvVar] = []
    workingDir: str | None = None
    ports: list[ContainerPort] = []
    tty: bool = False
    stdin: bool = False
    stdinOnce: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        problem = label_problem(v, "container name")
        if problem:
            raise ValueError(problem)
        return v

    @model_validator(mode="after")
    def _runnable(self) -> Container:
        if not self.command and not self.args:
            raise ValueError(
                f"container {self.name!r} has no command: the local runtime runs on the host's "
                "filesystem and has no image entrypoint, so give command (and args)"
            )
        return self

    @property
    def argv(self) -> list[str]:
        return self.command + self.args


class ObjectMeta(_Lenient):
    name: str
    namespace: str = "default"
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        problem = subdomain_problem(v, "pod name")
        if problem:
            raise ValueError(problem)
        return v

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        problem = label_problem(v, "namespace")
        if problem:
            raise ValueError(problem)
        return v


class PodSpec(_Lenient):
    containers: list[Container] = Field(min_length=1)
    restartPolicy: Literal["Always", "OnFailure", "Never"] = "Always"
    terminationGracePeriodSeconds: int = Field(default=30, ge=0)

    @field_validator("containers")
    @classmethod
    def _unique(cls, v: list[Container]) -> list[Container]:
        names = [c.name for c in v]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"two containers are named {name!r}")
        return v


class Pod(_Lenient):
    apiVersion: Literal["v1"]
    kind: Literal["Pod"]
    metadata: ObjectMeta
    spec: PodSpec

    @model_validator(mode="after")
    def _default_container(self) -> Pod:
        wanted = self.metadata.annotations.get(DEFAULT_CONTAINER_ANNOTATION)
        if wanted is not None and wanted not in [c.name for c in self.spec.containers]:
            raise ValueError(f"annotation {DEFAULT_CONTAINER_ANNOTATION} names no container of the pod: {wanted!r}")
        return self

    @property
    def default_container(self) -> str:
        """The C{kubectl.kubernetes.io/default-container} annotation, else the
        first container: the rule kubectl uses."""
        return self.metadata.annotations.get(DEFAULT_CONTAINER_ANNOTATION) or self.spec.containers[0].name


def load_pods(path: Path) -> list[Pod]:
    """Every Pod of a multi-document manifest file; names unique per namespace."""
    pods: list[Pod] = []
    seen: set[tuple[str, str]] = set()
    for number, doc in load_documents(path):
        pod = parse(Pod, doc, f"{path}: document {number}")
        key = (pod.metadata.namespace, pod.metadata.name)
        if key in seen:
            raise ConfigError(f"{path}: document {number}: pod {key[0]}/{key[1]} is defined twice")
        seen.add(key)
        pods.append(pod)
    return pods
