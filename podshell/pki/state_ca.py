"""The state directory's certificate authority and the certificates it issues.

On first start the server creates an EC P-256 CA (key 0600) and a server
certificate for the Kubernetes-compatible API; clients trust the CA (it goes
into the kubeconfig) and may also log in with a client certificate it issued
(the subject's CN is the user name).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet import ssl
from twisted.logger import Logger

log = Logger()
SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def write(self, cert_path: Path, key_path: Path) -> None:
        _write_private(key_path, self.key_pem)
        cert_path.write_bytes(self.cert_pem)

    @classmethod
    def read(cls, cert_path: Path, key_path: Path) -> Issued:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cls(cert, key)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def make_ca(name: str = "podshell CA", days: int = 3650) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - SKEW)
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return Issued(cert, key)


def issue(
    ca: Issued,
    common_name: str,
    *,
    server_names: list[str] = (),  # type: ignore[assignment]
    client: bool = False,
    organizations: list[str] = (),  # type: ignore[assignment]
    days: int = 825,
) -> Issued:
    """A leaf certificate: server (DNS/IP SANs) and/or client (CN = user, O = groups)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    names += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    usages = ([ExtendedKeyUsageOID.SERVER_AUTH] if server_names else []) + (
        [ExtendedKeyUsageOID.CLIENT_AUTH] if client else []
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(names))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - SKEW)
        .not_valid_after(_now() + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if server_names:
        builder = builder.add_extension(x509.SubjectAlternativeName([_san(n) for n in server_names]), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class StateCA:
    """The CA kept in the state directory (created on first use)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir
        cert, key = state_dir / "ca.crt", state_dir / "ca.key"
        if cert.exists() and key.exists():
            self.ca = Issued.read(cert, key)
        else:
            self.ca = make_ca()
            self.ca.write(cert, key)
            fingerprint = self.ca.cert.fingerprint(hashes.SHA256()).hex(":")
            log.info("created the certificate authority {path} (SHA-256 {fp})", path=str(cert), fp=fingerprint)

    @property
    def cert_pem(self) -> bytes:
        return self.ca.cert_pem

    def server(self, names: list[str]) -> Issued:
        """The API's certificate, reissued when the names it must carry change."""
        cert, key = self.dir / "api.crt", self.dir / "api.key"
        if cert.exists() and key.exists():
            current = Issued.read(cert, key)
            sans = current.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            have = {str(v) for v in sans.get_values_for_type(x509.DNSName)}
            have |= {str(v) for v in sans.get_values_for_type(x509.IPAddress)}
            if set(names) <= have and current.cert.not_valid_after_utc > _now() + datetime.timedelta(days=30):
                return current
        issued = issue(self.ca, "podshell-api", server_names=names)
        issued.write(cert, key)
        return issued

    def server_options(self, names: list[str]) -> ssl.CertificateOptions:
        """TLS for the API: our certificate, HTTP/1.1 only (upgrades do not exist
        in HTTP/2), and client certificates from this CA accepted but optional."""
        issued = self.server(names)
        from OpenSSL import crypto

        return ssl.CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(issued.key),
            certificate=crypto.X509.from_cryptography(issued.cert),
            verify=True,
            requireCertificate=False,
            caCerts=[crypto.X509.from_cryptography(self.ca.cert)],
            acceptableProtocols=[b"http/1.1"],
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
