"""People from the cluster at the API front door, end to end: a real
podshell server whose kubernetes_auth points at an in-test API server
serving TokenReview and SubjectAccessReview, driven by stock kubectl."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from podshell.core import kubeconfig

from .conftest import needs_root, pod
from .sshserver import PodshellServer, free_port
from .support.kubectl import kubectl_binary, transport_env

pytestmark = needs_root

ROOT = Path(__file__).parent.parent
TOKENS = {
    "alice-cluster-token-0123456789": ["alice", ["dev"]],
    "bob-cluster-token-0123456789": ["bob", []],
    "carol-cluster-token-0123456789": ["carol", []],
    "dave-cluster-token-0123456789": ["dave", ["dev"]],
}
RULES = [
    {"subjects": ["group:dev", "user:carol"], "verbs": ["get", "create", "list"], "resources": ["pods", "pods/*"]},
    {"subjects": ["user:bob"], "verbs": ["get", "list"], "resources": ["pods"]},  # may look, not exec
]
# podshell's own policy on top: carol, whom RBAC lets exec, is not in it.
POLICY = [{"subjects": ["group:dev", "user:bob"], "verbs": ["*"], "namespaces": ["team-a"]}]


class ReviewServer:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        (root / "reviews.json").write_text(json.dumps({"tokens": TOKENS, "rules": RULES}))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.kubereviews", str(self.port), str(root), str(root / "reviews.json")],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"},
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == b"listening\n"
        self.ca = (root / "ca.crt").read_bytes()
        self.url = f"https://127.0.0.1:{self.port}"

    def counts(self) -> dict[str, int]:
        context = ssl.create_default_context(cadata=self.ca.decode())
        with urllib.request.urlopen(f"{self.url}/counts", context=context, timeout=10) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("cluster-auth")
    reviews = ReviewServer(root)
    gateway = kubeconfig.render(reviews.url, "podshell-gateway", "gateway-sa-token", reviews.ca)
    kubeconfig.write(root / "gateway.kubeconfig", gateway)
    port = free_port()
    pods = [pod("web-0", {"name": "app", "command": ["sleep", "3600"]}, namespace="team-a")]
    settings = {"kubeconfig": "./gateway.kubeconfig", "allowed_ttl": 30, "denied_ttl": 30, "cache_size": 64}
    server = PodshellServer(
        root, pods, [], POLICY, api=f"ssl:{port}:interface=127.0.0.1", extra={"kubernetes_auth": settings}
    )
    try:
        server.wait_ready(containers=1)
        server.reviews = reviews
        url, ca = f"https://127.0.0.1:{port}", (root / "state" / "ca.crt").read_bytes()
        for token, (user, _groups) in TOKENS.items():
            kubeconfig.write(root / f"{user}.kubeconfig", kubeconfig.render(url, user, token, ca, "team-a"))
        kubeconfig.write(
            root / "nobody.kubeconfig", kubeconfig.render(url, "nobody", "made-up-token-0123", ca, "team-a")
        )
        yield server
    finally:
        server.stop()
        reviews.stop()


def kubectl(api, user: str, *args: str, version: str = "1.33", transport: str = "websocket"):
    env = {**os.environ, "KUBECONFIG": str(api.root / f"{user}.kubeconfig"), **transport_env(transport)}
    return subprocess.run([kubectl_binary(version), *args], env=env, capture_output=True, timeout=60)


@pytest.mark.parametrize(("version", "transport"), [("1.20", "spdy"), ("1.33", "websocket")])
def test_rbac_allows_an_exec(api, version, transport):
    r = kubectl(api, "alice", "exec", "web-0", "--", "echo", "hi", version=version, transport=transport)
    assert (r.returncode, r.stdout) == (0, b"hi\n"), r.stderr


def test_answers_are_cached(api):
    kubectl(api, "alice", "exec", "web-0", "--", "true")
    before = api.reviews.counts()
    assert before["tokenreviews"] >= 1 and before["subjectaccessreviews"] >= 2
    for _ in range(3):
        assert kubectl(api, "alice", "exec", "web-0", "--", "true").returncode == 0
    assert api.reviews.counts() == before


@pytest.mark.parametrize(("version", "transport"), [("1.20", "spdy"), ("1.33", "websocket")])
def test_rbac_refuses_an_exec_as_the_api_server_says_it(api, version, transport):
    """kubectl 1.33 meets the 403 on its WebSocket upgrade (get on pods/exec),
    falls back to SPDY, and shows that refusal (create)."""
    r = kubectl(api, "bob", "exec", "web-0", "--", "true", version=version, transport=transport)
    assert r.returncode == 1
    assert r.stderr == (
        b'Error from server (Forbidden): pods "web-0" is forbidden: User "bob" cannot create resource '
        b'"pods/exec" in API group "" in the namespace "team-a"\n'
    )


def test_podshell_policy_applies_on_top_of_rbac(api):
    r = kubectl(api, "carol", "exec", "web-0", "--", "true")
    assert r.returncode == 1
    assert b"Error from server (Forbidden)" in r.stderr and b"carol" in r.stderr, r.stderr
    assert b"RBAC" not in r.stderr and b"pods/exec" not in r.stderr  # podshell's words, not the cluster's


def test_a_token_the_cluster_does_not_know_is_401(api):
    r = kubectl(api, "nobody", "exec", "web-0", "--", "true")
    assert r.returncode == 1
    assert b"Unauthorized" in r.stderr, r.stderr


def test_an_api_server_that_is_gone_is_a_clear_503(api):
    """Last: it stops the review server.  dave has asked nothing yet, so nothing is cached."""
    api.reviews.stop()
    started = time.monotonic()
    r = kubectl(api, "dave", "exec", "web-0", "--", "true")
    assert time.monotonic() - started < 10  # an answer, not a hang
    assert r.returncode == 1
    assert b"Error from server (ServiceUnavailable)" in r.stderr, r.stderr
    assert b"cannot check the bearer token with the cluster's API server https://127.0.0.1:" in r.stderr, r.stderr
