"""kubeconfig files for kubectl and the Kubernetes client libraries."""

from __future__ import annotations

import base64
import contextlib
import os
import tempfile
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
    """Written 0600 (it holds a token), whole or not at all: a private
    temporary file beside it, renamed over it.  A symlink is written through
    (the rename goes over its target, not the link).  Missing directories are
    made 0700, every one of them, like ~/.kube."""
    path = Path(os.path.realpath(path))
    missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
