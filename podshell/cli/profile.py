"""Where the CLI finds its server: flags, then environment, then the saved
profile (C{podshell login}).  TLS is verified unless the user says otherwise."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


class CLIError(Exception):
    """One line for the user: what went wrong and what to do next."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the server's HTTP answer, when it gave one


def profile_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "podshell" / "profile.yaml"


@dataclass(frozen=True)
class Profile:
    server: str
    token: str
    ca_pem: str | None = None  # the CA's certificate, kept in the profile itself
    insecure: bool = False

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.server)
        if parts.scheme != "https" or not parts.hostname:
            raise CLIError(f"the server must be an https:// URL, not {self.server!r}")
        return parts.hostname, parts.port or 443

    def save(self) -> Path:
        path = profile_path()
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        data: dict[str, str | bool] = {"server": self.server, "token": self.token}
        if self.ca_pem:
            data["certificate-authority-data"] = self.ca_pem
        if self.insecure:
            data["insecure-skip-tls-verify"] = True
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            # JSON is YAML too, and json loads in a fraction of the time it takes to
            # import a YAML parser: every command reads this file.
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(path, 0o600)  # also when it existed with looser bits
        return path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection (override the saved profile and PODSHELL_SERVER/PODSHELL_TOKEN)")
    group.add_argument("--server", help="the API server, https://HOST:PORT")
    group.add_argument("--token", help="a bearer token")
    group.add_argument(
        "--token-file", metavar="FILE", help="read the token from FILE (- for standard input), out of the process list"
    )
    group.add_argument("--certificate-authority", metavar="FILE", help="the CA that signed the server's certificate")
    group.add_argument(
        "--insecure-skip-tls-verify", action="store_true", help="do not verify the server's certificate (unsafe)"
    )


def resolve(args: argparse.Namespace) -> Profile:
    saved: dict = {}
    path = profile_path()
    if path.exists():
        saved = _load(path)
    server = args.server or os.environ.get("PODSHELL_SERVER") or saved.get("server")
    token = given_token(args) or os.environ.get("PODSHELL_TOKEN") or saved.get("token")
    if not server or not token:
        raise CLIError("no server or token: run podshell login --server https://HOST:PORT --token TOKEN")
    ca_pem = saved.get("certificate-authority-data")
    if args.certificate_authority:
        ca_pem = read_ca(args.certificate_authority)
    insecure = args.insecure_skip_tls_verify or bool(saved.get("insecure-skip-tls-verify"))
    return Profile(server.rstrip("/"), token, ca_pem, insecure)


def given_token(args: argparse.Namespace) -> str | None:
    """The token from C{--token} or C{--token-file}, if either was given."""
    if args.token_file is None:
        return args.token
    if args.token is not None:
        raise CLIError("give --token or --token-file, not both")
    where = "standard input" if args.token_file == "-" else args.token_file
    try:
        text = sys.stdin.read() if args.token_file == "-" else Path(args.token_file).read_text()
    except OSError as e:
        raise CLIError(f"cannot read the token from {where}: {e.strerror}") from None
    token = text.strip()
    if not token or len(token.split()) != 1:
        raise CLIError(f"{where} holds no token (one word expected)")
    return token


def _load(path: Path) -> dict:
    """The saved profile: JSON as written, or YAML as a person may have edited it."""
    try:
        saved = json.loads(path.read_bytes())
    except OSError as e:
        raise CLIError(f"cannot read {path}: {e.strerror}; run podshell login again") from None
    except ValueError:
        from podshell.core.yamlfile import ConfigError, load_document

        try:
            saved = load_document(path)
        except ConfigError as e:
            raise CLIError(f"{e}; run podshell login again") from None
    if not isinstance(saved, dict):
        raise CLIError(f"cannot read {path}: not a mapping of settings; run podshell login again")
    return saved


def read_ca(path: str) -> str:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise CLIError(f"cannot read the certificate authority {path}: {e.strerror}") from None
    if "BEGIN CERTIFICATE" not in text:
        raise CLIError(f"{path} holds no PEM certificate")
    return text
