"""Mutual TLS between gateways and node agents.

Every check happens inside the handshake, before a byte of HTTP moves: the
chain must lead to the cluster CA, and the peer's certificate must carry the
right role (L{podshell.pki.cluster_ca}).  A node agent accepts only gateways; a gateway
accepts only the node it dialled: role node, the configured name as the
certificate's name, and the dialled address among its SANs (checked with
service-identity, as HTTPS checks a host name).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from zope.interface import implementer

from podshell.core.yamlfile import ConfigError
from podshell.pki.cluster_ca import Role, describe
from podshell.pki.state_ca import Issued

_CIPHERS = b"ECDHE+AESGCM:ECDHE+CHACHA20"
# X509_V_ERR_* codes a gateway is likely to meet, in words.
_CHAIN_ERRORS = {
    2: "is not from the cluster CA",
    10: "has expired",
    18: "is self-signed, not from the cluster CA",
    20: "is not from the cluster CA",
    21: "is not from the cluster CA",
    26: "is not meant for a server (issue it with --role node)",
}


@dataclass(frozen=True)
class ClusterIdentity:
    """This server's certificate and key, and the CA it trusts."""

    ca: x509.Certificate
    own: Issued

    @classmethod
    def load(cls, ca: Path, cert: Path, key: Path, role: Role) -> ClusterIdentity:
        """@raise ConfigError: unreadable files, or a certificate for another role."""
        try:
            identity = cls(x509.load_pem_x509_certificate(ca.read_bytes()), Issued.read(cert, key))
        except (OSError, ValueError, AssertionError) as e:
            raise ConfigError(f"tls: cannot read the cluster certificate ({e})") from None
        if identity.own.cert.public_key() != identity.own.key.public_key():
            raise ConfigError(f"tls.key: {key} is not the key of {cert}")
        have = describe(identity.own.cert).role
        if have != role:
            raise ConfigError(f"tls.cert: {cert} is a certificate for role {have}, this server's role is {role}")
        return identity

    @property
    def name(self) -> str:
        return describe(self.own.cert).name

    def context(self) -> SSL.Context:
        """TLS 1.2+, AEAD ciphers only, our certificate, the cluster CA as the only root."""
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_cipher_list(_CIPHERS)
        ctx.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION)
        ctx.use_certificate(self.own.cert)
        ctx.use_privatekey(self.own.key)
        ctx.check_privatekey()
        ctx.get_cert_store().add_cert(crypto.X509.from_cryptography(self.ca))  # type: ignore[union-attr]
        return ctx


def _leaf_problem(cert: x509.Certificate, role: Role) -> str | None:
    who = describe(cert)
    if who.role != role:
        return f"certificate {who.name!r} is for role {who.role}, not {role}"
    if not who.client if role == "gateway" else not who.server:
        return f"certificate {who.name!r} may not be used as a {role}"
    return None


@implementer(IOpenSSLServerConnectionCreator)
class NodeServerTLS:
    """A node agent's listener: only gateways of this cluster get through."""

    def __init__(self, identity: ClusterIdentity) -> None:
        self._ctx = identity.context()
        self._ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verify)
        self._ctx.set_session_id(b"podshell-node")
        self.refused: list[str] = []  # the last reasons, for the log

    def _verify(self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if not ok or depth > 0:
            return bool(ok)
        problem = _leaf_problem(cert.to_cryptography(), "gateway")
        if problem:
            self.refused = [*self.refused[-9:], problem]
            return False
        return True

    def serverConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        return SSL.Connection(self._ctx, None)


@implementer(IOpenSSLClientConnectionCreator)
class NodeClientTLS:
    """A gateway dialling one node: the node must prove it is that node."""

    def __init__(self, identity: ClusterIdentity, node: str, host: str) -> None:
        self.node = node
        self.host = host
        self.problem: str | None = None  # why the last handshake was refused
        self._ctx = identity.context()
        self._ctx.set_verify(SSL.VERIFY_PEER, self._verify)

    def _verify(self, conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
        if not ok:
            self.problem = f"its certificate {_CHAIN_ERRORS.get(errno, f'fails verification (OpenSSL error {errno})')}"
            return False
        if depth > 0:
            return True
        leaf = cert.to_cryptography()
        problem = _leaf_problem(leaf, "node")
        if problem is None and describe(leaf).name != self.node:
            problem = f"certificate names {describe(leaf).name!r}, not node {self.node!r}"
        if problem is None:
            try:
                try:
                    verify_certificate_ip_address(leaf, str(ipaddress.ip_address(self.host)))
                except ValueError:
                    verify_certificate_hostname(leaf, self.host)
            except VerificationError:
                problem = f"certificate does not name the address {self.host}"
        self.problem = problem
        return problem is None

    def clientConnectionForTLS(self, tlsProtocol: object) -> SSL.Connection:
        connection = SSL.Connection(self._ctx, None)
        connection.set_app_data(tlsProtocol)
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            connection.set_tlsext_host_name(self.host.encode("idna"))
        connection.set_connect_state()
        return connection
