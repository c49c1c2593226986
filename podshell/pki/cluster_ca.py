"""The cluster PKI: one CA for gateways and node agents, and the role each
certificate carries.

The role is the subject's organization (C{podshell:gateway} or
C{podshell:node}), as Kubernetes marks kubelets with C{system:nodes}: a node
agent accepts only clients whose certificate, from this CA, says gateway; a
gateway checks that a node's certificate says node and names the address it
dialled.  Keys are EC P-256, written 0600.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from podshell.pki.state_ca import Issued, issue, make_ca

Role = Literal["gateway", "node"]
ROLES: tuple[Role, ...] = ("gateway", "node")
ORG = "podshell:"


class PKIError(Exception):
    """One line: what is wrong and what to do."""


def init(directory: Path, name: str = "podshell cluster CA", days: int = 3650) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.crt", directory / "ca.key"
    if cert.exists() or key.exists():
        raise PKIError(f"{cert} already exists: a second CA would orphan every certificate the first one issued")
    make_ca(name, days).write(cert, key)
    return cert


def load_ca(directory: Path) -> Issued:
    cert, key = directory / "ca.crt", directory / "ca.key"
    if not cert.exists() or not key.exists():
        raise PKIError(f"no CA in {directory}: run podshell ca init --dir {directory}")
    return Issued.read(cert, key)


def issue_for(directory: Path, name: str, role: Role, sans: list[str], days: int = 825) -> tuple[Path, Path]:
    """A gateway's or node's certificate and key, as NAME.crt and NAME.key.
    A node serves (its name and the SANs identify it) and is a client too;
    a gateway is a client, and serves as well when SANs are given."""
    if not name or "/" in name or name.startswith("."):
        raise PKIError(f"{name!r} is not a usable name (it becomes the file name)")
    ca = load_ca(directory)
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    if cert_path.exists():
        raise PKIError(f"{cert_path} already exists; remove it first to issue a new one")
    server_names = [name, *sans] if role == "node" else list(sans)
    issued = issue(ca, name, server_names=server_names, client=True, organizations=[ORG + role], days=days)
    issued.write(cert_path, key_path)
    return cert_path, key_path


@dataclass(frozen=True)
class Identity:
    name: str
    role: Role | None
    names: list[str]  # DNS and IP SANs
    not_after: datetime.datetime
    client: bool
    server: bool


def describe(cert: x509.Certificate) -> Identity:
    """Who a certificate says it is (the caller checks who signed it)."""
    orgs = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    roles = [o.removeprefix(ORG) for o in orgs if o.startswith(ORG) and o.removeprefix(ORG) in ROLES]
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in san.get_values_for_type(x509.DNSName)]
        names += [str(v) for v in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    try:
        usages = list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        usages = []
    return Identity(
        name=str(cns[0].value) if cns else "",
        role=roles[0] if len(roles) == 1 else None,  # type: ignore[arg-type]
        names=names,
        not_after=cert.not_valid_after_utc,
        client=ExtendedKeyUsageOID.CLIENT_AUTH in usages,
        server=ExtendedKeyUsageOID.SERVER_AUTH in usages,
    )
