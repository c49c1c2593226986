"""The embedded default: what ``twistd -n podshell`` runs with no --config.

One demo pod, listeners on 127.0.0.1 only, state in ./podshell-state, and the
invoking user's own SSH keys (~/.ssh/authorized_keys, ~/.ssh/id_*.pub)
granted every verb on every pod, from loopback only.
"""

from __future__ import annotations

import getpass
from pathlib import Path

from podshell.auth.identity import parse_public_key
from podshell.config import Config, Rule, RuntimeConfig, User

DEMO_PODS = Path(__file__).parent / "node" / "runtime" / "demo-pods.yaml"
LOOPBACK = ["127.0.0.0/8", "::1/128"]


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


def embedded_config(home: Path | None = None, user: str | None = None) -> Config:
    home = home or Path.home()
    name = user or getpass.getuser()
    keys, authorized = _own_keys(home)
    return Config(
        state_dir="./podshell-state",
        users=[User(name=name, ssh_keys=keys, authorized_keys_file=authorized)],
        policy=[Rule(subjects=[f"user:{name}"], verbs=["*"], namespaces=["*"], sources=LOOPBACK)],
        runtime=RuntimeConfig(pods=str(DEMO_PODS)),
    )
