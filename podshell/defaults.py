"""The embedded default: what ``twistd -n podshell`` runs with no --config.

One demo pod, listeners on 127.0.0.1 only (SSH 2222, the API 8443), state in
./podshell-state, and the invoking user's own SSH keys (~/.ssh/authorized_keys,
~/.ssh/id_*.pub) and a generated API token granted every verb on every pod,
from loopback only.  The server writes ./podshell-state/kubeconfig for kubectl.
"""

from __future__ import annotations

import getpass
import os
import secrets
from pathlib import Path

from podshell.auth.identity import parse_public_key
from podshell.config import APIConfig, Config, Rule, RuntimeConfig, User

DEMO_PODS = Path(__file__).parent / "node" / "runtime" / "demo-pods.yaml"
LOOPBACK = ["127.0.0.0/8", "::1/128"]
EMBEDDED_STATE = "podshell-state"


def _own_keys(home: Path) -> tuple[list[str], str | None]:
    ssh = home / ".ssh"
    keys = []
    for pub in sorted(ssh.glob("id_*.pub")):
        try:
            keys.append(pub.read_text(encoding="utf-8").strip())
        except OSError:
            continue
    authorized = ssh / "authorized_keys"
    return [k for k in keys if _parses(k)], str(authorized) if authorized.is_file() else None


def _parses(line: str) -> bool:
    try:
        parse_public_key(line)
    except ValueError:
        return False
    return True


def own_token(state_dir: Path) -> str:
    """The embedded default user's API token: made once, kept 0600 in the state dir."""
    path = state_dir / "token"
    if not path.exists():
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            # Hex, so the token never starts with "-" and reads as an option on a command line.
            f.write(secrets.token_hex(32) + "\n")
    return path.read_text().strip()


def embedded_config(state_dir: Path, home: Path | None = None, user: str | None = None) -> Config:
    home = home or Path.home()
    name = user or getpass.getuser()
    keys, authorized = _own_keys(home)
    return Config(
        state_dir=str(state_dir),
        api=APIConfig(),
        users=[User(name=name, ssh_keys=keys, authorized_keys_file=authorized, tokens=[own_token(state_dir)])],
        policy=[Rule(subjects=[f"user:{name}"], verbs=["*"], namespaces=["*"], sources=LOOPBACK)],
        runtime=RuntimeConfig(pods=str(DEMO_PODS)),
    )
