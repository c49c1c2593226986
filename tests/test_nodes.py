"""A gateway and two node agents on three hosts (network namespaces on a
bridge), set up the way the README tells an operator to: ssh, kubectl and
the CLI reach pods on both nodes through the gateway; nobody but a gateway
gets into a node agent; losing a node ends its sessions with a clear error
and leaves the other node's alone; the audit logs name the person."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from podshell.core import kubeconfig

from .conftest import PYTHON, needs_root, pod
from .hosts import Hosts
from .podserver import pattern
from .sshserver import PODSERVER, TWISTD, Client, keygen
from .test_kube_api import kubectl_binary

pytestmark = needs_root

BIN = Path(sys.executable).parent
PODSHELL = str(BIN / "podshell")
KUBECTL = "1.33"  # WebSocket; 1.20 speaks only SPDY: both are spliced to the node as they come
TOKEN = "alice-token-0123456789abcdef"
TESTS = str(Path(__file__).parent)
NODE_PORT = 10250
TWIN = pod("twin", {"name": "app", "command": ["sleep", "3600"]}, namespace="team-a")  # on both: a conflict
PODS = {
    "node-1": [pod("alpha", {"name": "app", "command": [PYTHON, PODSERVER]}, namespace="team-a"), TWIN],
    "node-2": [
        pod("beta", {"name": "app", "command": [PYTHON, PODSERVER]}, namespace="team-a"),
        pod("secret", {"name": "app", "command": ["sleep", "3600"]}, namespace="team-b"),
        TWIN,
    ],
}


def podshell(*args: str, cwd: Path) -> None:
    subprocess.run([PODSHELL, *args], cwd=cwd, check=True, capture_output=True)


def wait_log(path: Path, pattern: str, count: int = 1, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(re.findall(pattern, path.read_text())) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in {path}:\n{path.read_text() if path.exists() else ''}")


class Cluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.hosts = Hosts(["gw", "node-1", "node-2"])
        try:
            self._setup()
        except BaseException:
            self.hosts.close()
            raise

    def _setup(self) -> None:
        root, hosts = self.root, self.hosts
        # The operator's steps, as the README gives them.
        podshell("ca", "init", "--dir", "pki", cwd=root)
        podshell("ca", "issue", "--dir", "pki", "--name", "gw-1", "--role", "gateway", cwd=root)
        for name in PODS:
            podshell(
                "ca", "issue", "--dir", "pki", "--name", name, "--role", "node", "--san", hosts.address[name], cwd=root
            )
        # An impostor: a gateway certificate from some other CA.
        podshell("ca", "init", "--dir", "other", cwd=root)
        podshell("ca", "issue", "--dir", "other", "--name", "gw-1", "--role", "gateway", cwd=root)
        self.nodes: dict[str, subprocess.Popen] = {}
        for name, pods in PODS.items():
            (root / name).mkdir()
            (root / name / "pods.yaml").write_text(yaml.safe_dump_all(pods))
            config = {
                "role": "node",
                "state_dir": "./state",
                "node": {"name": name, "listen": f"tcp:{NODE_PORT}:interface={hosts.address[name]}"},
                "tls": {"ca": "../pki/ca.crt", "cert": f"../pki/{name}.crt", "key": f"../pki/{name}.key"},
                "runtime": {"pods": "./pods.yaml"},
            }
            (root / name / "podshell.yaml").write_text(yaml.safe_dump(config))
            self.start_node(name)
        self.key = root / "alice"
        gateway = {
            "role": "gateway",
            "state_dir": "./state",
            "ssh": {"listen": "tcp:2222:interface=127.0.0.1"},
            "api": {"listen": "ssl:8443:interface=127.0.0.1"},
            "users": [{"name": "alice", "groups": ["dev"], "ssh_keys": [keygen(self.key)], "tokens": [TOKEN]}],
            "policy": [{"subjects": ["group:dev"], "verbs": ["*"], "namespaces": ["team-a"]}],
            "tls": {"ca": "../pki/ca.crt", "cert": "../pki/gw-1.crt", "key": "../pki/gw-1.key"},
            "nodes": [{"name": n, "address": f"{hosts.address[n]}:{NODE_PORT}"} for n in PODS],
            "refresh": 0.5,
        }
        (root / "gw").mkdir()
        (root / "gw" / "podshell.yaml").write_text(yaml.safe_dump(gateway))
        self.gw_log = root / "gw" / "twistd.log"
        self.gateway = hosts.start("gw", self.twistd("gw"), self.gw_log, root / "gw")
        wait_log(self.gw_log, "Kubernetes API listening")
        for name, pods in PODS.items():
            wait_log(self.gw_log, rf"node {name} at \S+: {len(pods)} pods")
        # ssh, kubectl and the CLI, all on the gateway's host.
        self.port = 2222
        self.known_hosts = root / "known_hosts"
        host_key = (root / "gw" / "state" / "ssh_host_ed25519_key.pub").read_text().split()[:2]
        self.known_hosts.write_text(f"[127.0.0.1]:2222 {' '.join(host_key)}\n")
        self.ssh = Client(self, self.key, prefix=hosts.argv("gw"))  # type: ignore[arg-type]
        self.ca = root / "gw" / "state" / "ca.crt"
        self.kubeconfig = root / "kubeconfig"
        kubeconfig.write(
            self.kubeconfig, kubeconfig.render("https://127.0.0.1:8443", "alice", TOKEN, self.ca.read_bytes())
        )

    def twistd(self, name: str) -> list[str]:
        return [TWISTD, "-n", "--pidfile=", "podshell", "--config", str(self.root / name / "podshell.yaml")]

    def start_node(self, name: str) -> None:
        log = self.root / name / "twistd.log"
        before = log.read_text().count("node agent listening") if log.exists() else 0
        self.nodes[name] = self.hosts.start(name, self.twistd(name), log, self.root / name)
        wait_log(log, "node agent listening", before + 1)
        wait_log(log, r"container \S+ started", len(PODS[name]) * (before + 1))

    def kubectl(self, *args: str, version: str = KUBECTL, **kw) -> subprocess.CompletedProcess:
        return self.hosts.run("gw", *self.kubectl_argv(version), *args, **kw)

    def kubectl_argv(self, version: str) -> list[str]:
        return [kubectl_binary(version), "--kubeconfig", str(self.kubeconfig)]

    def cli(self, *args: str, **kw) -> subprocess.CompletedProcess:
        connection = ["--server", "https://127.0.0.1:8443", "--token", TOKEN, "--certificate-authority", str(self.ca)]
        return self.hosts.run("gw", PODSHELL, args[0], *connection, *args[1:], **kw)

    def python(self, code: str, **kw) -> subprocess.CompletedProcess:
        """Python on the gateway's host, with the test helpers importable."""
        return self.hosts.run("gw", PYTHON, "-c", f"import sys; sys.path.insert(0, {TESTS!r})\n{code}", **kw)

    def audit(self, name: str) -> list[dict]:
        path = self.root / name / "state" / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


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
import hashlib, socket, subprocess, time
from podserver import download, pattern
ssh = subprocess.Popen({cluster.ssh.ssh_argv("team-a.beta", "-N", "-L", "17002:localhost:7002", "-L", "17001:localhost:7001")!r})
try:
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", 17002), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
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
    deadline = time.monotonic() + 10
    while (r := cluster.ssh.ssh("team-a.beta", "hostname")).returncode and time.monotonic() < deadline:
        # The first listing after the restart may predate its containers: "is not running (ContainerCreating)".
        assert b"is not running" in r.stderr, r.stderr
        time.sleep(0.2)
    assert (r.returncode, r.stdout) == (0, b"beta\n"), r.stderr
