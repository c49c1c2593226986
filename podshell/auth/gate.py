"""The one gate every front door goes through: name -> target -> policy ->
handle, with every denial and every session in the audit log.

Unknown pods are reported as such only to identities that could be allowed
on them, so the gate does not reveal which pods exist to everyone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from podshell.auth.audit import AuditLog, Request
from podshell.auth.identity import Identity
from podshell.auth.live import Live, LiveSessions
from podshell.auth.policy import POD_VERBS, Access, Decision, Verb
from podshell.core.addresses import ip_of
from podshell.core.contracts import Grant, Placement, RecordMode
from podshell.core.denial import DenialKind
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
    run_as_problem,
)

# Where a target's container is (pods/log: whether it runs or not).
Resolve = Callable[[str, str, str | None], Placement]


class Runtime(Protocol):
    def container_names(self, namespace: str, name: str) -> list[str] | None: ...

    def resolve(self, namespace: str, pod: str, container: str | None = None) -> Placement: ...

    def unreachable(self) -> list[str]: ...


class Decider(Protocol):
    """The policy (a gateway's rules, or a node agent's trust in its gateway)."""

    def decide(self, access: Access) -> Decision: ...

    def message(self, access: Access) -> str:
        """The line a denied user sees."""
        ...

    def may_ever(self, identity: Identity, verb: Verb) -> bool:
        """Whether C{identity} may C{verb} anywhere (who may list sessions)."""
        ...


class Denied(Exception):
    """The request may not go on; the message is for the user, C{kind} says
    why (for front doors with status codes: L{podshell.core.denial.answer})."""

    def __init__(self, message: str, kind: DenialKind = DenialKind.FORBIDDEN) -> None:
        super().__init__(message)
        self.kind = kind


class Gate:
    def __init__(self, runtime: Runtime, policy: Decider, audit: AuditLog, live: LiveSessions | None = None) -> None:
        """@param live: the registry of sessions under way (a server's front
        doors'; a node agent's gate, behind a gateway's, keeps none)."""
        self.runtime = runtime
        self.policy = policy
        self.audit = audit
        self.live = live

    def _deny(self, request: Request, reason: str, message: str, kind: DenialKind = DenialKind.FORBIDDEN) -> Denied:
        self.audit.denied(request, reason, kind)
        return Denied(message, kind)

    def invalid(self, identity: Identity, text: str, peer: str, via: str, error: InvalidTarget) -> Denied:
        """A login whose name a front door could not read: audited, like any."""
        return self._deny(Request(identity, peer, via, "login", text), "invalid target", str(error), DenialKind.INVALID)

    def locate(self, identity: Identity, text: str, peer: str, via: str, verb: Verb | None = None) -> Target:
        """The target C{text} names, if C{identity} may learn of it.

        With no C{verb} (at login), the identity must be allowed some verb
        there.  @raise Denied: with the line to show the user.
        """
        request = Request(identity, peer, via, verb or "login", text)
        # A login gets a session, never logs: any other verb will do.
        verbs: list[Verb] = [verb] if verb else [v for v in POD_VERBS if v != "logs"]
        asked = Access(identity, verbs[0], "", "", source=ip_of(peer))

        def allowed(ns: str, pod: str, container: str | None) -> bool:
            there = replace(asked, namespace=ns, pod=pod, container=container)
            return any(self.policy.decide(replace(there, verb=v)) for v in verbs)

        def refusal(ns: str, pod: str, container: str | None) -> str:
            there = replace(asked, namespace=ns, pod=pod, container=container)
            return self.policy.message(there) if verb else f"{identity.name} has no access to {there.target}"

        try:
            target = resolve(text, self.runtime.container_names)
        except InvalidTarget as e:
            raise self._deny(request, "invalid target", str(e), DenialKind.INVALID) from None
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
        verb: Verb,
        target: str | Target,
        peer: str,
        via: str,
        command: list[str] | None = None,
        resolve: Resolve | None = None,
        run_as: str | None = None,
    ) -> Grant:
        """Check C{identity} may C{verb} in C{target} and open an audited session.

        @param peer: C{host:port} of the client.
        @param run_as: a user of the container to run as, not its own.
        @param resolve: where the container is, instead of the runtime's
            (which wants it running).
        @raise Denied: with the line to show the user.
        """
        asked = time.monotonic()
        pod_wide = verb == "port-forward"
        wanted = target if isinstance(target, Target) else self.locate(identity, target, peer, via, verb)
        request = Request(identity, peer, via, verb, str(wanted), command, run_as)
        if run_as is not None and (problem := run_as_problem(run_as)):  # every front door's, checked once
            raise self._deny(request, "invalid user", problem, DenialKind.INVALID)
        pod_access = Access(identity, verb, wanted.namespace, wanted.pod, source=ip_of(peer), run_as=run_as)
        try:
            handle = (resolve or self.runtime.resolve)(wanted.namespace, wanted.pod, wanted.container)
        except TargetError as e:
            if not self.policy.decide(pod_access):
                raise self._deny(request, str(e), self.policy.message(pod_access)) from None
            raise self._deny(request, str(e), self._explained(e), _kind(e)) from None
        container = None if pod_wide else handle.container
        access = replace(pod_access, namespace=handle.namespace, pod=handle.pod, container=container)
        request = Request(identity, peer, via, verb, access.target, command, run_as)
        decision = self.policy.decide(access)
        if not decision:
            raise self._deny(request, decision.reason, self.policy.message(access))
        if self.live is not None and (refused := self.live.refusal(identity.name)):
            message, kind = refused
            if kind is DenialKind.TOO_MANY and self.audit.metrics is not None:
                self.audit.metrics.sessions_per_user_hit(via)
            raise self._deny(request, message, message, kind)
        session = self.audit.session(request, asked, recorded=decision.record is not RecordMode.OFF)
        if self.live is not None:
            self.live.add(session, decision.idle_timeout)
        return Grant(handle, session, run_as, decision.record, decision.record_input)

    # Operators: the sessions under way on targets where they may C{admin}.
    def sessions(self, identity: Identity, peer: str, via: str) -> list[Live]:
        """@raise Denied: C{identity} may C{admin} nowhere."""
        live = self._registry(Request(identity, peer, via, "admin", "sessions"))
        return [one for one in live if self._may_admin(identity, peer, one)]

    def kill(self, identity: Identity, peer: str, via: str, session_id: str) -> Live:
        """End the session C{session_id} for C{identity}.  @raise Denied."""
        request = Request(identity, peer, via, "admin", f"session {session_id}")
        one = self._registry(request).get(session_id)
        if one is None or not self._may_admin(identity, peer, one):
            raise self._deny(request, "no such session", f"no session {session_id} you may end", DenialKind.NOT_FOUND)
        if one.session.door is None:
            raise self._deny(request, "cannot end", f"session {session_id} cannot be ended", DenialKind.INVALID)
        self._registry(request).kill(one, identity.name, peer)
        return one

    def _registry(self, request: Request) -> LiveSessions:
        """@raise Denied: the identity may C{admin} nowhere (or this gate keeps no registry)."""
        assert request.identity is not None
        if self.live is None or not self.policy.may_ever(request.identity, "admin"):
            raise self._deny(request, "no admin", _no_admin(request.identity))
        return self.live

    def _may_admin(self, identity: Identity, peer: str, live: Live) -> bool:
        namespace, pod, *container = live.session.request.target.split("/")
        there = Access(identity, "admin", namespace, pod, container[0] if container else None, source=ip_of(peer))
        return bool(self.policy.decide(there))

    def _explained(self, error: TargetError) -> str:
        """A pod not found may be on a node we cannot reach now: say so."""
        found = isinstance(error, NoSuchContainer | ContainerNotRunning | LogsUnavailable)
        down = [] if found else self.runtime.unreachable()
        return "; ".join([str(error), *down])


def _no_admin(identity: Identity) -> str:
    return f"{identity.name} may not see or end sessions (no policy rule gives the verb admin)"


def _kind(error: TargetError) -> DenialKind:
    if isinstance(error, NoSuchPod):
        return DenialKind.NOT_FOUND
    if isinstance(error, ContainerNotRunning):
        return DenialKind.UNAVAILABLE
    return DenialKind.INVALID
