"""Host keys: generated into the state directory on first start, reused after."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from twisted.conch.ssh.keys import FingerprintFormats, Key
from twisted.logger import Logger

log = Logger()

_KINDS = {
    "ed25519": lambda: ed25519.Ed25519PrivateKey.generate(),
    "ecdsa": lambda: ec.generate_private_key(ec.SECP256R1()),
}


def load_or_create(state_dir: Path) -> list[Key]:
    """The server's host keys (ed25519 first, then ECDSA P-256), 0600."""
    keys = []
    for kind, generate in _KINDS.items():
        path = state_dir / f"ssh_host_{kind}_key"
        if path.exists():
            keys.append(Key.fromFile(str(path)))
            continue
        key = Key(generate())
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.toString("openssh"))
        (state_dir / f"ssh_host_{kind}_key.pub").write_bytes(key.public().toString("openssh") + b"\n")
        log.info(
            "generated SSH host key {path}: {fp}",
            path=str(path),
            fp=key.fingerprint(format=FingerprintFormats.SHA256_BASE64),
        )
        keys.append(key)
    return keys
