"""A node agent on a real containerd behind a gateway: the kubelet's pods
are reached through the gateway → node hop by ssh, kubectl and the CLI,
confined as the container is, beside a node agent on the local runtime."""

from __future__ import annotations

import shutil

import pytest

from .conftest import needs_root
from .containerd import ContainerSpec
from .support.cluster import Cluster
from .support.waiting import wait_until

pytestmark = needs_root
HTTPD = ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/etc"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, containerd):
    if not shutil.which("ip"):
        pytest.fail("iproute2 is needed for the multi-host tests")
    c = Cluster(tmp_path_factory.mktemp("cluster-cri"), cri={"node-2": containerd.endpoint})
    yield c
    c.hosts.close()


def listed(cluster, name: str) -> bool:
    got = cluster.kubectl("get", "pod", "-n", "team-a", name, "-o", "jsonpath={.status.phase}")
    return got.returncode == 0 and got.stdout == b"Running"


def test_the_kubelets_pods_through_the_gateway(cluster, kubelet):
    kubelet.run_pod("team-a", "cri-web", ContainerSpec("httpd", command=HTTPD))
    wait_until(lambda: listed(cluster, "cri-web"), timeout=15, what="the CRI pod listed by the gateway")
    listing = cluster.kubectl("get", "pods", "-n", "team-a", "-o", "wide")
    rows = {line.split()[0]: line.split() for line in listing.stdout.decode().splitlines()[1:]}
    assert rows["cri-web"][6] == "node-2" and rows["alpha"][6] == "node-1", listing.stdout
    assert "beta" not in rows  # node-2's own pods are the kubelet's now

    r = cluster.ssh.ssh("team-a.cri-web", "hostname; cat /proc/1/cmdline | tr '\\0' ' '; exit 5")
    assert (r.returncode, r.stdout.decode().splitlines()) == (5, ["cri-web", " ".join(HTTPD) + " "]), r.stderr
    # Confined as the container: the kubelet asked for RuntimeDefault seccomp.
    r = cluster.ssh.ssh("team-a.cri-web", "grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status")
    assert r.stdout.decode().split() == ["NoNewPrivs:", "0", "Seccomp:", "2"], r.stderr

    payload = b"z" * 3_000_001
    for version in ("1.33", "1.20"):
        r = cluster.kubectl("exec", "-i", "-n", "team-a", "cri-web", "--", "wc", "-c", input=payload, version=version)
        assert (r.returncode, r.stdout.strip()) == (0, b"3000001"), r.stderr
    r = cluster.cli("exec", "team-a/cri-web", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (r.returncode, r.stdout, r.stderr) == (3, b"out\n", b"err\n")
    # Another user of the container, through the hop, by each door that can ask.
    r = cluster.ssh.ssh("team-a.cri-web+app", "id -u; grep ^CapEff: /proc/self/status")
    assert (r.returncode, r.stdout) == (0, b"1000\nCapEff:\t0000000000000000\n"), r.stderr
    r = cluster.cli("exec", "-u", "app", "team-a/cri-web", "--", "id", "-un")
    assert (r.returncode, r.stdout) == (0, b"app\n"), r.stderr
    r = cluster.cli("exec", "-u", "nobody", "team-a/cri-web", "--", "id", "-un")
    assert r.returncode != 0 and b"alice may not exec in team-a/cri-web/httpd as nobody" in r.stderr

    # -L into the pod's own network, the CNI's, through the hop.
    code = f"""
import subprocess, urllib.request
from sshserver import wait_port
ssh = subprocess.Popen({cluster.ssh.ssh_argv("team-a.cri-web", "-N", "-L", "18080:localhost:8080")!r})
try:
    wait_port(18080)
    print(urllib.request.urlopen("http://127.0.0.1:18080/group", timeout=10).read().decode())
finally:
    ssh.terminate()
"""
    r = cluster.python(code, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "extra:x:2000:app" in r.stdout.decode(), r.stdout  # the image's /etc/group, not the host's
