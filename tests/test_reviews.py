"""People from the cluster: which review a request needs, what the review
APIs are asked and answer (through an in-test server speaking their JSON,
checked against the official client's models), the caches, and the API
front door waiting for the answer."""

from __future__ import annotations

import json
from io import BytesIO

import h11
import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import getChildForRequest
from twisted.web.test.requesthelper import DummyRequest

from podshell.auth.identity import Identity
from podshell.gateway.kubernetes.cache import Expiring
from podshell.gateway.kubernetes.reviews import ClusterReviews, ClusterUser, attributes
from podshell.kube.front import APIProtocol, HTTPError

from .support.kubereviews import Reviews, Rule

TOKENS = {"alice-cluster-token": ("alice", ["dev"]), "bob-cluster-token": ("bob", [])}
RULES = [Rule(["group:dev"], ["get", "create"], ["pods/exec", "pods/attach"], ["team-a"])]


class Local:
    """The review server, rendered in place of a connection."""

    server = "https://api.test"

    def __init__(self, reviews: Reviews) -> None:
        self.reviews = reviews
        self.down = False

    def post(self, path: str, body: dict) -> Deferred[dict]:
        if self.down:
            return fail(ConnectionRefusedError("Connection refused"))
        request = DummyRequest(path.lstrip("/").encode().split(b"/"))
        request.method = b"POST"
        request.content = BytesIO(json.dumps(body).encode())
        return succeed(json.loads(getChildForRequest(self.reviews, request).render(request)))


def cluster(size: int = 4096) -> tuple[ClusterReviews, Reviews, Local, Clock]:
    server, clock = Reviews(TOKENS, RULES), Clock()
    local = Local(server)
    return ClusterReviews(local, clock, allowed_ttl=10, denied_ttl=5, cache_size=size), server, local, clock


def outcome(d: Deferred):
    results: list = []
    d.addBoth(results.append)
    (result,) = results
    return result


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("POST", "/api/v1/namespaces/a/pods/web/exec", [("create", "pods", "a", "web", "exec")]),
        ("GET", "/api/v1/namespaces/a/pods/web/exec", [("get", "pods", "a", "web", "exec"), ("create", "pods", "a", "web", "exec")]),
        ("GET", "/api/v1/namespaces/a/pods/web/portforward", [("get", "pods", "a", "web", "portforward"), ("create", "pods", "a", "web", "portforward")]),
        ("POST", "/api/v1/namespaces/a/pods/web/attach", [("create", "pods", "a", "web", "attach")]),
        ("GET", "/api/v1/namespaces/a/pods/web/log", [("get", "pods", "a", "web", "log")]),
        ("GET", "/api/v1/namespaces/a/pods/web", [("get", "pods", "a", "web", "")]),
        ("GET", "/api/v1/namespaces/a/pods", [("list", "pods", "a", "", "")]),
        ("GET", "/api/v1/pods", [("list", "pods", "", "", "")]),
        ("GET", "/api/v1/namespaces/a", [("get", "namespaces", "", "a", "")]),
        ("GET", "/api/v1", []),
        ("GET", "/version", []),
        ("POST", "/api/v1/namespaces/a/pods", []),
    ],
)  # fmt: skip
def test_what_each_request_asks_of_rbac(method, path, expected):
    got = [(a.verb, a.resource, a.namespace, a.name, a.subresource) for a in attributes(method, path)]
    assert got == expected


def test_an_allowed_exec_is_the_clusters_user_with_uid_and_groups():
    reviews, server, _, _ = cluster()
    user = outcome(reviews.check("alice-cluster-token", "GET", "/api/v1/namespaces/team-a/pods/web/exec"))
    assert user == ClusterUser("alice", frozenset({"dev", "system:authenticated"}), "uid-alice")
    assert "group:dev" in user.subjects
    assert server.counts == {"tokenreviews": 1, "subjectaccessreviews": 2}  # get and create


def test_a_denial_reads_as_the_api_servers_own():
    reviews, _, _, _ = cluster()
    error = outcome(reviews.check("bob-cluster-token", "POST", "/api/v1/namespaces/team-a/pods/web/exec")).value
    assert (error.code, error.reason) == (403, "Forbidden")
    assert str(error) == (
        'pods "web" is forbidden: User "bob" cannot create resource "pods/exec" in API group "" '
        'in the namespace "team-a"'
    )
    listing = outcome(reviews.check("alice-cluster-token", "GET", "/api/v1/pods")).value
    assert str(listing) == (
        'pods is forbidden: User "alice" cannot list resource "pods" in API group "" at the cluster scope'
    )


def test_unknown_tokens_are_401_and_remembered_for_the_denied_ttl():
    reviews, server, _, clock = cluster()
    for _ in range(3):
        error = outcome(reviews.check("made-up", "POST", "/api/v1/namespaces/team-a/pods/web/exec")).value
        assert (error.code, str(error)) == (401, "Unauthorized: the cluster does not know the bearer token")
    assert server.counts == {"tokenreviews": 1}
    clock.advance(5)
    outcome(reviews.check("made-up", "POST", "/api/v1/namespaces/team-a/pods/web/exec"))
    assert server.counts == {"tokenreviews": 2}


def test_answers_are_cached_for_their_ttl():
    reviews, server, _, clock = cluster()
    path = "/api/v1/namespaces/team-a/pods/web/exec"
    for _ in range(5):
        assert isinstance(outcome(reviews.check("alice-cluster-token", "POST", path)), Identity)
        assert isinstance(outcome(reviews.check("bob-cluster-token", "POST", path)).value, HTTPError)
    assert server.counts == {"tokenreviews": 2, "subjectaccessreviews": 2}
    clock.advance(5)  # bob's no is stale, alice's yes is not
    outcome(reviews.check("alice-cluster-token", "POST", path))
    outcome(reviews.check("bob-cluster-token", "POST", path))
    assert server.counts == {"tokenreviews": 2, "subjectaccessreviews": 3}
    clock.advance(5)
    outcome(reviews.check("alice-cluster-token", "POST", path))
    assert server.counts == {"tokenreviews": 3, "subjectaccessreviews": 4}  # bob's token aged too


def test_the_token_is_kept_only_as_a_digest():
    reviews, _, _, _ = cluster()
    outcome(reviews.check("alice-cluster-token", "POST", "/api/v1/namespaces/team-a/pods/web/exec"))
    assert "alice-cluster-token" not in repr(vars(reviews._users))


def test_an_unreachable_api_server_is_503_and_not_cached():
    reviews, _, local, _ = cluster()
    local.down = True
    error = outcome(reviews.check("alice-cluster-token", "POST", "/api/v1/namespaces/team-a/pods/web/exec")).value
    assert error.code == 503
    assert str(error).startswith("cannot check the bearer token with the cluster's API server https://api.test: ")
    assert "Connection refused" in str(error)
    local.down = False
    assert isinstance(
        outcome(reviews.check("alice-cluster-token", "POST", "/api/v1/namespaces/team-a/pods/web/exec")), Identity
    )


def test_the_cache_is_bounded_least_recently_used_first():
    clock = Clock()
    cache: Expiring[str, int] = Expiring(clock, 2)
    cache.put("a", 1, 10)
    cache.put("b", 2, 10)
    assert cache.get("a") == 1  # b is now the least recently used
    cache.put("c", 3, 10)
    assert (len(cache), cache.get("a"), cache.get("b"), cache.get("c")) == (2, 1, None, 3)
    clock.advance(10)
    assert cache.get("a") is None
    cache.put("d", 4, 0)  # a TTL of 0: not kept
    assert cache.get("d") is None


def _exchange(answer: Deferred) -> tuple[StringTransport, list[h11.Request]]:
    asked: list[h11.Request] = []

    def authenticate(event, transport):
        asked.append(event)
        return answer if len(asked) == 1 else Identity("carol")  # then known: at once

    protocol = APIProtocol(lambda method, path: lambda r: (200, {"who": r.identity.name}), authenticate)
    transport = StringTransport()
    protocol.makeConnection(transport)
    protocol.dataReceived(b"GET /version HTTP/1.1\r\nhost: x\r\n\r\nGET /api HTTP/1.1\r\nhost: x\r\n\r\n")
    return transport, asked


def test_the_front_door_waits_for_a_late_identity_reading_nothing_meanwhile():
    answer: Deferred[Identity] = Deferred()
    transport, asked = _exchange(answer)
    assert (transport.value(), transport.producerState, len(asked)) == (b"", "paused", 1)
    answer.callback(Identity("carol"))
    assert transport.producerState == "producing"
    assert transport.value().count(b'{"who":"carol"}') == 2  # the pipelined one, after it, asked again
    assert len(asked) == 2


def test_the_front_door_answers_a_late_refusal_as_a_status():
    transport, _ = _exchange(fail(HTTPError(503, "ServiceUnavailable", "cannot check the bearer token")))
    head, _, body = transport.value().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    status = json.loads(body.split(b"HTTP/1.1")[0])
    assert (status["kind"], status["code"], status["message"]) == ("Status", 503, "cannot check the bearer token")
