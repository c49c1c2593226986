"""The CRI runtime's event watch against a gRPC server that has no event
service (as CRI-O has none): it says so once and leaves listing to the interval."""

from __future__ import annotations

from concurrent import futures

import grpc
import pytest_twisted
from twisted.internet import reactor
from twisted.logger import globalLogPublisher

from podshell.node.runtime.cri.runtime import CRIRuntime

from .conftest import wait_for


@pytest_twisted.ensureDeferred
async def test_a_runtime_without_an_event_stream_is_listed_on_the_interval_alone(tmp_path):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    endpoint = f"unix://{tmp_path}/crio.sock"
    server.add_insecure_port(endpoint)
    server.start()
    said: list[str] = []

    def observer(event: dict) -> None:
        if "has no event stream" in event.get("log_format", ""):
            said.append(event["log_format"].format(**event))

    globalLogPublisher.addObserver(observer)
    runtime = CRIRuntime(reactor, endpoint, interval=3600)
    runtime.startService()
    try:
        await wait_for(lambda: said, timeout=5, what="the line about the event stream")
        assert said == [f"the container runtime at {endpoint} has no event stream: listing every 3600s"]
        watch = runtime._watch._thread
        assert watch is not None
        watch.join(timeout=5)
        assert not watch.is_alive()
    finally:
        globalLogPublisher.removeObserver(observer)
        await runtime.stopService()
        server.stop(None)
