"""Deny-by-default authorization: (identity, verb, ns, pod, container) -> allow?"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal, get_args

from pydantic import Field, field_validator

from podshell.auth.identity import Identity
from podshell.core.contracts import RecordMode
from podshell.core.yamlfile import StrictModel

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Verbs are matched as written; a denial says some in words ("logs" is
# pods/log, which Kubernetes authorizes as "get": reading, not a session).
_PHRASES = {"logs": "read logs"}


Verb = Literal["exec", "attach", "port-forward", "logs", "admin"]
VERBS: tuple[Verb, ...] = get_args(Verb)
# What one does in a pod; C{admin} is over other people's sessions there
# (C{podshell sessions list} and C{kill}): it lets nobody in, nor see a pod.
POD_VERBS: tuple[Verb, ...] = tuple(v for v in VERBS if v != "admin")


class Rule(StrictModel):
    """One policy entry; the policy is deny-by-default and a matching
    C{effect: deny} rule wins over any allow."""

    subjects: list[str] = Field(min_length=1)
    verbs: list[str] = Field(min_length=1)
    namespaces: list[str] = Field(min_length=1)
    pods: list[str] = ["*"]
    containers: list[str] = ["*"]
    effect: Literal["allow", "deny"] = "allow"
    sources: list[str] | None = None
    # Container users (names from its /etc/passwd, or uids; globs) an exec
    # may run as instead of the container's own: none unless a rule says.
    run_as: list[str] | None = Field(default=None, min_length=1)
    # Recording the sessions this rule allows (the strictest of the allowing rules wins).
    record: RecordMode = RecordMode.OFF
    record_input: bool = False  # a terminal's keystrokes too: typed passwords are in them
    # Seconds without a byte either way before the sessions this rule allows
    # end (the shortest of the allowing rules' and the server's wins).
    idle_timeout: float | None = Field(default=None, gt=0)

    @field_validator("subjects")
    @classmethod
    def _subjects(cls, v: list[str]) -> list[str]:
        for s in v:
            kind, _, name = s.partition(":")
            if s != "*" and (kind not in ("user", "group") or not name):
                raise ValueError(f"subject {s!r} must be user:NAME, group:NAME or *")
        return v

    @field_validator("verbs")
    @classmethod
    def _verbs(cls, v: list[str]) -> list[str]:
        for verb in v:
            if verb != "*" and verb not in VERBS:
                raise ValueError(f"unknown verb {verb!r} (verbs: {', '.join(VERBS)}, *)")
        return v

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[str] | None) -> list[str] | None:
        for net in v or ():
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"source {net!r} is not an IP network like 127.0.0.0/8") from None
        return v


@dataclass(frozen=True)
class Access:
    """One question for a policy: may C{identity} do C{verb} on the target,
    connecting from C{source} (an IP address)?  C{container} is None for
    pod-wide verbs (port-forward)."""

    identity: Identity
    verb: Verb
    namespace: str
    pod: str
    container: str | None = None
    source: str | None = None
    run_as: str | None = None  # another user in the container than its own

    @property
    def target(self) -> str:
        return "/".join(p for p in (self.namespace, self.pod, self.container) if p)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    record: RecordMode = RecordMode.OFF
    record_input: bool = False
    idle_timeout: float | None = None  # the allowing rules' shortest, if any has one

    def __bool__(self) -> bool:
        return self.allowed


_STRICTNESS = [RecordMode.OFF, RecordMode.BEST_EFFORT, RecordMode.REQUIRED]


def _any(patterns: Sequence[str], value: str) -> bool:
    return any(fnmatchcase(value, p) for p in patterns)


@dataclass(frozen=True)
class CompiledRule:
    index: int
    rule: Rule
    sources: tuple[IPNetwork, ...] | None

    def matches(self, access: Access) -> bool:
        r = self.rule
        if not (access.identity.subjects & set(r.subjects)):
            return False
        if access.verb not in r.verbs and not ("*" in r.verbs and (access.verb != "admin" or r.effect == "deny")):
            return False  # admin is named, never in an allowing "*"
        if not (_any(r.namespaces, access.namespace) and _any(r.pods, access.pod)):
            return False
        if access.container is not None and not _any(r.containers, access.container):
            return False
        if not self._covers(access.run_as):
            return False
        if self.sources is not None:
            try:
                address = ipaddress.ip_address(access.source) if access.source else None
            except ValueError:
                address = None
            if address is None or not any(address in net for net in self.sources):
                return False
        return True

    def _covers(self, user: str | None) -> bool:
        """A rule with C{run_as} is about running as those users only; one
        without is about the container's own user, and as a deny rule about
        whoever one runs as."""
        if self.rule.run_as is None:
            return user is None or self.rule.effect == "deny"
        return user is not None and _any(self.rule.run_as, user)


class Policy:
    """Rules from the configuration.  Nothing is allowed unless a rule
    allows it, and any matching deny rule wins."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self._rules = [
            CompiledRule(
                i,
                rule,
                None if rule.sources is None else tuple(ipaddress.ip_network(s, strict=False) for s in rule.sources),
            )
            for i, rule in enumerate(rules)
        ]

    def replace_with(self, other: Policy) -> None:
        """Take C{other}'s rules (a reloaded configuration), for the next decision."""
        self._rules = other._rules

    def decide(self, access: Access) -> Decision:
        allowed_by = None
        record, record_input = RecordMode.OFF, False
        idle: float | None = None
        for compiled in self._rules:
            if compiled.matches(access):
                if compiled.rule.effect == "deny":
                    return Decision(False, f"denied by policy[{compiled.index}]")
                allowed_by = allowed_by if allowed_by is not None else compiled.index
                record = max(record, compiled.rule.record, key=_STRICTNESS.index)
                record_input = record_input or compiled.rule.record_input
                if compiled.rule.idle_timeout is not None:
                    idle = min(idle or compiled.rule.idle_timeout, compiled.rule.idle_timeout)
        if allowed_by is None:
            return Decision(False, "no policy rule allows it")
        return Decision(True, f"allowed by policy[{allowed_by}]", record, record_input, idle)

    def may_ever(self, identity: Identity, verb: Verb) -> bool:
        """Whether a rule names C{verb} for C{identity} (anywhere): who may
        ask for a list of sessions at all; each one is decided on its own."""
        return any(
            identity.subjects & set(c.rule.subjects) and c.rule.effect == "allow" and verb in c.rule.verbs
            for c in self._rules
        )

    def message(self, access: Access) -> str:
        """The line a denied user sees."""
        as_user = f" as {access.run_as}" if access.run_as is not None else ""
        return f"{access.identity.name} may not {_PHRASES.get(access.verb, access.verb)} in {access.target}{as_user}"
