"""The API server's two review APIs, for tests: TokenReview
(authentication.k8s.io/v1) and SubjectAccessReview (authorization.k8s.io/v1),
as a self-contained twisted.web Resource.  Requests and answers go through
the official client's models, so what podshell sends and reads is what a
real API server takes and gives."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

from kubernetes.client import (
    ApiClient,
    V1SubjectAccessReview,
    V1SubjectAccessReviewStatus,
    V1TokenReview,
    V1TokenReviewStatus,
    V1UserInfo,
)
from twisted.web.resource import Resource
from twisted.web.server import Request

_MODELS = {b"tokenreviews": V1TokenReview, b"subjectaccessreviews": V1SubjectAccessReview}


@dataclass(frozen=True)
class Rule:
    """RBAC-ish: these subjects (C{user:NAME}, C{group:NAME}) may these verbs
    on these resources (C{pods/exec}) in these namespaces (globs)."""

    subjects: list[str]
    verbs: list[str]
    resources: list[str]
    namespaces: list[str] = field(default_factory=lambda: ["*"])

    def allows(self, user: str, groups: list[str], verb: str, resource: str, namespace: str) -> bool:
        mine = {f"user:{user}"} | {f"group:{g}" for g in groups}
        return (
            bool(mine & set(self.subjects))
            and any(fnmatchcase(verb, v) for v in self.verbs)
            and any(fnmatchcase(resource, r) for r in self.resources)
            and any(fnmatchcase(namespace, n) for n in self.namespaces)
        )


class _Endpoint(Resource):
    isLeaf = True

    def __init__(self, reviews: Reviews, kind: bytes) -> None:
        super().__init__()
        self.reviews, self.kind = reviews, kind

    def render_POST(self, request: Request) -> bytes:
        self.reviews.counts[self.kind.decode()] += 1
        api = ApiClient()
        review = api.deserialize(request.content.read().decode(), _MODELS[self.kind].__name__, "application/json")
        review.status = (self.reviews.token if self.kind == b"tokenreviews" else self.reviews.access)(review)
        request.setResponseCode(201)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(api.sanitize_for_serialization(review)).encode()


class Reviews(Resource):
    """C{/apis/authentication.k8s.io/v1/tokenreviews} and
    C{/apis/authorization.k8s.io/v1/subjectaccessreviews}; C{counts} has
    how many of each were asked."""

    def __init__(self, tokens: dict[str, tuple[str, list[str]]], rules: list[Rule]) -> None:
        super().__init__()
        self.tokens, self.rules = tokens, rules
        self.counts: Counter[str] = Counter()
        for group, kind in (
            (b"authentication.k8s.io", b"tokenreviews"),
            (b"authorization.k8s.io", b"subjectaccessreviews"),
        ):
            version = Resource()
            version.putChild(kind, _Endpoint(self, kind))
            api = Resource()
            api.putChild(b"v1", version)
            self.children.setdefault(b"apis", Resource()).putChild(group, api)

    def token(self, review: V1TokenReview) -> V1TokenReviewStatus:
        known = self.tokens.get(review.spec.token)
        if known is None:
            return V1TokenReviewStatus(authenticated=False, error="invalid bearer token")
        user, groups = known
        info = V1UserInfo(username=user, uid=f"uid-{user}", groups=[*groups, "system:authenticated"])
        return V1TokenReviewStatus(authenticated=True, user=info)

    def access(self, review: V1SubjectAccessReview) -> V1SubjectAccessReviewStatus:
        spec, asked = review.spec, review.spec.resource_attributes
        resource = f"{asked.resource}/{asked.subresource}" if asked.subresource else asked.resource
        allowed = any(
            r.allows(spec.user, spec.groups or [], asked.verb, resource, asked.namespace or "") for r in self.rules
        )
        return V1SubjectAccessReviewStatus(allowed=allowed, reason="allowed by a test rule" if allowed else "")


class _Counts(Resource):
    """How many reviews were asked, for a test in another process."""

    isLeaf = True

    def __init__(self, reviews: Reviews) -> None:
        super().__init__()
        self.reviews = reviews

    def render_GET(self, request: Request) -> bytes:
        return json.dumps(self.reviews.counts).encode()


def main() -> None:
    """C{python -m tests.support.kubereviews PORT DIR SETTINGS.json}: serve the
    reviews over TLS on 127.0.0.1:PORT with a certificate whose CA is
    written to DIR/ca.crt; C{GET /counts} says how many were asked."""
    import sys
    from pathlib import Path

    from OpenSSL import crypto
    from twisted.internet import reactor, ssl
    from twisted.web.server import Site

    from podshell.pki.state_ca import issue, make_ca

    port, where, settings = int(sys.argv[1]), sys.argv[2], json.loads(Path(sys.argv[3]).read_text())
    ca = make_ca("in-test API server CA")
    leaf = issue(ca, "kube-apiserver", server_names=["127.0.0.1"])
    with open(f"{where}/ca.crt", "wb") as f:
        f.write(ca.cert_pem)
    reviews = Reviews({t: (u, g) for t, (u, g) in settings["tokens"].items()}, [Rule(**r) for r in settings["rules"]])
    reviews.putChild(b"counts", _Counts(reviews))
    options = ssl.CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(leaf.key),
        certificate=crypto.X509.from_cryptography(leaf.cert),
    )
    reactor.listenSSL(port, Site(reviews), options, interface="127.0.0.1")  # type: ignore[attr-defined]
    print("listening", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
