"""Target names: every form, dotted pods, long names, ambiguity, bad input."""

from __future__ import annotations

import pytest

from podshell.core.target import InvalidTarget, Target, TargetError, candidates, resolve, split_run_as

PODS = {
    ("team-a", "web-0"): ["app", "sidecar"],
    ("team-a", "web-0.app"): ["main"],  # a dotted pod whose last part is also a container of web-0
    ("team-a", "db.primary"): ["postgres"],
    ("ns", "x" * 100 + ".y" * 20): ["c"],
}


def lookup(ns: str, pod: str) -> list[str] | None:
    return PODS.get((ns, pod))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("team-a.web-0.sidecar", Target("team-a", "web-0", "sidecar")),
        ("team-a.web-0", Target("team-a", "web-0", None)),
        ("team-a/web-0/app", Target("team-a", "web-0", "app")),
        ("team-a/web-0", Target("team-a", "web-0", None)),
        ("team-a/web-0.app", Target("team-a", "web-0.app", None)),
        ("team-a/web-0.app/main", Target("team-a", "web-0.app", "main")),
        ("team-a.db.primary", Target("team-a", "db.primary", None)),  # no pod "db": the whole rest is the pod
        ("team-a.db.primary.postgres", Target("team-a", "db.primary", "postgres")),
        ("ns." + "x" * 100 + ".y" * 20 + ".c", Target("ns", "x" * 100 + ".y" * 20, "c")),
    ],
)
def test_resolves(text, expected):
    assert resolve(text, lookup) == expected


def test_ambiguity_lists_the_candidates():
    with pytest.raises(InvalidTarget, match=r"ambiguous, it may mean team-a/web-0/app or team-a/web-0.app"):
        resolve("team-a.web-0.app", lookup)


@pytest.mark.parametrize(
    "text, message",
    [
        ("team-a.web-9", "no pod team-a/web-9"),
        ("team-a/web-0/db", r"pod team-a/web-0 has no container 'db' \(it has: app, sidecar\)"),
        ("team-a.web-9.app", "no pod team-a/web-9 with container 'app', and no pod team-a/web-9.app"),
    ],
)
def test_missing_targets(text, message):
    with pytest.raises(TargetError, match=message):
        resolve(text, lookup)


@pytest.mark.parametrize(
    "text, why",
    [
        ("web-0", "no pod name"),
        ("", "no pod name"),
        ("a/b/c/d", "too many '/'"),
        ("Team.web", "namespace 'Team' must be lower-case"),
        ("ns.-web", "pod name '-web' must be"),
        ("ns/web/Bad_C", "container name 'Bad_C' must be"),
        ("n" * 64 + ".web", "namespace longer than 63 characters"),
        ("ns/" + "p" * 254, "pod name longer than 253 characters"),
        ("ns..web", "pod name '.web' must be"),
        ("ns/web/", "empty container name"),
    ],
)
def test_invalid_names_say_what_a_valid_one_looks_like(text, why):
    with pytest.raises(InvalidTarget, match=why) as info:
        candidates(text)
    assert "expected NAMESPACE.POD[.CONTAINER] or NAMESPACE/POD[/CONTAINER]" in str(info.value)


def test_a_trailing_part_that_is_no_valid_container_belongs_to_the_pod():
    # "1a-" is no DNS label, so the dotted rest can only be a pod name... which is also invalid
    with pytest.raises(InvalidTarget):
        candidates("ns.web.1a-")
    assert candidates("ns.web.0") == [Target("ns", "web", "0"), Target("ns", "web.0")]


def test_the_ssh_form_names_a_user_to_run_as_after_a_plus():
    assert split_run_as("team-a.web-0.app") == ("team-a.web-0.app", None)
    assert split_run_as("team-a.web-0.app+postgres") == ("team-a.web-0.app", "postgres")
    assert split_run_as("team-a/web-0+1000") == ("team-a/web-0", "1000")
    assert split_run_as("team-a.web-0+0") == ("team-a.web-0", "0")
    for bad in (
        "team-a.web-0+",
        "team-a.web-0+a b",
        "team-a.web-0+x+y",
        "team-a.web-0+" + "u" * 33,
        "x.y+00",
        "x.y+a:0",
    ):
        with pytest.raises(InvalidTarget, match="user"):
            split_run_as(bad)
