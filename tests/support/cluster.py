"""A gateway and two node agents on three hosts (network namespaces on a
bridge), set up the way the README tells an operator to; ssh, kubectl and
the CLI run on the gateway's host."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from podshell.core import kubeconfig

from ..conftest import PYTHON, pod
from ..hosts import Hosts
from ..sshserver import PODSERVER, TWISTD, Client, keygen
from .cli import PODSHELL
from .kubectl import kubectl_binary
from .waiting import wait_until

KUBECTL = "1.33"  # WebSocket; 1.20 speaks only SPDY: both are spliced to the node as they come
TOKEN = "alice-token-0123456789abcdef"
TESTS = str(Path(__file__).parent.parent)  # where podserver.py is, for code run on the hosts
NODE_PORT = 10250
API_PORT = 6443
API_TOKEN = "gateway-serviceaccount-0123456789"
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
    assert PODSHELL, "the podshell console script is installed next to the interpreter"
    subprocess.run([PODSHELL, *args], cwd=cwd, check=True, capture_output=True)


def wait_log(path: Path, pattern: str, count: int = 1, timeout: float = 30) -> None:
    """Until C{pattern} is in the log C{count} times; the log in the failure."""

    def seen() -> bool:
        return path.exists() and len(re.findall(pattern, path.read_text())) >= count

    try:
        wait_until(seen, timeout, f"{count} of {pattern!r} in {path}")
    except AssertionError as e:
        raise AssertionError(f"{e}:\n{path.read_text() if path.exists() else ''}") from None


class Cluster:
    """C{cri} puts a node agent on a container runtime: C{{"node-2": "unix:///…"}}
    runs node-2 on that CRI socket (the kubelet's pods) instead of its L{PODS}."""

    def __init__(self, root: Path, cri: dict[str, str] | None = None, inventory: bool = False) -> None:
        """@param inventory: the gateway learns pods and agents from an
        in-test API server on its host (L{tests.support.apiserver}), not a nodes: list."""
        self.root = root
        self.cri = cri or {}
        self.inventory = inventory
        self.pods = {name: [] if name in self.cri else pods for name, pods in PODS.items()}
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
        for name, pods in self.pods.items():
            (root / name).mkdir()
            (root / name / "pods.yaml").write_text(yaml.safe_dump_all(pods))
            runtime = {"kind": "cri", "endpoint": self.cri[name]} if name in self.cri else {"pods": "./pods.yaml"}
            config = {
                "role": "node",
                "state_dir": "./state",
                "node": {"name": name, "listen": f"tcp:{NODE_PORT}:interface={hosts.address[name]}"},
                "tls": {"ca": "../pki/ca.crt", "cert": f"../pki/{name}.crt", "key": f"../pki/{name}.key"},
                "runtime": runtime,
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
            "policy": [
                {"subjects": ["group:dev"], "verbs": ["*"], "namespaces": ["team-a"]},
                {"subjects": ["group:dev"], "verbs": ["exec"], "namespaces": ["team-a"], "run_as": ["app"]},
                # Recorded (test_nodes): at the gateway, once; no other test runs as nobody in beta.
                {
                    "subjects": ["group:dev"],
                    "verbs": ["exec"],
                    "namespaces": ["team-a"],
                    "pods": ["beta"],
                    "run_as": ["nobody"],
                    "record": "required",
                },
            ],
            "tls": {"ca": "../pki/ca.crt", "cert": "../pki/gw-1.crt", "key": "../pki/gw-1.key"},
            "nodes": [{"name": n, "address": f"{hosts.address[n]}:{NODE_PORT}"} for n in PODS],
            "refresh": 0.5,
        }
        if self.inventory:
            del gateway["nodes"], gateway["refresh"]
            gateway["inventory"] = {
                "kind": "kubernetes",
                "kubeconfig": "../api.kubeconfig",
                "agents": {"port": NODE_PORT},
            }
            self._start_api_server()
        (root / "gw").mkdir()
        (root / "gw" / "podshell.yaml").write_text(yaml.safe_dump(gateway))
        self.gw_log = root / "gw" / "twistd.log"
        self.gateway = hosts.start("gw", self.twistd("gw"), self.gw_log, root / "gw")
        wait_log(self.gw_log, "Kubernetes API listening")
        for name, pods in self.pods.items():
            if self.inventory:
                wait_log(self.gw_log, rf"node {name}: agent at {hosts.address[name]}")
                continue
            count = r"\d+" if name in self.cri else str(len(pods))  # the kubelet's, however many
            wait_log(self.gw_log, rf"node {name} at \S+: {count} pods")
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

    def _start_api_server(self) -> None:
        """The API server on the gateway's host, holding what a kubelet would
        report: each node's pods running there, and each node's agent pod."""
        root, hosts = self.root, self.hosts
        podshell("ca", "issue", "--dir", "pki", "--name", "api", "--role", "node", "--san", "127.0.0.1", cwd=root)
        log = root / "api.log"
        argv = [PYTHON, "-m", "tests.support.apiserver", "--listen", f"127.0.0.1:{API_PORT}"]
        argv += ["--cert", str(root / "pki" / "api.crt"), "--key", str(root / "pki" / "api.key"), "--token", API_TOKEN]
        hosts.start("gw", argv, log, Path(TESTS).parent)
        wait_log(log, "API server listening")
        kubeconfig.write(
            root / "api.kubeconfig",
            kubeconfig.render(self.api_url, "gateway", API_TOKEN, (root / "pki" / "ca.crt").read_bytes()),
        )
        reported = [running(m, name) for name, pods in self.pods.items() for m in pods if m is not TWIN]
        self.report(*reported, *(agent_pod(name, hosts.address[name]) for name in self.pods))

    @property
    def api_url(self) -> str:
        return f"https://127.0.0.1:{API_PORT}"

    def report(self, *pods: dict) -> None:
        """Put C{pods} in the API server, then their status as a kubelet
        reports it, with the official Python client."""
        code = f"""
from kubernetes import client
configuration = client.Configuration()
configuration.host = {self.api_url!r}
configuration.ssl_ca_cert = {str(self.root / "pki" / "ca.crt")!r}
configuration.api_key = {{"authorization": "Bearer {API_TOKEN}"}}
api = client.CoreV1Api(client.ApiClient(configuration))
for pod in {list(pods)!r}:
    name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
    try:
        api.create_namespaced_pod(namespace, pod)
    except client.ApiException as e:
        if e.status != 409:
            raise
    api.replace_namespaced_pod_status(name, namespace, pod)  # as the kubelet reports it
"""
        done = self.python(code)
        assert done.returncode == 0, done.stderr.decode()

    def twistd(self, name: str) -> list[str]:
        return [TWISTD, "-n", "--pidfile=", "podshell", "--config", str(self.root / name / "podshell.yaml")]

    def start_node(self, name: str) -> None:
        log = self.root / name / "twistd.log"
        before = log.read_text().count("node agent listening") if log.exists() else 0
        self.nodes[name] = self.hosts.start(name, self.twistd(name), log, self.root / name)
        wait_log(log, "node agent listening", before + 1)
        wait_log(log, r"container \S+ started", len(self.pods[name]) * (before + 1))

    def kubectl(self, *args: str, version: str = KUBECTL, **kw) -> subprocess.CompletedProcess:
        return self.hosts.run("gw", *self.kubectl_argv(version), *args, **kw)

    def kubectl_argv(self, version: str) -> list[str]:
        return [kubectl_binary(version), "--kubeconfig", str(self.kubeconfig)]

    def cli(self, *args: str, **kw) -> subprocess.CompletedProcess:
        connection = ["--server", "https://127.0.0.1:8443", "--token", TOKEN, "--certificate-authority", str(self.ca)]
        assert PODSHELL, "the podshell console script is installed next to the interpreter"
        return self.hosts.run("gw", PODSHELL, args[0], *connection, *args[1:], **kw)

    def python(self, code: str, **kw) -> subprocess.CompletedProcess:
        """Python on the gateway's host, with the test helpers importable."""
        return self.hosts.run("gw", PYTHON, "-c", f"import sys; sys.path.insert(0, {TESTS!r})\n{code}", **kw)

    def audit(self, name: str) -> list[dict]:
        path = self.root / name / "state" / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]


def running(manifest: dict, node: str, ready: bool = True) -> dict:
    """A pod as the API server has it once a kubelet on C{node} runs it."""
    state = (
        {"running": {"startedAt": "2026-12-04T10:00:00Z"}} if ready else {"waiting": {"reason": "ContainerCreating"}}
    )
    statuses = [
        {"name": c["name"], "ready": ready, "restartCount": 0, "image": "local", "imageID": "", "state": state}
        for c in manifest["spec"]["containers"]
    ]
    spec = {**manifest["spec"], "nodeName": node}
    phase = "Running" if ready else "Pending"
    return {**manifest, "spec": spec, "status": {"phase": phase, "containerStatuses": statuses}}


def agent_pod(node: str, address: str, ready: bool = True) -> dict:
    """A node agent's pod of the DaemonSet, on C{node}'s network."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"podshell-node-{node}",
            "namespace": "podshell",
            "labels": {"app.kubernetes.io/component": "node-agent"},
        },
        "spec": {"nodeName": node, "hostNetwork": True, "containers": [{"name": "agent", "image": "podshell"}]},
        "status": {
            "phase": "Running",
            "podIP": address,
            "hostIP": address,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }
