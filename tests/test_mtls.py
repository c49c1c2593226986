"""Mutual TLS between gateways and node agents, handshake by handshake, in
memory: who gets through, and what a gateway says when a node is not the
one it dialled."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from OpenSSL import SSL

from podshell.core.yamlfile import ConfigError
from podshell.pki import cluster_ca as pki
from podshell.pki.mutual import ClusterIdentity, NodeClientTLS, NodeServerTLS


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pki")
    pki.init(root / "ca")
    pki.issue_for(root / "ca", "gw-1", "gateway", [])
    pki.issue_for(root / "ca", "node-1", "node", ["10.0.0.2"])
    pki.issue_for(root / "ca", "node-2", "node", ["10.0.0.3"])
    pki.init(root / "other")
    pki.issue_for(root / "other", "gw-1", "gateway", [])
    pki.issue_for(root / "other", "node-1", "node", ["10.0.0.2"])
    return root


def identity(certs: Path, ca: str, name: str, role: pki.Role) -> ClusterIdentity:
    d = certs / ca
    return ClusterIdentity.load(certs / "ca" / "ca.crt", d / f"{name}.crt", d / f"{name}.key", role)


def session(client: SSL.Connection, server: SSL.Connection) -> tuple[dict[str, str], dict[str, bytes]]:
    """Each side handshakes, then the client asks and the server answers,
    through memory: the TLS error each side saw, and what each received.
    Under TLS 1.3 the client finishes first; the server's verdict reaches
    it as an alert on its first read."""
    server.set_accept_state()
    errors: dict[str, str] = {}
    received = {"client": b"", "server": b""}
    asked = answered = False
    for _ in range(20):
        for name, side, peer in (("client", client, server), ("server", server, client)):
            if name in errors:
                continue
            try:
                side.do_handshake()
                if name == "client" and not asked:
                    asked = bool(side.send(b"GET /api/v1/pods"))
                elif name == "server" and received["server"] and not answered:
                    answered = bool(side.send(b"pods"))
                received[name] += side.recv(65536)
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                errors[name] = str(e)
            with contextlib.suppress(SSL.WantReadError, SSL.Error):
                peer.bio_write(side.bio_read(65536))
    return errors, received


def tls_error(reason: str) -> str:
    return str([("SSL routines", "", reason)])


def refused_by(side: str, alert: str) -> tuple[dict[str, str], dict[str, bytes]]:
    """What L{session} gives when C{side} refuses the other's certificate:
    its verify failure, the alert the other side reads, nothing served."""
    other = "server" if side == "client" else "client"
    return {side: tls_error("certificate verify failed"), other: tls_error(alert)}, {"client": b"", "server": b""}


def node(certs: Path, name: str = "node-1", ca: str = "ca") -> NodeServerTLS:
    return NodeServerTLS(identity(certs, ca, name, "node"))


def dial(certs: Path, node_name: str, host: str, who: str = "gw-1", ca: str = "ca", role: pki.Role = "gateway"):
    tls = NodeClientTLS(identity(certs, ca, who, role), node_name, host)
    return tls, tls.clientConnectionForTLS(None)


def test_a_gateway_reaches_the_node_it_dialled(certs):
    server = node(certs)
    tls, client = dial(certs, "node-1", "10.0.0.2")
    assert session(client, server.serverConnectionForTLS(None)) == (
        {},
        {"client": b"pods", "server": b"GET /api/v1/pods"},
    )
    assert tls.problem is None


@pytest.mark.parametrize(
    "name, host, problem",
    [
        ("node-2", "10.0.0.2", "certificate names 'node-1', not node 'node-2'"),
        ("node-1", "10.0.0.9", "certificate does not name the address 10.0.0.9"),
        ("node-1", "node-9.example", "certificate does not name the address node-9.example"),
    ],
)
def test_a_gateway_refuses_a_node_that_is_not_the_one_it_dialled(certs, name, host, problem):
    tls, client = dial(certs, name, host)
    assert session(client, node(certs).serverConnectionForTLS(None)) == refused_by(
        "client", "tlsv1 alert internal error"
    )
    assert tls.problem == problem


def test_a_gateway_refuses_a_server_from_another_ca_or_with_a_gateway_certificate(certs):
    tls, client = dial(certs, "node-1", "10.0.0.2")
    assert session(client, node(certs, ca="other").serverConnectionForTLS(None)) == refused_by(
        "client", "tlsv1 alert unknown ca"
    )
    assert tls.problem == "its certificate is not from the cluster CA"
    impostor = NodeServerTLS.__new__(NodeServerTLS)  # a gateway's certificate serving as a node
    impostor._ctx = identity(certs, "ca", "gw-1", "gateway").context()
    tls, client = dial(certs, "gw-1", "10.0.0.2")
    assert session(client, SSL.Connection(impostor._ctx, None)) == refused_by(
        "client", "tls alert unsupported certificate"
    )
    assert tls.problem == "its certificate is not meant for a server (issue it with --role node)"


@pytest.mark.parametrize(
    "who, ca, role, alert, why",
    [
        ("node-2", "ca", "node", "tlsv1 alert internal error", "certificate 'node-2' is for role node, not gateway"),
        ("gw-1", "other", "gateway", "tlsv1 alert unknown ca", None),  # refused by the chain check before ours
    ],
)
def test_a_node_agent_lets_only_gateways_in(certs, who, ca, role, alert, why):
    server = node(certs)
    _, client = dial(certs, "node-1", "10.0.0.2", who=who, ca=ca, role=role)
    assert session(client, server.serverConnectionForTLS(None)) == refused_by("server", alert)
    assert server.refused[-1:] == ([why] if why else [])


def test_a_node_agent_refuses_a_client_without_a_certificate(certs):
    ctx = SSL.Context(SSL.TLS_METHOD)
    client = SSL.Connection(ctx, None)
    client.set_connect_state()
    errors, received = session(client, node(certs).serverConnectionForTLS(None))
    assert errors == {
        "server": tls_error("peer did not return a certificate"),
        "client": tls_error("tlsv13 alert certificate required"),
    }
    assert received == {"client": b"", "server": b""}


def test_a_certificate_for_another_role_is_a_configuration_error(certs):
    with pytest.raises(ConfigError, match="is a certificate for role gateway, this server's role is node"):
        identity(certs, "ca", "gw-1", "node")
