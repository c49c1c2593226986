"""The one gate every front door goes through: name -> target -> policy ->
handle, with every denial and every session in the audit log.

Unknown pods are reported as such only to identities that could be allowed
on them, so the gate does not reveal which pods exist to everyone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from podshell.auth.audit import AuditedSession, AuditLog, Request
from podshell.auth.identity import Identity
from podshell.auth.policy import Policy
from podshell.node.runtime.base import ContainerHandle
from podshell.target import InvalidTarget, Target, TargetError, candidates, resolve


class Runtime(Protocol):
    def container_names(self, namespace: str, name: str) -> list[str] | None: ...

    def resolve(self, namespace: str, pod: str, container: str | None = None) -> ContainerHandle: ...


class Denied(Exception):
    """The request may not go on; the message is for the user."""


@dataclass(frozen=True)
class Granted:
    handle: ContainerHandle
    session: AuditedSession


class Gate:
    def __init__(self, runtime: Runtime, policy: Policy, audit: AuditLog) -> None:
        self.runtime = runtime
        self.policy = policy
        self.audit = audit

    def _deny(self, request: Request, reason: str, message: str) -> Denied:
        self.audit.denied(request, reason)
        return Denied(message)

    def enter(
        self,
        identity: Identity,
        verb: str,
        target: str | Target,
        peer: str,
        via: str,
        command: list[str] | None = None,
    ) -> Granted:
        """Check C{identity} may C{verb} in C{target} and open an audited session.

        @param peer: C{host:port} of the client, or a description.
        @raise Denied: with the line to show the user.
        """
        source = peer.rsplit(":", 1)[0].strip("[]") if ":" in peer else peer
        text = str(target)
        request = Request(identity, peer, via, verb, text, command)
        pod_wide = verb == "port-forward"
        try:
            wanted = target if isinstance(target, Target) else resolve(text, self.runtime.container_names)
        except InvalidTarget as e:
            raise self._deny(request, "invalid target", str(e)) from None
        except TargetError as e:
            options = candidates(text)
            if not any(self.policy.decide(identity, verb, t.namespace, t.pod, None, source) for t in options):
                raise self._deny(
                    request, str(e), self.policy.message(identity, verb, options[-1].namespace, options[-1].pod, None)
                ) from None
            raise self._deny(request, str(e), str(e)) from None
        try:
            handle = self.runtime.resolve(wanted.namespace, wanted.pod, wanted.container)
        except TargetError as e:
            if not self.policy.decide(identity, verb, wanted.namespace, wanted.pod, None, source):
                raise self._deny(
                    request, str(e), self.policy.message(identity, verb, wanted.namespace, wanted.pod, None)
                ) from None
            raise self._deny(request, str(e), str(e)) from None
        request = Request(
            identity, peer, via, verb, handle.path if not pod_wide else f"{handle.namespace}/{handle.pod}", command
        )
        container = None if pod_wide else handle.container
        decision = self.policy.decide(identity, verb, handle.namespace, handle.pod, container, source)
        if not decision:
            raise self._deny(
                request, decision.reason, self.policy.message(identity, verb, handle.namespace, handle.pod, container)
            )
        return Granted(handle, self.audit.session(request))
