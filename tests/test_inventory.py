"""A gateway's inventory from an API server: pods and node agents listed,
then watched over real TLS from the in-test API server (objects through the
official client's models), through the history falling away (410), the
server ending every watch, and the server going away and coming back."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

from podshell.gateway.kubernetes.client import APIServer, Credentials
from podshell.gateway.kubernetes.inventory import KubernetesInventory, slim
from podshell.gateway.routing import Cluster
from podshell.kube.objects import pod_table
from podshell.pki import cluster_ca as pki
from podshell.pki.mutual import ClusterIdentity

from .support.apiserver import APIServer as FakeAPIServer
from .support.apiserver import Store

TOKEN = "gateway-token-0123456789"
AGENTS = "app.kubernetes.io/component=node-agent"


def pod(ns: str, name: str, node: str | None, running: bool = True, labels: dict | None = None, ip: str = "") -> dict:
    state = {"running": {"startedAt": "2026-12-04T10:00:00Z"}} if running else {"waiting": {"reason": "Pulling"}}
    status: dict = {
        "phase": "Running" if running else "Pending",
        "containerStatuses": [
            {
                "name": "app",
                "state": state,
                "ready": running,
                "restartCount": 0,
                "image": "busybox",
                "imageID": "",
                "containerID": "",
            }
        ],
    }
    if ip:
        status |= {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if running else "False"}]}
    spec: dict = {"containers": [{"name": "app", "image": "busybox"}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": ns, "labels": labels or {}}, "spec": spec, "status": status}


def agent(node: str, ip: str, ready: bool = True) -> dict:
    return pod("podshell", f"agent-{node}", node, ready, {"app.kubernetes.io/component": "node-agent"}, ip)


async def until(what: str, check, timeout: float = 5.0) -> float:
    """Seconds until C{check()} holds, with the reactor running."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s: {what}")
        d: Deferred[None] = Deferred()
        reactor.callLater(0.01, d.callback, None)
        await d
    return time.monotonic() - start


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    pki.init(root)
    pki.issue_for(root, "api", "node", ["127.0.0.1"])
    pki.issue_for(root, "gw-1", "gateway", [])
    return root


class Server:
    def __init__(self, pki_dir: Path) -> None:
        self.store = Store(reactor)
        self.pki = pki_dir
        self.port = None
        self.number = 0

    async def start(self) -> None:
        cert = ssl.PrivateCertificate.loadPEM((self.pki / "api.crt").read_bytes() + (self.pki / "api.key").read_bytes())
        endpoint = SSL4ServerEndpoint(reactor, self.number, cert.options(), interface="127.0.0.1")
        self.site = _Tracked(FakeAPIServer(self.store, {TOKEN}))
        self.port = await endpoint.listen(self.site)
        self.number = self.port.getHost().port

    async def stop(self) -> None:
        """As a server going away does: every connection closes."""
        await maybeDeferred(self.port.stopListening)
        for connection in list(self.site.connections):
            connection.transport.abortConnection()


class _Channel(HTTPChannel):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.site.connections.append(self)

    def connectionLost(self, reason) -> None:
        self.site.connections.remove(self)
        super().connectionLost(reason)


class _Tracked(Site):
    noisy = False
    protocol = _Channel

    def __init__(self, root) -> None:
        super().__init__(root)
        self.connections: list = []


@pytest.fixture
def server(pki_dir):
    s = Server(pki_dir)
    pytest_twisted.blockon(Deferred.fromCoroutine(s.start()))
    yield s
    if s.port.connected:
        pytest_twisted.blockon(Deferred.fromCoroutine(s.stop()))


def inventory(server: Server, pki_dir: Path, token: str = TOKEN) -> KubernetesInventory:
    credentials = Credentials(f"https://127.0.0.1:{server.number}", (pki_dir / "ca.crt").read_bytes(), token)
    identity = ClusterIdentity.load(pki_dir / "ca.crt", pki_dir / "gw-1.crt", pki_dir / "gw-1.key", "gateway")
    return KubernetesInventory(reactor, APIServer(reactor, credentials), identity, "podshell", AGENTS, 10350)


@pytest_twisted.ensureDeferred
async def test_pods_and_agents_are_listed_then_followed_as_they_change(server, pki_dir):
    for i in range(1203):  # more than two pages
        server.store.put(pod("team-a", f"web-{i}", f"node-{i % 3}"))
    server.store.put(pod("team-a", "unscheduled", None, running=False))
    server.store.put(agent("node-0", "10.0.0.10"))
    server.store.put(agent("node-1", "10.0.0.11", ready=False))
    inv = inventory(server, pki_dir)
    cluster = Cluster(inv.nodes, None, inv.unreachable)
    inv.startService()
    try:
        await inv.synced()
        assert len(inv.pods.objects) == 1205  # the agents are pods too; unscheduled is not kept
        assert sorted(inv.nodes) == ["node-0", "node-1", "node-2"]
        assert sum(r == "GET /api/v1/pods" for r in server.store.requests) == 3  # three pages
        assert (inv.nodes["node-0"].host, inv.nodes["node-0"].problem) == ("10.0.0.10", None)
        assert inv.nodes["node-1"].host is None
        assert "no node agent is ready on node node-1" in (inv.nodes["node-1"].problem or "")
        assert cluster.resolve("team-a", "web-4").node == "node-1"
        assert cluster.container_names("team-a", "unscheduled") is None
        # kubectl get pods through the gateway: the table of the slim pods.
        table = pod_table(cluster.pods("team-a")[:2], datetime.now(UTC))
        assert [r["cells"][:3] + r["cells"][6:7] for r in table["rows"]] == [
            ["web-0", "1/1", "Running", "node-0"],
            ["web-1", "1/1", "Running", "node-1"],
        ]

        # A pod reported running is routable at the next event, well within a second.
        server.store.put(pod("team-b", "late", "node-2", running=False))
        await until("late is known", lambda: cluster.container_names("team-b", "late") == ["app"])
        with pytest.raises(Exception, match="not running"):
            cluster.resolve("team-b", "late")
        server.store.put(pod("team-b", "late", "node-2"))
        took = await until("late runs", lambda: _runs(cluster, "team-b", "late"))
        assert took < 1.0
        # The agent of node-1 turns ready; node-2's pods move; a deleted pod is gone.
        server.store.put(agent("node-1", "10.0.0.11"))
        await until("node-1 has its agent", lambda: inv.nodes["node-1"].host == "10.0.0.11")
        server.store.delete("team-a", "web-0")
        await until("web-0 is gone", lambda: cluster.container_names("team-a", "web-0") is None)
    finally:
        inv.stopService()


def _runs(cluster: Cluster, ns: str, name: str) -> bool:
    try:
        cluster.resolve(ns, name)
    except Exception:
        return False
    return True


@pytest_twisted.ensureDeferred
async def test_a_watch_outlived_by_the_history_lists_again_and_misses_nothing(server, pki_dir):
    server.store.put(pod("team-a", "one", "node-0"))
    inv = inventory(server, pki_dir)
    inv.startService()
    try:
        await inv.synced()
        lists = sum(r == "GET /api/v1/pods" for r in server.store.requests)
        # Ended watches resume from where they were, without a new list.
        server.store.drop_watches()
        server.store.put(pod("team-a", "two", "node-0"))
        await until("two is seen", lambda: ("team-a", "two") in inv.pods.objects)
        assert sum(r == "GET /api/v1/pods" for r in server.store.requests) == lists
        # The history compacted and the watch dropped: what changed meanwhile
        # is only in a new list, and the 410 makes one.
        inv.pods.stop()
        server.store.put(pod("team-a", "three", "node-1"))
        server.store.delete("team-a", "one")
        server.store.compact()
        inv.pods._stopped = False
        inv.pods._watch()
        await until("three is seen", lambda: ("team-a", "three") in inv.pods.objects)
        assert ("team-a", "one") not in inv.pods.objects
        assert sum(r == "GET /api/v1/pods" for r in server.store.requests) == lists + 1
    finally:
        inv.stopService()


@pytest_twisted.ensureDeferred
async def test_an_api_server_away_is_a_problem_said_and_its_return_is_followed(server, pki_dir):
    server.store.put(pod("team-a", "one", "node-0"))
    inv = inventory(server, pki_dir)
    inv.startService()
    try:
        await inv.synced()
        assert inv.problem is None
        await server.stop()
        await until("the problem is said", lambda: inv.problem is not None)
        assert f"cannot watch pods at https://127.0.0.1:{server.number}" in inv.problem
        assert ("team-a", "one") in inv.pods.objects  # what was known stays known
        server.store.put(pod("team-a", "two", "node-0"))
        await server.start()
        await until("back", lambda: ("team-a", "two") in inv.pods.objects, timeout=10)
        await until("healthy", lambda: inv.problem is None)
    finally:
        inv.stopService()


@pytest_twisted.ensureDeferred
async def test_a_token_the_api_server_refuses_is_the_problem_it_says(server, pki_dir):
    inv = inventory(server, pki_dir, token="wrong-token-0123456789")
    inv.startService()
    try:
        await until("refused", lambda: inv.problem is not None and "HTTP 401" in inv.problem)
        assert "cannot list pods" in inv.problem
    finally:
        inv.stopService()


def test_a_gateway_keeps_of_a_pod_what_it_routes_and_lists_by():
    full = pod("team-a", "web", "node-0", labels={"app": "web"})
    full["metadata"]["annotations"] = {"kubectl.kubernetes.io/default-container": "app", "huge": "x" * 10_000}
    full["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]
    full["spec"]["containers"][0]["env"] = [{"name": "A", "value": "b"}]
    kept = slim(full)
    assert kept is not None
    assert kept["metadata"] == {
        "name": "web",
        "namespace": "team-a",
        "labels": {"app": "web"},
        "annotations": {"kubectl.kubernetes.io/default-container": "app"},
    }
    assert kept["spec"] == {"nodeName": "node-0", "containers": [{"name": "app", "image": "busybox"}]}
    assert kept["status"]["containerStatuses"][0]["state"] == {"running": {"startedAt": "2026-12-04T10:00:00Z"}}
    assert slim(pod("team-a", "pending", None)) is None
