"""The policy matrix: verbs x namespaces x pods x containers, globs, deny rules, sources."""

from __future__ import annotations

import itertools

import pytest

from podshell.auth.identity import Identity
from podshell.auth.policy import Access, Policy, Rule

ALICE = Identity("alice", frozenset({"dev"}))
BOB = Identity("bob")
CAROL = Identity("carol", frozenset({"ops"}))

POLICY = Policy(
    [
        Rule(subjects=["group:dev", "user:bob"], verbs=["exec", "attach", "port-forward"], namespaces=["team-a"]),
        Rule(subjects=["group:dev"], verbs=["exec"], namespaces=["team-b"], pods=["web-*"], containers=["app"]),
        Rule(subjects=["user:bob"], verbs=["*"], namespaces=["team-a"], pods=["db-*"], effect="deny"),
        Rule(subjects=["group:ops"], verbs=["*"], namespaces=["*"], sources=["10.0.0.0/8"]),
    ]
)

NAMESPACES = ["team-a", "team-b", "kube-system"]
PODS = ["web-0", "db-0"]
CONTAINERS = ["app", "sidecar"]
VERBS = ["exec", "attach", "port-forward"]


def expected(who: Identity, verb: str, ns: str, pod: str, ctr: str | None, source: str) -> bool:
    """The same policy, written out by hand."""
    if who not in (ALICE, BOB, CAROL):
        return False
    if who is CAROL:
        return source.startswith("10.")
    if who is BOB and ns == "team-a" and pod.startswith("db-"):
        return False
    if ns == "team-a":
        return True
    if who is ALICE and ns == "team-b":
        return verb == "exec" and pod.startswith("web-") and ctr in ("app", None)
    return False


@pytest.mark.parametrize("who", [ALICE, BOB, CAROL, Identity("mallory")], ids=lambda i: i.name)
def test_matrix(who):
    for verb, ns, pod, ctr, source in itertools.product(
        VERBS, NAMESPACES, PODS, [*CONTAINERS, None], ["127.0.0.1", "10.1.2.3", "::1"]
    ):
        decision = POLICY.decide(Access(who, verb, ns, pod, ctr, source))
        assert bool(decision) == expected(who, verb, ns, pod, ctr, source), (who, verb, ns, pod, ctr, source)


def test_reasons_name_the_rule():
    assert POLICY.decide(Access(ALICE, "exec", "team-a", "web-0", "app")).reason == "allowed by policy[0]"
    assert POLICY.decide(Access(BOB, "exec", "team-a", "db-0", "app")).reason == "denied by policy[2]"
    assert POLICY.decide(Access(BOB, "exec", "team-b", "web-0", "app")).reason == "no policy rule allows it"


def test_nothing_is_allowed_without_rules():
    assert not Policy([]).decide(Access(ALICE, "exec", "team-a", "web-0", "app"))


def test_sources_need_an_address():
    assert not POLICY.decide(Access(CAROL, "exec", "x", "y", "z", None))
    assert not POLICY.decide(Access(CAROL, "exec", "x", "y", "z", "not-an-ip"))


def test_the_user_message():
    assert POLICY.message(Access(ALICE, "exec", "team-a", "web-0", "app")) == "alice may not exec in team-a/web-0/app"


RUN_AS = Policy(
    [
        Rule(subjects=["group:dev"], verbs=["*"], namespaces=["team-a"]),
        Rule(subjects=["group:dev"], verbs=["exec"], namespaces=["team-a"], pods=["db-*"], run_as=["postgres", "10??"]),
        Rule(subjects=["*"], verbs=["exec"], namespaces=["team-a"], pods=["db-1"], effect="deny", run_as=["postgres"]),
        Rule(subjects=["group:dev"], verbs=["exec"], namespaces=["team-a"], pods=["db-2"], effect="deny"),
    ]
)


@pytest.mark.parametrize(
    ("who", "pod", "run_as", "allowed"),
    [
        (ALICE, "web-0", None, True),  # the container's own user needs no run_as
        (ALICE, "web-0", "postgres", False),  # only a rule that names the user allows another
        (ALICE, "db-0", "postgres", True),
        (ALICE, "db-0", "1000", True),  # globs: uids too
        (ALICE, "db-0", "root", False),
        (ALICE, "db-1", "postgres", False),  # a deny rule naming the user wins
        (ALICE, "db-1", "1000", True),  # ... and only for the users it names
        (ALICE, "db-1", None, True),  # ... never for the container's own user
        (ALICE, "db-2", "postgres", False),  # a deny rule without run_as denies whoever one runs as
        (BOB, "db-0", "postgres", False),
    ],
)
def test_running_as_another_user_needs_a_rule_that_names_them(who, pod, run_as, allowed):
    access = Access(who, "exec", "team-a", pod, "app", run_as=run_as)
    assert bool(RUN_AS.decide(access)) is allowed
    if not allowed and run_as is not None:
        assert RUN_AS.message(access) == f"{who.name} may not exec in team-a/{pod}/app as {run_as}"


def test_run_as_is_never_an_empty_list():
    with pytest.raises(ValueError, match="run_as"):
        Rule(subjects=["*"], verbs=["exec"], namespaces=["*"], run_as=[])


def test_a_rule_with_run_as_allows_only_those_users():
    """ "May exec only as postgres" can be written: a run_as rule does not
    also allow the container's own user."""
    only = Policy([Rule(subjects=["group:dev"], verbs=["exec"], namespaces=["team-a"], run_as=["postgres"])])
    assert only.decide(Access(ALICE, "exec", "team-a", "db-0", "app", run_as="postgres"))
    assert not only.decide(Access(ALICE, "exec", "team-a", "db-0", "app"))
