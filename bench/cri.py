"""Exec into a CRI container: podshell's own path against the runtime's.

The kubelet runs an exec by asking the runtime (CRI C{Exec}) for a URL of
its streaming server and proxying the client to it; podshell enters the
container itself. Both are driven here by one small blocking WebSocket
client (C{v4.channel.k8s.io}, what both serve), so the client costs the
same on both sides; podshell's side also pays its TLS, token and policy
check, as a request through the API server would. C{runc exec} is the floor
the runtime itself stands on.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlsplit

import wsproto
import wsproto.events as ws

from podshell.node.runtime.cri import api_pb2 as cri
from podshell.node.runtime.cri.api_pb2_grpc import RuntimeServiceStub
from tests.containerd import Containerd, ContainerSpec, Kubelet
from tests.sshserver import PodshellServer, free_port

TOKEN = "bench-token-0123456789abcdef"
PROTOCOL = "v4.channel.k8s.io"
Record = Callable[[str, float, float, str, str, bool], None]


def exec_over_websocket(url: str, headers: list[tuple[str, str]], tls: ssl.SSLContext | None = None) -> bytes:
    """Run the exec at C{url}; its stdout, once the status says it ended well."""
    parts = urlsplit(url)
    raw = socket.create_connection((parts.hostname, parts.port), timeout=60)
    conn = tls.wrap_socket(raw, server_hostname=parts.hostname) if tls else raw
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    request = ws.Request(host=parts.netloc, target=target, subprotocols=[PROTOCOL], extra_headers=headers)
    conn.sendall(client.send(request))
    out, message, status = bytearray(), bytearray(), None
    try:
        while status is None:
            data = conn.recv(1 << 20)
            if not data:
                raise ConnectionError(f"{url}: closed before the status")
            client.receive_data(data)
            for event in client.events():
                if isinstance(event, ws.RejectConnection):
                    raise ConnectionError(f"{url}: refused with {event.status_code}")
                if isinstance(event, ws.BytesMessage):
                    message += event.data
                    if not event.message_finished:
                        continue
                    channel, payload = message[0], bytes(message[1:])
                    message = bytearray()
                    if channel == 1:
                        out += payload
                    elif channel == 3:
                        status = json.loads(payload)
                elif isinstance(event, ws.CloseConnection) and status is None:
                    raise ConnectionError(f"{url}: closed before the status")
        if status.get("status") != "Success":
            raise RuntimeError(f"{url}: {status}")
        return bytes(out)
    finally:
        conn.close()


class CRIBench:
    """A containerd with one pod, and podshell reading it."""

    def __init__(self, root: Path, cleanup: contextlib.ExitStack) -> None:
        self.containerd = Containerd(root / "containerd")
        cleanup.callback(self.containerd.stop)
        self.containerd.start()
        self.kubelet = Kubelet(self.containerd.endpoint)
        cleanup.callback(self.kubelet.close)
        pod = self.kubelet.run_pod("bench", "box", ContainerSpec("app"))
        self.container = pod.containers["app"]
        self.cri = RuntimeServiceStub(self.kubelet.client.channel)
        self.api_port = free_port()
        users = [{"name": "bench", "tokens": [TOKEN]}]
        policy = [{"subjects": ["user:bench"], "verbs": ["*"], "namespaces": ["*"]}]
        runtime = {"kind": "cri", "endpoint": self.containerd.endpoint}
        (root / "podshell").mkdir()
        self.podshell = PodshellServer(
            root / "podshell", [], users, policy, api=f"ssl:{self.api_port}:interface=127.0.0.1", runtime=runtime
        )
        cleanup.callback(self.podshell.stop)
        self.podshell.wait_ready(containers=0)
        self.tls = ssl.create_default_context(cafile=str(root / "podshell" / "state" / "ca.crt"))
        deadline = time.monotonic() + 10
        while True:  # the pod is listed within a poll
            try:
                self.podshell_exec(["true"])
                break
            except (ConnectionError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def podshell_exec(self, argv: list[str]) -> bytes:
        query = "&".join(f"command={quote(a)}" for a in argv) + "&stdout=true&container=app"
        url = f"https://127.0.0.1:{self.api_port}/api/v1/namespaces/bench/pods/box/exec?{query}"
        return exec_over_websocket(url, [("Authorization", f"Bearer {TOKEN}")], self.tls)

    def runtime_exec(self, argv: list[str]) -> bytes:
        request = cri.ExecRequest(container_id=self.container, cmd=argv, stdout=True)
        url = self.cri.Exec(request, timeout=10).url
        return exec_over_websocket(url, [])

    def runc_exec(self, argv: list[str]) -> bytes:
        root = self.containerd.root / "state" / "runc" / "k8s.io"
        done = subprocess.run(["runc", "--root", str(root), "exec", self.container, *argv], capture_output=True)
        if done.returncode != 0:
            raise RuntimeError(f"runc exec: {done.stderr.decode()}")
        return done.stdout


def run(record: Record, quick: bool, median_ms: Callable[[Callable[[], object], int], float]) -> None:
    times = 10 if quick else 30
    size = (64 if quick else 512) << 20
    root = Path(tempfile.mkdtemp(prefix="podshell-bench-cri-"))
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, root, ignore_errors=True)  # last: containerd unmounts its own first
        bench = CRIBench(root, cleanup)
        paths = {"podshell": bench.podshell_exec, "runtime": bench.runtime_exec, "runc": bench.runc_exec}
        latency = {name: median_ms(lambda p=path: p(["true"]), times) for name, path in paths.items()}
        record("CRI exec latency (true), podshell vs the runtime's Exec", latency["podshell"],
               latency["runtime"], "ms", "<=0.5", False)  # fmt: skip
        record("CRI exec latency (true), podshell vs runc exec", latency["podshell"], latency["runc"],
               "ms", "<=1.0", False)  # fmt: skip
        command = ["head", "-c", str(size), "/dev/zero"]
        rates = {}
        for name in ("podshell", "runtime"):
            started = time.perf_counter()
            got = paths[name](command)
            rates[name] = round(len(got) / (time.perf_counter() - started) / 1e6, 1)
            assert len(got) == size, (name, len(got))
        record("CRI exec stdout, podshell vs the runtime's Exec", rates["podshell"], rates["runtime"],
               "MB/s", ">=1.0", True)  # fmt: skip
