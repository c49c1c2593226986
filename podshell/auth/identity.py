"""Users, their SSH keys and bearer tokens, from the configuration."""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID
from pydantic import Field, field_validator
from twisted.conch.ssh.keys import BadKeyError, FingerprintFormats, Key
from twisted.logger import Logger

from podshell.core.yamlfile import ConfigError, StrictModel, resolve_path

log = Logger()


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]*$"


class User(StrictModel):
    name: str = Field(pattern=NAME_PATTERN)
    groups: list[str] = []
    ssh_keys: list[str] = []
    authorized_keys_file: str | None = None
    tokens: list[str] = []

    @field_validator("tokens")
    @classmethod
    def _strong(cls, v: list[str]) -> list[str]:
        for token in v:
            if len(token) < 16 or any(c.isspace() for c in token):
                raise ValueError("tokens must be at least 16 characters without spaces")
        return v


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


def _stamp(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return (str(path),)
    return (str(path), st.st_ino, st.st_mtime_ns, st.st_size)


class KeyFiles:
    """A user's key files (C{authorized_keys} format; a glob like
    C{~/.ssh/id_*.pub} allowed), read again when one changes: sshd reads
    C{authorized_keys} at each login, so a key added later works at once.
    A missing file has no keys."""

    def __init__(self, patterns: Iterable[Path]) -> None:
        self.patterns = list(patterns)
        self.keys: list[Key] = []
        self._seen: tuple | None = None

    def _files(self) -> list[Path]:
        files: list[Path] = []
        for pattern in self.patterns:
            if glob.has_magic(pattern.name):
                files.extend(sorted(pattern.parent.glob(pattern.name)))
            else:
                files.append(pattern)
        return files

    def refresh(self) -> bool:
        """Read the files again if any was added, removed or changed since the
        last look; a stat per file, cheap enough for every login attempt."""
        files = self._files()
        stamp = tuple(_stamp(f) for f in files)
        if stamp == self._seen:
            return False
        self._seen = stamp
        keys = []
        for path in files:
            try:
                keys.extend(read_authorized_keys(path))
            except FileNotFoundError:
                continue
            except OSError as e:
                log.warn("cannot read SSH keys from {path}: {error}", path=str(path), error=e.strerror)
        self.keys = keys
        return True


def _token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Directory:
    """Looks identities up by SSH public key or bearer token."""

    def __init__(self) -> None:
        self._keys: dict[str, list[Key]] = {}
        self._files: dict[str, KeyFiles] = {}
        self._by_key: dict[bytes, Identity] = {}
        self._by_token: dict[bytes, Identity] = {}
        self._by_name: dict[str, Identity] = {}

    def add(self, identity: Identity, keys: Iterable[Key] = (), tokens: Iterable[str] = ()) -> None:
        """@raise ConfigError: a key that already belongs to someone else."""
        self._by_name[identity.name] = identity
        self._keys.setdefault(identity.name, []).extend(keys)
        for token in tokens:
            self._by_token[_token_digest(token)] = identity
        self._by_key = self._index(strict=True)

    def watch(self, name: str, paths: Iterable[Path]) -> None:
        """Take the keys of C{name} also from these files, as they are at each login."""
        files = self._files[name] = KeyFiles(paths)
        files.refresh()
        self._by_key = self._index(strict=True)

    def _index(self, strict: bool) -> dict[bytes, Identity]:
        """Identities by key blob.  A key two users have is a configuration
        error at start; if a changed file makes one, it logs in as neither."""
        index: dict[bytes, Identity] = {}
        shared: set[bytes] = set()
        for name, identity in self._by_name.items():
            files = self._files.get(name)
            for key in self._keys.get(name, []) + (files.keys if files else []):
                owner = index.setdefault(key.blob(), identity)
                if owner.name != name:
                    fingerprint = key.fingerprint(FingerprintFormats.SHA256_BASE64)
                    message = f"the key {fingerprint} belongs to both {owner.name} and {name}"
                    if strict:
                        raise ConfigError(message)
                    log.error("{message}: it logs in as neither", message=message)
                    shared.add(key.blob())
        for blob in shared:
            del index[blob]
        return index

    def replace_with(self, other: Directory) -> None:
        """Take C{other}'s users, keys and tokens (a reloaded configuration):
        the objects holding this directory see them at the next lookup."""
        self._keys, self._files = other._keys, other._files
        self._by_key, self._by_token, self._by_name = other._by_key, other._by_token, other._by_name

    @property
    def has_keys(self) -> bool:
        """Whether any SSH login can succeed (as of the last look at the key files)."""
        return bool(self._by_key)

    def by_key(self, blob: bytes) -> Identity | None:
        if any([files.refresh() for files in self._files.values()]):
            self._by_key = self._index(strict=False)
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
    def fromConfig(cls, users: list[User], base: Path) -> Directory:
        directory = cls()
        for i, user in enumerate(users):
            keys = []
            for j, line in enumerate(user.ssh_keys):
                try:
                    keys.append(parse_public_key(line))
                except ValueError:
                    raise ConfigError(f"users[{i}].ssh_keys[{j}]: not an OpenSSH public key line") from None
            directory.add(Identity(user.name, frozenset(user.groups)), keys, user.tokens)
            if user.authorized_keys_file:
                path = resolve_path(base, user.authorized_keys_file)
                try:
                    path.read_bytes()  # a typo in the path is an error at start, not "no keys"
                except OSError as e:
                    raise ConfigError(f"users[{i}].authorized_keys_file: cannot read {path}: {e.strerror}") from None
                directory.watch(user.name, [path])
        return directory
