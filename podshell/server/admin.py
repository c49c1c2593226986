"""The server tools of the podshell command: C{podshell config check} and
C{podshell ca init / issue / show}.  Each takes the parsed arguments and
returns what to print, or raises L{AdminError} with a one-line message."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography import x509

from podshell.core.yamlfile import ConfigError
from podshell.pki import cluster_ca
from podshell.server.tap import check


class AdminError(Exception):
    """What went wrong, in one line."""


def config_check(args: argparse.Namespace) -> str:
    try:
        return check(args.config)
    except ConfigError as e:
        raise AdminError(str(e)) from None


def ca_init(args: argparse.Namespace) -> str:
    try:
        cert = cluster_ca.init(Path(args.dir), args.name, args.days)
    except (cluster_ca.PKIError, OSError) as e:
        raise AdminError(str(e)) from None
    return f"Created the cluster CA: {cert} (key {cert.with_suffix('.key')}, readable by you only)."


def ca_issue(args: argparse.Namespace) -> str:
    try:
        cert, key = cluster_ca.issue_for(Path(args.dir), args.name, args.role, args.san or [], args.days)
    except (cluster_ca.PKIError, OSError) as e:
        raise AdminError(str(e)) from None
    return f"Issued {args.role} certificate {cert} (key {key}, readable by you only)."


def ca_show(args: argparse.Namespace) -> str:
    try:
        cert = x509.load_pem_x509_certificate(Path(args.certificate).read_bytes())
    except (OSError, ValueError) as e:
        raise AdminError(f"cannot read a PEM certificate from {args.certificate}: {e}") from None
    who = cluster_ca.describe(cert)
    uses = [u for u, on in (("client", who.client), ("server", who.server)) if on]
    return "\n".join(
        [
            f"name:     {who.name}",
            f"role:     {who.role or 'none (not a gateway or node certificate)'}",
            f"names:    {', '.join(who.names) or '-'}",
            f"usage:    {', '.join(uses) or '-'}",
            f"issuer:   {cert.issuer.rfc4514_string()}",
            f"expires:  {who.not_after:%Y-%m-%d %H:%M} UTC",
        ]
    )
