"""Runtimes turn ns/pod/container into a L{ContainerHandle}."""

from podshell.node.runtime.base import (
    ContainerHandle,
    ContainerNotRunning,
    NoSuchContainer,
    NoSuchPod,
    ProcessRef,
    TargetError,
)

__all__ = [
    "ContainerHandle",
    "ContainerNotRunning",
    "NoSuchContainer",
    "NoSuchPod",
    "ProcessRef",
    "TargetError",
]
