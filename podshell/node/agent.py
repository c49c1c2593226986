"""What makes a node agent a node agent: it serves only gateways, and runs
streams only for the people they vouch for.

The TLS handshake already refused anyone without a gateway certificate from
the cluster CA (L{podshell.pki.mutual}); here each request must say on whose
behalf it comes (C{Impersonate-User}, as C{kubectl --as} says it to an API
server), and the gateway's decision is trusted: it holds the policy.
"""

from __future__ import annotations

import re

import h11
from twisted.internet.interfaces import ITransport

from podshell.auth.identity import Identity, OnBehalf
from podshell.auth.policy import Access, Decision, Verb
from podshell.kube.front import Authenticate, HTTPError
from podshell.pki.cluster_ca import describe

_STREAM = re.compile(rb"^/api/v1/namespaces/[^/]+/pods/[^/]+/(exec|attach|portforward|log)(\?|$)")
GATEWAYS = "podshell:gateways"


def gateway_requests() -> Authenticate:
    def authenticate(event: h11.Request, transport: ITransport) -> Identity:
        cert = transport.getPeerCertificate()  # type: ignore[attr-defined]
        gateway = describe(cert.to_cryptography()).name
        user, groups, source = "", [], ""
        for name, value in event.headers:
            text = value.decode("utf-8", errors="replace").strip()
            if name == b"impersonate-user":
                user = text
            elif name == b"impersonate-group":
                groups.append(text)
            elif name == b"x-forwarded-for":
                source = text
        if user:
            return OnBehalf(user, frozenset(groups), gateway=gateway, source=source)
        if _STREAM.match(event.target):
            raise HTTPError(
                403, "Forbidden", f"gateway {gateway} did not say on whose behalf it asks (Impersonate-User)"
            )
        return Identity(f"gateway:{gateway}", frozenset({GATEWAYS}))

    return authenticate


class TrustGateway:
    """The node agent's policy: the gateway decided already."""

    def decide(self, access: Access) -> Decision:
        return Decision(True, "allowed by the gateway")

    def message(self, access: Access) -> str:
        return f"{access.identity.name} may not {access.verb} in {access.namespace}/{access.pod}"

    def may_ever(self, identity: Identity, verb: Verb) -> bool:
        return False  # operators list and end sessions at the gateway
