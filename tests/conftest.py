"""Shared fixtures: real pods made of real namespaces, torn down after each test."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import pytest_twisted
import yaml
from twisted.internet import defer, reactor

from podshell.core.process import ExitStatus
from podshell.node.runtime.local import LocalRuntime
from podshell.node.runtime.manifest import Backoff, load_pods
from podshell.node.spawner import Spawner

PYTHON = sys.executable

# Tests that make namespaces or drive real binaries (OpenSSH, kubectl, twistd
# with pods): marked, so `tox -e unit` can leave them out, and skipped for a
# user who is not root rather than failing.
needs_root = pytest.mark.needs_root


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="pods need root")
    for item in items:
        if item.get_closest_marker("needs_root"):
            item.add_marker(skip)


def pod_yaml(tmp_path: Path, pods: str | list[dict]) -> Path:
    """Write manifests (YAML text, or Pod dicts) to a file."""
    path = tmp_path / "pods.yaml"
    path.write_text(textwrap.dedent(pods) if isinstance(pods, str) else yaml.safe_dump_all(pods))
    return path


def pod(name: str, *containers: dict, namespace: str = "default", **spec) -> dict:
    """A Pod manifest as a dict; containers as {"name": ..., "command": [...]}."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"terminationGracePeriodSeconds": 0, "containers": list(containers), **spec},
    }


class Collect:
    """A ProcessSink that keeps everything and fires when the process ends."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.err = bytearray()
        self.done: defer.Deferred[ExitStatus] = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, status: ExitStatus) -> None:
        self.done.callback(status)


async def wait_for(predicate, timeout: float = 10.0, step: float = 0.02, what: str = "a condition") -> None:
    waited = 0.0
    while not predicate():
        if waited > timeout:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await sleep(step)
        waited += step


def sleep(seconds: float) -> defer.Deferred:
    d: defer.Deferred = defer.Deferred()
    reactor.callLater(seconds, d.callback, None)
    return d


@pytest.fixture
def spawner() -> Spawner:
    return Spawner(reactor)


@pytest_twisted.async_yield_fixture
async def start_pods(spawner, tmp_path):
    """start_pods(yaml_text, backoff=...) -> a started LocalRuntime whose
    containers are all running (or ended); stopped at teardown."""
    started: list[LocalRuntime] = []

    async def start(text: str | list[dict], backoff: Backoff | None = None, wait: bool = True) -> LocalRuntime:
        runtime = LocalRuntime(reactor, spawner, load_pods(pod_yaml(tmp_path, text)), backoff)
        runtime.startService()
        started.append(runtime)
        if wait:
            await wait_for(
                lambda: all(
                    c.state.reason != "ContainerCreating" for p in runtime.pods() for c in p.containers.values()
                )
            )
        return runtime

    yield start
    for runtime in started:
        await runtime.stopService()


@pytest.fixture(scope="session")
def containerd(tmp_path_factory):
    """A real containerd for the whole session (its start-up and images
    cost a second); pods are per test (L{kubelet})."""
    from tests.containerd import Containerd

    if os.geteuid() != 0 or not shutil.which("containerd"):
        pytest.fail("the CRI tests need root and containerd: run scripts/test-deps.sh as root")
    runtime = Containerd(Path(tempfile.mkdtemp(prefix="podshell-containerd-")))
    try:
        runtime.start()
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture
def kubelet(containerd):
    """Plays the kubelet against L{containerd}; removes its pods after the test."""
    from tests.containerd import Kubelet

    player = Kubelet(containerd.endpoint)
    try:
        yield player
    finally:
        player.remove_all()
        player.close()
