"""Users, their SSH keys and bearer tokens, from the configuration."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from twisted.conch.ssh.keys import BadKeyError, FingerprintFormats, Key

from podshell.config import Config, resolve_path
from podshell.yamlfile import ConfigError


@dataclass(frozen=True)
class Identity:
    """An authenticated person or program."""

    name: str
    groups: frozenset[str] = frozenset()

    @property
    def subjects(self) -> frozenset[str]:
        """The policy subjects that match this identity."""
        return frozenset({f"user:{self.name}", "*"} | {f"group:{g}" for g in self.groups})


@dataclass(frozen=True)
class OnBehalf(Identity):
    """A person a gateway vouches for, as a node agent sees them: the gateway
    authenticated and authorized them, and says who they are and from where."""

    gateway: str = ""
    source: str = ""


def parse_public_key(line: str) -> Key:
    """An OpenSSH public key line, options prefix (C{from="..." ssh-ed25519
    AAAA... comment}) allowed."""
    words = line.split()
    for i in range(len(words) - 1):
        try:
            return Key.fromString(" ".join(words[i : i + 2]).encode())
        except (BadKeyError, ValueError, IndexError, TypeError):
            continue
    raise ValueError("not an OpenSSH public key line")


def read_authorized_keys(path: Path) -> list[Key]:
    """Keys of an C{authorized_keys} file; comment lines and unparsable lines
    are skipped like sshd does."""
    keys = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            try:
                keys.append(parse_public_key(line))
            except ValueError:
                continue
    return keys


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Directory:
    """Looks identities up by SSH public key or bearer token."""

    def __init__(self) -> None:
        self._by_key: dict[bytes, Identity] = {}
        self._by_token: dict[bytes, Identity] = {}
        self._by_name: dict[str, Identity] = {}

    def add(self, identity: Identity, keys: Iterable[Key] = (), tokens: Iterable[str] = ()) -> None:
        self._by_name[identity.name] = identity
        for key in keys:
            owner = self._by_key.get(key.blob())
            if owner is not None and owner.name != identity.name:
                fingerprint = key.fingerprint(FingerprintFormats.SHA256_BASE64)
                raise ConfigError(f"the key {fingerprint} belongs to both {owner.name} and {identity.name}")
            self._by_key[key.blob()] = identity
        for token in tokens:
            self._by_token[_token_digest(token)] = identity

    def by_key(self, blob: bytes) -> Identity | None:
        return self._by_key.get(blob)

    def by_certificate(self, cert: x509.Certificate) -> Identity | None:
        """The configured user named by the CN of a client certificate (its
        chain was verified against the state CA by TLS)."""
        names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return self._by_name.get(str(names[0].value)) if names else None

    def by_token(self, token: str) -> Identity | None:
        # Tokens are kept and looked up as SHA-256 digests: no secret sits in
        # memory in the clear and lookup time does not depend on the token.
        return self._by_token.get(_token_digest(token))

    @classmethod
    def fromConfig(cls, config: Config, base: Path) -> Directory:
        directory = cls()
        for i, user in enumerate(config.users):
            keys = []
            for j, line in enumerate(user.ssh_keys):
                try:
                    keys.append(parse_public_key(line))
                except ValueError:
                    raise ConfigError(f"users[{i}].ssh_keys[{j}]: not an OpenSSH public key line") from None
            if user.authorized_keys_file:
                path = resolve_path(base, user.authorized_keys_file)
                try:
                    keys.extend(read_authorized_keys(path))
                except OSError as e:
                    raise ConfigError(f"users[{i}].authorized_keys_file: cannot read {path}: {e.strerror}") from None
            directory.add(Identity(user.name, frozenset(user.groups)), keys, user.tokens)
        return directory
