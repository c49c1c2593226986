"""Every kind of bad configuration is one line naming the file and the key."""

from __future__ import annotations

import textwrap

import pytest

from podshell.tap import load
from podshell.yamlfile import ConfigError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"

GOOD = f"""
state_dir: ./state
ssh: {{listen: "tcp:2222:interface=127.0.0.1"}}
api: {{listen: "ssl:8443:interface=127.0.0.1"}}
users:
  - name: alice
    groups: [dev]
    ssh_keys: ["{KEY}"]
    tokens: ["0123456789abcdef0123"]
  - name: bob
policy:
  - subjects: ["group:dev", "user:bob"]
    verbs: [exec, attach, port-forward]
    namespaces: ["team-a"]
    pods: ["*"]
    containers: ["*"]
runtime:
  kind: local
  pods: ./pods.yaml
"""

PODS = """
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: team-a}
spec:
  containers: [{name: app, image: nginx, command: [sleep, "1000"], resources: {limits: {cpu: 1}}}]
"""


@pytest.fixture
def write(tmp_path):
    def write(config: str, pods: str = PODS) -> str:
        (tmp_path / "pods.yaml").write_text(textwrap.dedent(pods))
        path = tmp_path / "podshell.yaml"
        path.write_text(textwrap.dedent(config))
        return str(path)

    return write


def test_the_documented_shape_loads(write, tmp_path):
    loaded = load(write(GOOD))
    assert loaded.state_dir == tmp_path / "state"
    assert [p.metadata.name for p in loaded.pods] == ["web-0"]
    assert loaded.directory.by_token("0123456789abcdef0123").name == "alice"
    assert loaded.directory.by_token("0123456789abcdef0124") is None


def test_the_example_configuration_in_conf_loads():
    from pathlib import Path

    conf = Path(__file__).parent.parent / "conf" / "podshell.yaml"
    loaded = load(str(conf))
    assert loaded.pods and loaded.config.users


def replace(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


TLS = "tls: {ca: ca.crt, cert: x.crt, key: x.key}\n"
NODE = "role: node\nnode: {name: node-1, listen: 'tcp:10250'}\n" + TLS

BAD = [
    ("role: node\n", None, "podshell.yaml: tls: a node needs its cluster certificate (ca, cert, key)"),
    ("role: gateway\n" + TLS, None, "nodes: a gateway needs at least one node agent to route to"),
    (NODE + "ssh: {listen: 'tcp:22'}\n", None, "ssh: a node agent has no front doors; gateways hold ssh"),
    (NODE.replace("tcp:10250", "ssl:10250"), None, "node.listen: a node agent listens on tcp:PORT"),
    ("role: all\nnodes: [{name: n, address: '10.0.0.2:1'}]\n", None, "nodes: only a gateway routes to node agents"),
    ("role: gateway\n" + TLS + "nodes: [{name: n, address: '10.0.0.2'}]\n", None, "'10.0.0.2' is not HOST:PORT"),
    (
        "role: gateway\n" + TLS + "nodes: [{name: n, address: 'h:1'}]\n",
        None,
        "tls: cannot read the cluster certificate",
    ),
    ("state_dir: [1\n", None, "podshell.yaml:2:1: invalid YAML"),
    ("users: []\nusers: []\n", None, "podshell.yaml:2:1: invalid YAML: duplicate key 'users'"),
    ("- a\n- b\n", None, "podshell.yaml: expected a mapping at the top level, found list"),
    ("statedir: x\n", None, "podshell.yaml: statedir: unknown key (expected one of: role, state_dir, ssh, api, users"),
    (
        replace("groups: [dev]", "groups: [dev]\n    sshkeys: []"),
        None,
        "users[0].sshkeys: unknown key (expected one of: name, groups, ssh_keys",
    ),
    ("users: alice\n", None, "users: Input should be a valid list"),
    (replace("verbs: [exec,", "verbs: [shell,"), None, "policy[0].verbs: unknown verb 'shell'"),
    (replace('"user:bob"]', '"bob"]'), None, "policy[0].subjects: subject 'bob' must be user:NAME, group:NAME or *"),
    (replace('"user:bob"]', '"user:carol"]'), None, "policy[0].subjects: 'user:carol' names no configured user"),
    (replace('"group:dev",', '"group:devs",'), None, "policy[0].subjects: 'group:devs' names no configured group"),
    (
        replace('tokens: ["0123456789abcdef0123"]', 'tokens: ["short"]'),
        None,
        "users[0].tokens: tokens must be at least 16",
    ),
    (
        replace("  - name: bob", '  - name: bob\n    tokens: ["0123456789abcdef0123"]'),
        None,
        "users: the same token is given twice",
    ),
    (replace("  - name: bob", "  - name: alice"), None, "users[1]: two users are named 'alice'"),
    (
        replace('    containers: ["*"]', '    containers: ["*"]\n    sources: [localhost]'),
        None,
        "policy[0].sources: source 'localhost' is not an IP network",
    ),
    (replace(KEY, "ssh-ed25519 AAAAnotakey"), None, "users[0].ssh_keys[0]: not an OpenSSH public key line"),
    (
        replace("groups: [dev]", "groups: [dev]\n    authorized_keys_file: /no/such/file"),
        None,
        "users[0].authorized_keys_file: cannot read /no/such/file",
    ),
    (replace("kind: local", "kind: docker"), None, "runtime.kind: Input should be 'local'"),
    (
        replace("policy:\n", "policy:\n  - {subjects: ['*'], verbs: [exec]}\n"),
        None,
        "policy[0].namespaces: missing required key",
    ),
    (replace("./pods.yaml", "./missing.yaml"), None, "missing.yaml: no such file"),
    (
        GOOD,
        PODS.replace('command: [sleep, "1000"], ', ""),
        "pods.yaml: document 1: spec.containers[0]: container 'app' has no command",
    ),
    (
        GOOD,
        PODS.replace("name: web-0", "name: Web_0"),
        "pods.yaml: document 1: metadata.name: pod name 'Web_0' must be",
    ),
    (GOOD, PODS + "---\n" + PODS, "pods.yaml: document 2: pod team-a/web-0 is defined twice"),
    (GOOD, PODS.replace("kind: Pod", "kind: Deployment"), "pods.yaml: document 1: kind: Input should be 'Pod'"),
    (
        GOOD,
        PODS.replace("image: nginx,", "env: [{name: A, valueFrom: {secretKeyRef: {}}}],"),
        "spec.containers[0].env[0]: valueFrom is not supported",
    ),
    (
        GOOD,
        PODS.replace("metadata: {", "metadata: {annotations: {kubectl.kubernetes.io/default-container: db}, "),
        "default-container names no container of the pod: 'db'",
    ),
    (
        GOOD,
        PODS.replace("spec:", "spec:\n  restartPolicy: Sometimes"),
        "spec.restartPolicy: Input should be 'Always', 'OnFailure' or 'Never'",
    ),
]


@pytest.mark.parametrize("config, pods, message", BAD, ids=[m[:40] for _, _, m in BAD])
def test_bad_configuration_is_one_clear_line(write, config, pods, message):
    path = write(config, pods or PODS)
    with pytest.raises(ConfigError) as info:
        load(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(str(path.rsplit("/", 1)[0])), text
    assert message in text, text


def test_the_embedded_token_is_kept_private_and_reads_as_a_value(tmp_path):
    """A token that began with "-" would read as an option in `podshell login --token T`."""
    from podshell.defaults import own_token

    state = tmp_path / "state"
    tokens = {own_token(state)} | {own_token(tmp_path / f"s{i}") for i in range(20)}
    assert own_token(state) in tokens and len(tokens) == 21
    assert all(len(t) == 64 and set(t) <= set("0123456789abcdef") for t in tokens)
    assert (state / "token").stat().st_mode & 0o777 == 0o600


def test_the_server_keeps_bulk_buffers_on_the_heap():
    """glibc here: both thresholds are accepted (see podshell.heap for why they matter)."""
    from podshell.heap import keep_buffers_on_the_heap

    assert keep_buffers_on_the_heap() is True
