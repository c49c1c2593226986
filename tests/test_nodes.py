"""A gateway and two node agents on three hosts (network namespaces on a
bridge), set up the way the README tells an operator to: ssh, kubectl and
the CLI reach pods on both nodes through the gateway; nobody but a gateway
gets into a node agent; losing a node ends its sessions with a clear error
and leaves the other node's alone; the audit logs name the person."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from podshell.protocols.asciicast import read_events

from .conftest import PYTHON, needs_root
from .podserver import pattern
from .support.cluster import NODE_PORT, PODS, Cluster, wait_log
from .support.waiting import wait_until

pytestmark = needs_root


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not shutil.which("ip"):
        pytest.fail("iproute2 is needed for the multi-host tests")
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    yield c
    c.hosts.close()


def test_ssh_reaches_pods_on_both_nodes(cluster):
    for name in ("alpha", "beta"):
        r = cluster.ssh.ssh(f"team-a.{name}", "hostname; echo to-stderr >&2; exit 3")
        assert (r.returncode, r.stdout, r.stderr) == (3, f"{name}\n".encode(), b"to-stderr\n")
    r = cluster.ssh.ssh("team-a.beta", "tty; stty size", "-tt", "-o", "SetEnv=TERM=vt100")
    assert r.returncode == 0 and re.match(rb"/dev/pts/\d+\r\n\d+ \d+\r\n", r.stdout), r
    r = cluster.ssh.ssh("team-a.beta", "kill -TERM $$")
    assert r.returncode == 255  # OpenSSH's code for a command killed by a signal (exit-signal)
    r = cluster.ssh.ssh("team-a.beta", "wc -c", input=b"x" * 3_000_000)
    assert r.stdout.strip() == b"3000000"


def test_scp_to_a_pod_on_another_node(cluster, tmp_path):
    data = tmp_path / "data"
    data.write_bytes(pattern(2_000_000))
    opts = [*cluster.ssh.options(), "-P", "2222"]
    up = cluster.hosts.run("gw", "scp", *opts, str(data), "team-a.beta@127.0.0.1:/tmp/copied")
    assert up.returncode == 0, up.stderr
    back = tmp_path / "back"
    down = cluster.hosts.run("gw", "scp", *opts, "team-a.beta@127.0.0.1:/tmp/copied", str(back))
    assert down.returncode == 0, down.stderr
    assert back.read_bytes() == data.read_bytes()


def test_ssh_port_forward_into_a_pod_on_another_node(cluster):
    code = f"""
import socket, subprocess
from podserver import download, pattern
from sshserver import wait_port
ssh = subprocess.Popen({cluster.ssh.ssh_argv("team-a.beta", "-N", "-L", "17002:localhost:7002", "-L", "17001:localhost:7001")!r})
try:
    wait_port(17002)
    print(download(17002, 20_000_000))
    with socket.create_connection(("127.0.0.1", 17001)) as s:
        s.sendall(pattern(5_000_000))
        s.shutdown(socket.SHUT_WR)
        print(b"".join(iter(lambda: s.recv(65536), b"")).decode())
finally:
    ssh.terminate()
"""
    r = cluster.python(code, timeout=120)
    assert r.returncode == 0, r.stderr
    downloaded, uploaded = r.stdout.decode().splitlines()
    import hashlib

    assert downloaded == str((20_000_000, hashlib.sha256(pattern(20_000_000)).hexdigest()))
    assert uploaded == f"5000000 {hashlib.sha256(pattern(5_000_000)).hexdigest()}"


def test_ssh_forward_to_a_closed_port_is_refused_with_a_reason(cluster):
    r = cluster.ssh.ssh("team-a.beta", None, "-W", "localhost:9", "-o", "LogLevel=INFO", input=b"")
    assert b"podshell: nothing listens on localhost:9 in pod team-a/beta" in r.stderr, r.stderr


def test_the_same_pod_on_two_nodes_is_a_reported_conflict(cluster):
    r = cluster.ssh.ssh("team-a.twin", "true")
    assert b"pod team-a/twin is reported by nodes node-1 and node-2" in r.stderr, r.stderr
    r = cluster.kubectl("get", "pod", "-n", "team-a", "twin")
    assert b"pod team-a/twin is reported by nodes node-1 and node-2" in r.stderr, r.stderr


def test_kubectl_and_the_cli_reach_pods_on_both_nodes(cluster):
    listing = cluster.kubectl("get", "pods", "-n", "team-a", "-o", "wide")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split() for line in listing.stdout.decode().splitlines()[1:]}
    assert rows["alpha"][6] == "node-1" and rows["beta"][6] == "node-2", listing.stdout
    assert "secret" not in listing.stdout.decode()  # team-b is not alice's
    for name, version in (("alpha", "1.33"), ("beta", "1.33"), ("beta", "1.20")):
        r = cluster.kubectl("exec", "-n", "team-a", name, "--", "sh", "-c", "hostname; exit 4", version=version)
        assert (r.returncode, r.stdout) == (4, f"{name}\n".encode()), r.stderr
        stdin = b"y" * 1_000_000
        r = cluster.kubectl("exec", "-i", "-n", "team-a", name, "--", "wc", "-c", input=stdin, version=version)
        assert r.stdout.strip() == b"1000000", r.stderr
        r = cluster.cli("exec", f"team-a/{name}", "--", "hostname")
        assert (r.returncode, r.stdout) == (0, f"{name}\n".encode()), r.stderr
    r = cluster.kubectl("exec", "-n", "team-b", "secret", "--", "true")
    assert r.returncode != 0 and b'User "alice" cannot get resource "pods" in namespace "team-b"' in r.stderr


@pytest.mark.parametrize("version", ["1.33", "1.20"])
def test_kubectl_port_forward_to_a_pod_on_another_node(cluster, version):
    argv = [*cluster.kubectl_argv(version), "port-forward", "-n", "team-a", "beta", "27002:7002"]
    code = f"""
import subprocess, time
from podserver import download
pf = subprocess.Popen({argv!r}, stdout=subprocess.PIPE)
try:
    pf.stdout.readline()  # Forwarding from ...
    print(download(27002, 10_000_000))
finally:
    pf.terminate()
"""
    r = cluster.python(code, timeout=120)
    assert r.returncode == 0, r.stderr
    import hashlib

    assert r.stdout.decode().strip() == str((10_000_000, hashlib.sha256(pattern(10_000_000)).hexdigest()))


HANDSHAKE = """
import json, ssl, socket, sys
ctx = ssl.create_default_context(cafile=sys.argv[1])
ctx.check_hostname = False
if len(sys.argv) > 3:
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
try:
    with socket.create_connection((sys.argv[2], {port}), timeout=10) as raw:
        with ctx.wrap_socket(raw) as s:
            s.sendall(b"GET /api/v1/pods HTTP/1.1\\r\\nHost: node\\r\\nConnection: close\\r\\n\\r\\n")
            answer = b"".join(iter(lambda: s.recv(65536), b""))
    print(answer.split(b"\\r\\n", 1)[0].decode() if answer else "closed")
except (ssl.SSLError, OSError) as e:
    print("refused:", type(e).__name__)
""".replace("{port}", str(NODE_PORT))


def test_only_a_gateway_gets_into_a_node_agent(cluster):
    pki, other = cluster.root / "pki", cluster.root / "other"
    node = cluster.hosts.address["node-1"]

    def attempt(*cert: Path) -> str:
        r = cluster.hosts.run("gw", PYTHON, "-c", HANDSHAKE, str(pki / "ca.crt"), node, *map(str, cert))
        assert r.returncode == 0, r.stderr
        return r.stdout.decode().strip()

    assert attempt(pki / "gw-1.crt", pki / "gw-1.key") == "HTTP/1.1 200"  # the control: a gateway gets in
    for cert in ((), (pki / "node-2.crt", pki / "node-2.key"), (other / "gw-1.crt", other / "gw-1.key")):
        assert attempt(*cert).startswith(("refused:", "closed")), cert
    # A gateway's request must say on whose behalf it comes.
    r = cluster.python(
        f"""
import ssl, socket
ctx = ssl.create_default_context(cafile={str(pki / "ca.crt")!r}); ctx.check_hostname = False
ctx.load_cert_chain({str(pki / "gw-1.crt")!r}, {str(pki / "gw-1.key")!r})
with ctx.wrap_socket(socket.create_connection(({node!r}, {NODE_PORT}))) as s:
    s.sendall(b"GET /api/v1/namespaces/team-a/pods/alpha/exec?command=id&stdout=1 HTTP/1.1\\r\\nHost: n\\r\\n"
              b"Connection: Upgrade\\r\\nUpgrade: websocket\\r\\nSec-WebSocket-Version: 13\\r\\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Protocol: v5.channel.k8s.io\\r\\n\\r\\n")
    print(s.recv(65536).decode())
"""
    )
    assert "403" in r.stdout.decode() and "Impersonate-User" in r.stdout.decode(), r


def test_the_audit_logs_on_gateway_and_node_name_the_person(cluster):
    cluster.ssh.ssh("team-a.alpha", "echo audited")
    gateway = [e for e in cluster.audit("gw") if e.get("command") == ["echo audited"]]
    node = [e for e in cluster.audit("node-1") if e.get("command") == ["/bin/sh", "-c", "echo audited"]]
    assert gateway and gateway[0]["user"] == "alice" and gateway[0]["via"] == "ssh"
    assert node and node[0]["user"] == "alice" and node[0]["groups"] == ["dev"]
    assert node[0]["via"].startswith("gateway gw-1 (") and node[0]["from"] == "127.0.0.1"


def test_losing_a_node_ends_its_sessions_and_spares_the_others(cluster):
    beta = subprocess.Popen(
        [*cluster.ssh.ssh_argv("team-a.beta"), "echo up; sleep 120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    alpha = subprocess.Popen(
        [*cluster.ssh.ssh_argv("team-a.alpha"), "sleep 4; echo alive"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert beta.stdout is not None and beta.stdout.readline() == b"up\n", beta.communicate()
    cluster.nodes["node-2"].kill()
    cluster.nodes["node-2"].wait()
    started = time.monotonic()
    _, err = beta.communicate(timeout=20)
    assert time.monotonic() - started < 5
    assert b"lost the connection to node node-2" in err, err
    out, err = alpha.communicate(timeout=30)
    assert (alpha.returncode, out) == (0, b"alive\n"), err
    wait_log(cluster.gw_log, "cannot reach node node-2")
    r = cluster.ssh.ssh("team-a.beta", "true")
    assert r.returncode != 0 and b"no pod team-a/beta; node node-2 is unreachable (cannot reach" in r.stderr
    listing = cluster.kubectl("get", "pods", "-n", "team-a").stdout.decode()
    assert "alpha" in listing and "beta" not in listing
    # Back again: its pods return.
    cluster.start_node("node-2")
    wait_log(cluster.gw_log, rf"node node-2 at \S+: {len(PODS['node-2'])} pods", count=2)

    def back() -> bool:
        r = cluster.ssh.ssh("team-a.beta", "hostname")
        # The first listing after the restart may predate its containers: "is not running (ContainerCreating)".
        assert r.returncode == 0 or b"is not running" in r.stderr, r.stderr
        return (r.returncode, r.stdout) == (0, b"beta\n")

    wait_until(back, 10, "ssh to reach team-a/beta again")


def test_a_session_through_the_gateway_is_recorded_once_at_the_gateway(cluster):
    r = cluster.ssh.ssh("team-a.beta.app+nobody", "echo out; echo err >&2; exit 5")
    assert (r.returncode, r.stdout, r.stderr) == (5, b"out\n", b"err\n")
    ends = [e for e in cluster.audit("gw") if e["event"] == "session.end" and e.get("run_as") == "nobody"]
    cast = cluster.root / "gw" / "state" / "recordings" / f"{ends[-1]['id']}.cast"
    head, events = read_events(cast.read_bytes().splitlines())
    assert (head["podshell"]["node"], head["podshell"]["session"]) == ("node-2", ends[-1]["id"])
    assert [(c, d) for _, c, d in events] == [("o", "out\n"), ("e", "err\n"), ("x", "exit code 5")]
    assert ends[-1]["recording_sha256"]
    assert not (cluster.root / "node-2" / "state" / "recordings").exists()  # the node agent records nothing


def test_a_recorded_api_stream_is_served_at_the_gateway_not_spliced_past_it(cluster):
    """The API door hands streams to the node agent unread; one to record
    is served at the gateway instead, through the node hop."""
    r = cluster.cli("exec", "-u", "nobody", "team-a/beta", "--", "sh", "-c", "echo api; exit 3")
    assert (r.returncode, r.stdout) == (3, b"api\n"), r.stderr
    ends = [e for e in cluster.audit("gw") if e["event"] == "session.end" and e.get("via") != "ssh"]
    cast = cluster.root / "gw" / "state" / "recordings" / f"{ends[-1]['id']}.cast"
    _, events = read_events(cast.read_bytes().splitlines())
    assert [(c, d) for _, c, d in events] == [("o", "api\n"), ("x", "exit code 3")]
