"""The embedded default: what ``twistd -n podshell`` runs with no --config.

One demo pod, listeners on 127.0.0.1 only (SSH 2222, the API 8443), and the
invoking user's own SSH keys (~/.ssh/authorized_keys, ~/.ssh/id_*.pub, read
again at each login when they change) and a generated API token granted every
verb on every pod, from loopback only.  The server writes a kubeconfig for
kubectl into its state directory.

The state (host keys, CA, token) is one per user, wherever the server is
started from: a second directory would mean new host keys for the same address,
which OpenSSH reports as REMOTE HOST IDENTIFICATION HAS CHANGED.
"""

from __future__ import annotations

import getpass
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from podshell.server.config import APIConfig, Config, Rule, RuntimeConfig, User

DEMO_PODS = Path(__file__).parent.parent / "node" / "runtime" / "demo-pods.yaml"
LOOPBACK = ["127.0.0.0/8", "::1/128"]
STATE_ENV = "PODSHELL_STATE_DIR"
# Where the embedded default kept its state before it was one per user.
OLD_STATE = "podshell-state"


def state_dir(environ: Mapping[str, str] = os.environ, uid: int | None = None) -> Path:
    """The embedded default's state: C{$PODSHELL_STATE_DIR}, else
    C{/var/lib/podshell} for root, else C{$XDG_STATE_HOME/podshell}
    (C{~/.local/state/podshell}), as the XDG base directory spec says."""
    if environ.get(STATE_ENV):
        return Path(environ[STATE_ENV]).expanduser().absolute()
    if (os.geteuid() if uid is None else uid) == 0:
        return Path("/var/lib/podshell")
    xdg = environ.get("XDG_STATE_HOME", "")
    # The spec: a relative XDG_STATE_HOME is invalid and is ignored.
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".local" / "state"
    return base / "podshell"


def own_key_files(home: Path) -> list[Path]:
    """Where the embedded default's keys come from: like sshd's
    C{authorized_keys}, plus the user's own public keys, so that a fresh
    C{ssh-keygen} is enough to get in."""
    return [home / ".ssh" / "authorized_keys", home / ".ssh" / "id_*.pub"]


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


def embedded_config(state_dir: Path, user: str | None = None) -> Config:
    """The configuration; its user's SSH keys are L{own_key_files}, watched by
    the directory rather than listed here."""
    name = user or getpass.getuser()
    return Config(
        state_dir=str(state_dir),
        api=APIConfig(),
        users=[User(name=name, tokens=[own_token(state_dir)])],
        policy=[Rule(subjects=[f"user:{name}"], verbs=["*"], namespaces=["*"], sources=LOOPBACK)],
        runtime=RuntimeConfig(pods=str(DEMO_PODS)),
    )
