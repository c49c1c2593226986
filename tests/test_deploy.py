"""deploy/ rendered by the real kubectl kustomize, every object valid against
the Kubernetes schemas of each supported version (offline), and the embedded
podshell configurations loaded by podshell's own loader, so the manifests
cannot drift from the code.  No root: kubectl kustomize needs none."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils

from podshell.server.config import load_config

from .support.kubectl import VERSIONS as KUBECTLS
from .support.kubectl import kubectl_binary, minor

DEPLOY = Path(__file__).parent.parent / "deploy"
TREES = {
    "base": "/run/containerd/containerd.sock",
    "overlays/containerd": "/run/containerd/containerd.sock",
    "overlays/crio": "/var/run/crio/crio.sock",
}
VERSIONS = [f"1.{minor}" for minor in range(27, 38)]
AGENT_PORT = 10350


def render(tree: str, kubectl: str = "kubectl") -> list[dict]:
    out = subprocess.run([kubectl, "kustomize", str(DEPLOY / tree)], check=True, capture_output=True, text=True)
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {tree: render(tree) for tree in TREES}


def one(objects: list[dict], kind: str) -> dict:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


@pytest.mark.parametrize("version", [v for v in KUBECTLS if minor(v) >= 27])
def test_every_kubectl_renders_alike(rendered, version):
    assert {tree: render(tree, kubectl_binary(version)) for tree in TREES} == rendered


def test_schemas_shipped_for_every_version():
    shipped = utils.all_versions()
    assert [v for v in VERSIONS if f"{v}.0" not in shipped] == []


@pytest.mark.parametrize("tree", TREES)
def test_every_object_valid(rendered, tree):
    errors = []
    for version in VERSIONS:
        for obj in rendered[tree]:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                errors.append(f"{version} {obj['kind']}/{obj['metadata']['name']}: {e.message}")
    assert errors == []


def test_validator_refuses_a_mistake(rendered):
    daemonset = one(rendered["base"], "DaemonSet")
    bad = {**daemonset, "spec": {**daemonset["spec"], "hostPIDs": True}}
    for version in VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(bad, version, strict=True)


@pytest.mark.parametrize("tree", TREES)
def test_node_agent(rendered, tree):
    spec = one(rendered[tree], "DaemonSet")["spec"]["template"]["spec"]
    assert spec["hostPID"] and spec["hostNetwork"]
    (agent,) = spec["containers"]
    (init,) = spec["initContainers"]
    socket = TREES[tree]
    assert {"name": "CRI_ENDPOINT", "value": f"unix://{socket}"} in init["env"]
    volume = next(v for v in spec["volumes"] if v["name"] == "cri-socket")
    assert volume["hostPath"]["path"] == str(Path(socket).parent)
    assert [m["mountPath"] for m in agent["volumeMounts"] if m["name"] == "cri-socket"] == [str(Path(socket).parent)]
    assert agent["ports"] == [{"name": "agent", "containerPort": AGENT_PORT, "hostPort": AGENT_PORT}]


def test_network_policy_lets_only_gateways_in(rendered):
    objects = rendered["base"]
    policy = one(objects, "NetworkPolicy")["spec"]
    agents = one(objects, "DaemonSet")["spec"]["template"]["metadata"]["labels"]
    gateways = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"] == {"matchLabels": agents}
    assert policy["policyTypes"] == ["Ingress"]
    assert policy["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": gateways}}], "ports": [{"protocol": "TCP", "port": AGENT_PORT}]}
    ]


def test_rbac_exactly_what_a_gateway_needs(rendered):
    objects = rendered["base"]
    rules = {
        (g, r, tuple(rule["verbs"]))
        for rule in one(objects, "ClusterRole")["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert rules == {
        ("", "pods", ("list", "watch")),
        ("authentication.k8s.io", "tokenreviews", ("create",)),
        ("authorization.k8s.io", "subjectaccessreviews", ("create",)),
    }
    binding = one(objects, "ClusterRoleBinding")
    deployment = one(objects, "Deployment")
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": deployment["spec"]["template"]["spec"]["serviceAccountName"],
            "namespace": deployment["metadata"]["namespace"],
        }
    ]


def test_gateway(rendered):
    objects = rendered["base"]
    deployment = one(objects, "Deployment")["spec"]
    (gateway,) = deployment["template"]["spec"]["containers"]
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["replicas"] == 2
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert one(objects, "PodDisruptionBudget")["spec"] == {"minAvailable": 1, "selector": {"matchLabels": labels}}
    service = one(objects, "Service")["spec"]
    assert service["selector"] == labels
    assert {(p["port"], p["targetPort"]) for p in service["ports"]} == {(22, "ssh"), (443, "api")}


def _config(objects: list[dict], name: str) -> dict:
    (data,) = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith(name))[
        "data"
    ].values()
    return yaml.safe_load(data)


def test_gateway_config_loads(rendered, tmp_path):
    objects = rendered["base"]
    config = _config(objects, "podshell-gateway-config")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    loaded, _ = load_config(path)
    assert loaded.inventory is not None and loaded.inventory.kind.value == "kubernetes"
    assert (loaded.inventory.agents.namespace, loaded.inventory.agents.port) == ("podshell", AGENT_PORT)
    assert loaded.inventory.agents.selector == "app.kubernetes.io/component=node-agent"
    # The selector the gateway watches is the DaemonSet's own.
    daemonset = one(objects, "DaemonSet")["spec"]["selector"]["matchLabels"]
    assert daemonset.get("app.kubernetes.io/component") == "node-agent"
    ports = {
        p["name"]: p["containerPort"]
        for p in one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"]
    }
    assert loaded.ssh.listen.split(":")[1] == str(ports["ssh"])
    assert loaded.api is not None and loaded.api.listen.split(":")[1] == str(ports["api"])
    assert loaded.metrics is not None and loaded.metrics.listen.split(":")[1] == str(ports["metrics"])


@pytest.mark.parametrize("tree", TREES)
def test_node_config_loads_as_the_init_container_writes_it(rendered, tree, tmp_path):
    """The init container's own script, run here with its mounts in tmp_path."""
    objects = rendered[tree]
    (init,) = one(objects, "DaemonSet")["spec"]["template"]["spec"]["initContainers"]
    script = init["command"][-1]
    for mount in init["volumeMounts"]:
        (tmp_path / mount["name"]).mkdir()
        script = script.replace(mount["mountPath"], str(tmp_path / mount["name"]))
    (tmp_path / "config-template" / "node.yaml").write_text(yaml.safe_dump(_config(objects, "podshell-node-config")))
    env = {e["name"]: e.get("value", "node-a.example") for e in init["env"]}
    subprocess.run([*init["command"][:-1], script], check=True, env=env)
    loaded, _ = load_config(tmp_path / "config" / "node.yaml")
    assert loaded.node is not None and loaded.node.name == "node-a.example"
    assert loaded.node.listen == f"tcp:{AGENT_PORT}"
    assert loaded.runtime.kind == "cri" and loaded.runtime.endpoint == f"unix://{TREES[tree]}"
