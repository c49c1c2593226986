"""A gateway that learns pods and node agents from an API server (the
in-test one, on its host), routing ssh and kubectl to node agents on two
other hosts: no nodes: list.  What the API server reports is what the
gateway does: a pod not running yet is refused, and reachable once it
runs; a node whose agent is not ready says so, and is back when it is."""

from __future__ import annotations

import shutil
import time

import pytest

from .conftest import needs_root
from .support.cluster import PODS, Cluster, agent_pod, running
from .support.waiting import wait_until

pytestmark = needs_root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not shutil.which("ip"):
        pytest.fail("iproute2 is needed for the multi-host tests")
    c = Cluster(tmp_path_factory.mktemp("cluster-inventory"), inventory=True)
    yield c
    c.hosts.close()


def test_ssh_and_kubectl_reach_pods_where_the_api_server_says_they_run(cluster):
    for pod in ("alpha", "beta"):
        r = cluster.ssh.ssh(f"team-a.{pod}", "hostname")
        assert (r.returncode, r.stdout) == (0, f"{pod}\n".encode()), r.stderr
    listing = cluster.kubectl("get", "pods", "-n", "team-a", "-o", "wide")
    rows = {line.split()[0]: line.split() for line in listing.stdout.decode().splitlines()[1:]}
    assert (rows["alpha"][2], rows["alpha"][6], rows["beta"][6]) == ("Running", "node-1", "node-2"), listing
    r = cluster.kubectl("exec", "-n", "team-a", "beta", "--", "sh", "-c", "echo out; exit 3")
    assert (r.returncode, r.stdout) == (3, b"out\n"), r.stderr


def test_a_pod_is_reachable_once_the_api_server_reports_it_running(cluster):
    alpha = next(p for p in PODS["node-1"] if p["metadata"]["name"] == "alpha")
    cluster.report(running(alpha, "node-1", ready=False))
    wait_until(lambda: b"not running" in cluster.ssh.ssh("team-a.alpha", "true").stderr, 5, "alpha refused")
    cluster.report(running(alpha, "node-1"))
    reported = time.monotonic()
    wait_until(lambda: cluster.ssh.ssh("team-a.alpha", "true").returncode == 0, 5, "alpha reachable again")
    assert time.monotonic() - reported < 2.0  # an event, not a poll; the ssh logins are most of it


def test_a_node_whose_agent_is_not_ready_says_so_and_comes_back(cluster):
    address = cluster.hosts.address["node-2"]
    cluster.report(agent_pod("node-2", address, ready=False))
    try:
        wait_until(
            lambda: b"no node agent is ready on node node-2" in cluster.ssh.ssh("team-a.beta", "true").stderr,
            5,
            "beta refused with the reason",
        )
        r = cluster.ssh.ssh("team-a.alpha", "hostname")  # the other node is untouched
        assert (r.returncode, r.stdout) == (0, b"alpha\n"), r.stderr
    finally:
        cluster.report(agent_pod("node-2", address))
    wait_until(lambda: cluster.ssh.ssh("team-a.beta", "true").returncode == 0, 5, "beta back")


def test_every_session_the_gateway_opened_has_ended(cluster):
    """The refusals above end their sessions too: one left open would hold
    the gateway's shutdown for its whole grace."""

    def unended() -> set[str]:
        records = cluster.audit("gw")
        started = {r["id"] for r in records if r["event"] == "session.start"}
        return started - {r["id"] for r in records if r["event"] == "session.end"}

    assert cluster.audit("gw"), "the gateway audits its sessions"
    wait_until(lambda: not unended(), 5, "every session ended")
