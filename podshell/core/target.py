"""Target names: which container a user means by C{ns.pod.ctr} or C{ns/pod/ctr}.

Namespaces and container names are DNS-1123 labels (no dots); pod names are
DNS-1123 subdomains (dots allowed, up to 253 characters).  So in the dotted
form the first part is the namespace, the last the container and the middle
the pod; when that names no container, C{ns.<rest>} is tried as a pod with its
default container.  If both exist the name is ambiguous and we say so.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# A name from /etc/passwd, or a uid written one way only (no leading zeros):
# a policy matches what is asked for, so "00" must not be another "0".
_USER = re.compile(r"(0|[1-9][0-9]{0,9}|[A-Za-z_][A-Za-z0-9._-]{0,31})")

FORMS = "NAMESPACE.POD[.CONTAINER] or NAMESPACE/POD[/CONTAINER]"


class TargetError(Exception):
    """A target that cannot be reached: its message is meant for the user."""


class NoSuchPod(TargetError):
    def __init__(self, namespace: str, pod: str) -> None:
        super().__init__(f"no pod {namespace}/{pod}")


class NoSuchContainer(TargetError):
    def __init__(self, namespace: str, pod: str, container: str, known: list[str]) -> None:
        super().__init__(f"pod {namespace}/{pod} has no container {container!r} (it has: {', '.join(known)})")


class ContainerNotRunning(TargetError):
    def __init__(self, namespace: str, pod: str, container: str, state: str) -> None:
        super().__init__(f"container {container!r} of pod {namespace}/{pod} is not running ({state})")


class InvalidTarget(ValueError):
    """A target name that cannot name any container."""

    def __init__(self, text: str, why: str) -> None:
        shown = text if len(text) <= 80 else text[:77] + "..."
        super().__init__(f"invalid target {shown!r}: {why}; expected {FORMS}, e.g. team-a.web-0.app")


def label_problem(value: str, what: str) -> str | None:
    """Why C{value} is not a DNS-1123 label, or None."""
    if not value:
        return f"empty {what}"
    if len(value) > 63:
        return f"{what} longer than 63 characters"
    if not _LABEL.fullmatch(value):
        return (
            f"{what} {value!r} must be lower-case letters, digits and '-', starting and ending with a letter or digit"
        )
    return None


def run_as_problem(value: str) -> str | None:
    """Why C{value} cannot name a user of a container (a name from its
    /etc/passwd or a uid), or None."""
    if not _USER.fullmatch(value):
        return (
            f"user {value[:40]!r} must be a uid (no leading zeros) or a name of letters, digits, '.', '_' and '-' "
            "(up to 32, not starting with a digit)"
        )
    return None


def split_run_as(text: str) -> tuple[str, str | None]:
    """C{ns.pod.ctr+USER} (the SSH form: '+' is in no DNS name): the target,
    and the container user to run as, if one is given.

    @raise InvalidTarget: the user part is not a user name.
    """
    name, plus, user = text.partition("+")
    if not plus:
        return text, None
    problem = run_as_problem(user)
    if problem:
        raise InvalidTarget(text, problem)
    return name, user


def subdomain_problem(value: str, what: str) -> str | None:
    """Why C{value} is not a DNS-1123 subdomain, or None."""
    if not value:
        return f"empty {what}"
    if len(value) > 253:
        return f"{what} longer than 253 characters"
    for part in value.split("."):
        if not _LABEL.fullmatch(part):
            return (
                f"{what} {value!r} must be lower-case letters, digits, '-' and '.', "
                "each dot-separated part starting and ending with a letter or digit"
            )
    return None


@dataclass(frozen=True)
class Target:
    """A namespace, a pod and a container (None: the pod's default)."""

    namespace: str
    pod: str
    container: str | None = None

    def __str__(self) -> str:
        return "/".join(p for p in (self.namespace, self.pod, self.container) if p)


def _checked(text: str, namespace: str, pod: str, container: str | None) -> Target:
    for problem in (
        label_problem(namespace, "namespace"),
        subdomain_problem(pod, "pod name"),
        label_problem(container, "container name") if container is not None else None,
    ):
        if problem:
            raise InvalidTarget(text, problem)
    return Target(namespace, pod, container)


def candidates(text: str) -> list[Target]:
    """The one or two targets C{text} may mean, most specific first."""
    if "/" in text:
        parts = text.split("/")
        if len(parts) not in (2, 3):
            raise InvalidTarget(text, "too many '/'" if len(parts) > 3 else "no pod name")
        return [_checked(text, parts[0], parts[1], parts[2] if len(parts) == 3 else None)]
    parts = text.split(".")
    if len(parts) < 2:
        raise InvalidTarget(text, "no pod name")
    namespace, rest = parts[0], parts[1:]
    whole = _checked(text, namespace, ".".join(rest), None)
    if len(rest) == 1:
        return [whole]
    try:
        split = _checked(text, namespace, ".".join(rest[:-1]), rest[-1])
    except InvalidTarget:
        return [whole]
    return [split, whole]


def resolve(text: str, has_pod: Callable[[str, str], list[str] | None]) -> Target:
    """The target C{text} names, given C{has_pod(ns, pod)} -> the pod's
    container names, or None when there is no such pod.

    @raise InvalidTarget: malformed, or ambiguous.
    @raise TargetError: well formed, but names nothing that exists.
    """
    options = candidates(text)
    found = []
    for target in options:
        containers = has_pod(target.namespace, target.pod)
        if containers is not None and (target.container is None or target.container in containers):
            found.append(target)
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise InvalidTarget(
            text, "ambiguous, it may mean " + " or ".join(str(t) for t in found) + " (use '/' to say which)"
        )
    if len(options) == 1:
        target = options[0]
        containers = has_pod(target.namespace, target.pod)
        if containers is None:
            raise NoSuchPod(target.namespace, target.pod)
        raise NoSuchContainer(target.namespace, target.pod, str(target.container), containers)
    split, whole = options
    raise TargetError(
        f"no pod {split.namespace}/{split.pod} with container {split.container!r}, "
        f"and no pod {whole.namespace}/{whole.pod}"
    )


class LogsUnavailable(TargetError):
    """A container's logs cannot be read as asked; the message is the
    kube-apiserver's own (kubectl users know it, scripts match on it)."""
