"""kubeconfig files for kubectl and the Kubernetes client libraries."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import yaml


def render(server: str, user: str, token: str, ca_pem: bytes | None, namespace: str = "default") -> str:
    cluster: dict[str, object] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "podshell", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "podshell", "context": {"cluster": "podshell", "user": user, "namespace": namespace}}],
        "current-context": "podshell",
    }
    return yaml.safe_dump(config, sort_keys=False)


def write(path: Path, text: str) -> None:
    """Written 0600: it holds a token."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
