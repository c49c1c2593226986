"""People the cluster knows: bearer tokens checked with the API server's
C{TokenReview}, and each request with C{SubjectAccessReview}, so the
cluster's RBAC decides who may exec, attach, port-forward and read pods;
podshell's own policy applies on top, at the gate.

Both answers are cached for a few seconds (a kubectl exec makes several
requests), by the token's digest, never the token, and in bounded caches.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from podshell.auth.identity import Identity
from podshell.gateway.kubernetes.cache import Expiring
from podshell.kube.front import HTTPError
from podshell.kube.resources import NAMESPACE_PATH, POD_PATH, PODS_PATH

log = Logger()

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
# The streaming subresources, as the API server names them.
_STREAMS = ("exec", "attach", "portforward")


class Poster(Protocol):
    """What is needed of the API client (L{podshell.gateway.kubernetes.client.APIServer})."""

    server: str

    def post(self, path: str, body: dict[str, Any]) -> Deferred[dict[str, Any]]: ...


@dataclass(frozen=True)
class ClusterUser(Identity):
    """A person as the cluster's TokenReview named them; C{uid} and C{extra}
    go back into every SubjectAccessReview, which webhooks may look at."""

    uid: str = ""
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class Attributes:
    """The resourceAttributes of a SubjectAccessReview (API group core)."""

    verb: str
    resource: str
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    group: str = ""

    def forbidden(self, user: str, reason: str) -> HTTPError:
        """The API server's own refusal, word for word."""
        resource = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        where = f'in the namespace "{self.namespace}"' if self.namespace else "at the cluster scope"
        why = f'User "{user}" cannot {self.verb} resource "{resource}" in API group "{self.group}" {where}'
        if reason:
            why += f": {reason}"
        what = f'{self.resource} "{self.name}"' if self.name else self.resource
        details = {"name": self.name, "group": self.group, "kind": self.resource}
        return HTTPError(403, "Forbidden", f"{what} is forbidden: {why}", details=details)


def attributes(method: str, path: str) -> list[Attributes]:
    """What the API server authorizes for a request, all of which must be
    allowed: a stream opened by POST (SPDY) is C{create}; one opened by GET
    (WebSocket) is C{get} and, as the API server checks since 1.35,
    C{create} too.  Discovery needs nothing; paths served nowhere, nothing."""
    if m := POD_PATH.match(path):
        ns, pod, sub = m["ns"], m["pod"], m["sub"]
        if sub in _STREAMS:
            verbs = ["create"] if method == "POST" else ["get", "create"]
            return [Attributes(v, "pods", ns, pod, sub) for v in verbs]
        return [Attributes("get", "pods", ns, pod, sub or "")] if method == "GET" else []
    if method != "GET":
        return []
    if m := PODS_PATH.match(path):
        return [Attributes("list", "pods", m["ns"] or "")]
    if m := NAMESPACE_PATH.match(path):
        return [Attributes("get", "namespaces", name=m["ns"])]
    return []


def token_review(token: str) -> dict[str, Any]:
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}


def access_review(user: ClusterUser, asked: Attributes) -> dict[str, Any]:
    spec: dict[str, Any] = {"user": user.name, "groups": sorted(user.groups), "resourceAttributes": asdict(asked)}
    if user.uid:
        spec["uid"] = user.uid
    if user.extra:
        spec["extra"] = {key: list(values) for key, values in user.extra}
    return {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": spec}


def reviewed_user(answer: dict[str, Any]) -> ClusterUser | None:
    """The person a TokenReview's answer names, or None if it does not."""
    status = answer.get("status") or {}
    user = status.get("user") or {}
    if not status.get("authenticated") or not user.get("username"):
        return None
    extra = tuple(sorted((k, tuple(v or ())) for k, v in (user.get("extra") or {}).items()))
    return ClusterUser(user["username"], frozenset(user.get("groups") or ()), user.get("uid") or "", extra)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""


def verdict(answer: dict[str, Any]) -> Verdict:
    status = answer.get("status") or {}
    return Verdict(bool(status.get("allowed")) and not status.get("denied"), status.get("reason") or "")


class ClusterReviews:
    """Checks requests with the cluster's API server, and remembers the answers
    a little while (C{allowed_ttl} seconds for a yes, C{denied_ttl} for a no)."""

    def __init__(
        self, api: Poster, clock: IReactorTime, allowed_ttl: float, denied_ttl: float, cache_size: int
    ) -> None:
        self.api = api
        self.allowed_ttl = allowed_ttl
        self.denied_ttl = denied_ttl
        # A 1-tuple: a token the cluster does not know is remembered too.
        self._users: Expiring[bytes, tuple[ClusterUser | None]] = Expiring(clock, cache_size)
        self._verdicts: Expiring[tuple[ClusterUser, Attributes], Verdict] = Expiring(clock, cache_size)

    def check(self, token: str, method: str, path: str) -> Deferred[Identity]:
        """The person C{token} is, if the cluster lets them make this request.

        @return: fails with L{HTTPError}: 401 (not a token the cluster
            knows), 403 (RBAC says no), 503 (the API server did not answer).
        """
        d = self.authenticate(token)

        def authenticated(user: ClusterUser | None) -> Deferred[Identity]:
            if user is None:
                raise HTTPError(401, "Unauthorized", "Unauthorized: the cluster does not know the bearer token")
            return self.authorize(user, attributes(method, path)).addCallback(lambda _: user)

        return d.addCallback(authenticated)

    def authenticate(self, token: str) -> Deferred[ClusterUser | None]:
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._users.get(digest)
        if cached is not None:
            return succeed(cached[0])

        def reviewed(answer: dict[str, Any]) -> ClusterUser | None:
            user = reviewed_user(answer)
            self._users.put(digest, (user,), self.allowed_ttl if user else self.denied_ttl)
            return user

        return self._post(TOKEN_REVIEWS, token_review(token), "check the bearer token").addCallback(reviewed)

    def authorize(self, user: ClusterUser, asked: list[Attributes]) -> Deferred[None]:
        """Fails with the 403 of the first thing asked that is not allowed
        (asked one after the other: the second is often not needed)."""
        if not asked:
            return succeed(None)
        first, rest = asked[0], asked[1:]

        def then(found: Verdict) -> Deferred[None]:
            if not found.allowed:
                raise first.forbidden(user.name, found.reason)
            return self.authorize(user, rest)

        return self._verdict(user, first).addCallback(then)

    def _verdict(self, user: ClusterUser, asked: Attributes) -> Deferred[Verdict]:
        key = (user, asked)
        cached = self._verdicts.get(key)
        if cached is not None:
            return succeed(cached)

        def reviewed(answer: dict[str, Any]) -> Verdict:
            found = verdict(answer)
            self._verdicts.put(key, found, self.allowed_ttl if found.allowed else self.denied_ttl)
            return found

        body = access_review(user, asked)
        return self._post(ACCESS_REVIEWS, body, "check what the user may do").addCallback(reviewed)

    def _post(self, path: str, body: dict[str, Any], what: str) -> Deferred[dict[str, Any]]:
        def unavailable(failure: Failure) -> Failure:
            reason = failure.getErrorMessage() or repr(failure.value)
            message = f"cannot {what} with the cluster's API server {self.api.server}: {reason}"
            log.warn("{message}", message=message)
            return Failure(HTTPError(503, "ServiceUnavailable", message))

        try:
            d = self.api.post(path, body)
        except Exception:  # the request could not even be made (a token file gone)
            d = Deferred()
            d.errback()
        return d.addErrback(unavailable)
