"""The one gate every front door goes through: name -> target -> policy ->
handle, with every denial and every session in the audit log.

Unknown pods are reported as such only to identities that could be allowed
on them, so the gate does not reveal which pods exist to everyone.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from podshell.auth.audit import AuditLog, Request
from podshell.auth.identity import Identity
from podshell.auth.policy import VERBS, Decision
from podshell.core.addresses import ip_of
from podshell.core.contracts import Grant, Placement
from podshell.core.target import (
    ContainerNotRunning,
    InvalidTarget,
    LogsUnavailable,
    NoSuchContainer,
    NoSuchPod,
    Target,
    TargetError,
    candidates,
    resolve,
)

# Where a target's container is (pods/log: whether it runs or not).
Resolve = Callable[[str, str, str | None], Placement]


class Runtime(Protocol):
    def container_names(self, namespace: str, name: str) -> list[str] | None: ...

    def resolve(self, namespace: str, pod: str, container: str | None = None) -> Placement: ...

    def unreachable(self) -> list[str]: ...


class Decider(Protocol):
    """The policy (a gateway's rules, or a node agent's trust in its gateway)."""

    def decide(
        self,
        identity: Identity,
        verb: str,
        namespace: str,
        pod: str,
        container: str | None = None,
        source: str | None = None,
    ) -> Decision: ...

    def message(self, identity: Identity, verb: str, namespace: str, pod: str, container: str | None) -> str: ...


class Denied(Exception):
    """The request may not go on; the message is for the user.  C{kind} says
    why, for front doors with status codes: C{forbidden}, C{not-found},
    C{invalid} (a malformed name or an unknown container) or C{unavailable}
    (not running)."""

    def __init__(self, message: str, kind: str = "forbidden") -> None:
        super().__init__(message)
        self.kind = kind


class Gate:
    def __init__(self, runtime: Runtime, policy: Decider, audit: AuditLog) -> None:
        self.runtime = runtime
        self.policy = policy
        self.audit = audit

    def _deny(self, request: Request, reason: str, message: str, kind: str = "forbidden") -> Denied:
        self.audit.denied(request, reason)
        return Denied(message, kind)

    def locate(self, identity: Identity, text: str, peer: str, via: str, verb: str | None = None) -> Target:
        """The target C{text} names, if C{identity} may learn of it.

        With no C{verb} (at login), the identity must be allowed some verb
        there.  @raise Denied: with the line to show the user.
        """
        source = ip_of(peer)
        request = Request(identity, peer, via, verb or "login", text)

        def allowed(ns: str, pod: str, container: str | None) -> bool:
            verbs = [verb] if verb else [v for v in VERBS if v != "logs"]  # a login gets a session, never logs
            return any(self.policy.decide(identity, v, ns, pod, container, source) for v in verbs)

        def refusal(ns: str, pod: str, container: str | None) -> str:
            if verb:
                return self.policy.message(identity, verb, ns, pod, container)
            return f"{identity.name} has no access to " + "/".join(p for p in (ns, pod, container) if p)

        try:
            target = resolve(text, self.runtime.container_names)
        except InvalidTarget as e:
            raise self._deny(request, "invalid target", str(e), "invalid") from None
        except TargetError as e:
            options = candidates(text)
            if not any(allowed(t.namespace, t.pod, None) for t in options):
                last = options[-1]
                raise self._deny(request, str(e), refusal(last.namespace, last.pod, None)) from None
            raise self._deny(request, str(e), self._explained(e), _kind(e)) from None
        if verb is None and not allowed(target.namespace, target.pod, target.container):
            raise self._deny(request, "no verb allowed", refusal(target.namespace, target.pod, target.container))
        return target

    def enter(
        self,
        identity: Identity,
        verb: str,
        target: str | Target,
        peer: str,
        via: str,
        command: list[str] | None = None,
        resolve: Resolve | None = None,
    ) -> Grant:
        """Check C{identity} may C{verb} in C{target} and open an audited session.

        @param peer: C{host:port} of the client.
        @param resolve: where the container is, instead of the runtime's
            (which wants it running).
        @raise Denied: with the line to show the user.
        """
        source = ip_of(peer)
        pod_wide = verb == "port-forward"
        wanted = target if isinstance(target, Target) else self.locate(identity, target, peer, via, verb)
        request = Request(identity, peer, via, verb, str(wanted), command)
        try:
            handle = (resolve or self.runtime.resolve)(wanted.namespace, wanted.pod, wanted.container)
        except TargetError as e:
            if not self.policy.decide(identity, verb, wanted.namespace, wanted.pod, None, source):
                message = self.policy.message(identity, verb, wanted.namespace, wanted.pod, None)
                raise self._deny(request, str(e), message) from None
            raise self._deny(request, str(e), self._explained(e), _kind(e)) from None
        container = None if pod_wide else handle.container
        target_text = f"{handle.namespace}/{handle.pod}" if pod_wide else handle.path
        request = Request(identity, peer, via, verb, target_text, command)
        decision = self.policy.decide(identity, verb, handle.namespace, handle.pod, container, source)
        if not decision:
            message = self.policy.message(identity, verb, handle.namespace, handle.pod, container)
            raise self._deny(request, decision.reason, message)
        return Grant(handle, self.audit.session(request))

    def _explained(self, error: TargetError) -> str:
        """A pod not found may be on a node we cannot reach now: say so."""
        found = isinstance(error, NoSuchContainer | ContainerNotRunning | LogsUnavailable)
        down = [] if found else self.runtime.unreachable()
        return "; ".join([str(error), *down])


def _kind(error: TargetError) -> str:
    if isinstance(error, NoSuchPod):
        return "not-found"
    if isinstance(error, ContainerNotRunning):
        return "unavailable"
    return "invalid"
