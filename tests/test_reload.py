"""SIGHUP's reload on files: users, keys, tokens and policy are taken in
place; a bad file changes nothing and the log says why, in one line."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from twisted.conch.ssh.keys import Key
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

from podshell.auth.identity import Identity
from podshell.auth.policy import Access
from podshell.server.reload import Reloader
from podshell.server.tap import load

from .conftest import needs_root, pod
from .sshserver import Client, PodshellServer
from .support.waiting import wait_until


def public_key(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


ALICE_TOKEN = "alice-token-0123456789"
BOB_TOKEN = "bob-token-0123456789abc"


@pytest.fixture
def files(tmp_path):
    keys = {name: public_key(tmp_path / f"id_{name}") for name in ("alice", "bob")}
    config = tmp_path / "podshell.yaml"

    def write(users: list[str], denied: list[str] = (), **extra) -> None:
        tokens = {"alice": ALICE_TOKEN, "bob": BOB_TOKEN}
        doc = {
            "state_dir": "./state",
            "users": [{"name": u, "ssh_keys": [keys[u]], "tokens": [tokens[u]]} for u in users],
            "policy": [{"subjects": ["*"], "verbs": ["exec"], "namespaces": ["team-a"]}]
            + ([{"subjects": [f"user:{u}" for u in denied], "verbs": ["*"], "namespaces": ["*"], "effect": "deny"}]
               if denied else []),
            **extra,
        }  # fmt: skip
        config.write_text(yaml.safe_dump(doc))

    write.config = config  # type: ignore[attr-defined]
    write.blob = lambda name: Key.fromString(keys[name]).blob()  # type: ignore[attr-defined]
    return write


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def lines(events: list[dict], level: LogLevel) -> list[str]:
    return [formatEvent(e) for e in events if e.get("log_level") is level and "reload" in formatEvent(e)]


def exec_in_team_a(name: str) -> Access:
    return Access(Identity(name), "exec", "team-a", "web-0", "app")


def test_users_keys_tokens_and_policy_are_taken_in_place(files, logged):
    files(["alice"])
    loaded = load(str(files.config))
    reloader = Reloader(files.config, loaded.config, loaded.directory, loaded.policy)
    assert loaded.directory.by_token(BOB_TOKEN) is None
    assert loaded.policy.decide(exec_in_team_a("alice"))

    files(["alice", "bob"], denied=["alice"])
    assert reloader.reload()
    # The same objects the front doors hold: they see the new users and rules.
    assert loaded.directory.by_token(BOB_TOKEN) == Identity("bob")
    assert loaded.directory.by_key(files.blob("bob")) == Identity("bob")
    assert not loaded.policy.decide(exec_in_team_a("alice"))
    assert loaded.policy.decide(exec_in_team_a("bob"))
    assert lines(logged, LogLevel.info) == [
        f"reload: {files.config}: 2 users, 2 policy rules in force for new requests"
    ]

    files(["bob"])
    assert reloader.reload()
    assert loaded.directory.by_token(ALICE_TOKEN) is None
    assert loaded.directory.by_key(files.blob("alice")) is None


@pytest.mark.parametrize(
    ("breakage", "problem"),
    [
        (lambda path: path.write_text("users: [\n"), "podshell.yaml:2:1: invalid YAML"),
        (lambda path: path.write_text(path.read_text().replace("exec", "shell")), "policy[0].verbs: unknown verb 'shell'"),
        (lambda path: path.write_text(path.read_text().replace("ssh-ed25519 ", "ssh-ed25519 x", 1)),
         "users[0].ssh_keys[0]: not an OpenSSH public key line"),
        (lambda path: path.unlink(), "no such file"),
    ],
)  # fmt: skip
def test_a_bad_file_keeps_the_running_configuration_and_says_why(files, logged, breakage, problem):
    files(["alice"])
    loaded = load(str(files.config))
    reloader = Reloader(files.config, loaded.config, loaded.directory, loaded.policy)
    breakage(files.config)
    assert not reloader.reload()
    assert loaded.directory.by_token(ALICE_TOKEN) == Identity("alice")
    assert loaded.policy.decide(exec_in_team_a("alice"))
    [line] = lines(logged, LogLevel.error)
    assert line.startswith(f"reload: kept the running configuration: {files.config}")
    assert problem in line and "\n" not in line


def test_keys_a_reload_does_not_apply_are_named(files, logged):
    files(["alice"])
    loaded = load(str(files.config))
    reloader = Reloader(files.config, loaded.config, loaded.directory, loaded.policy)
    files(["alice"], ssh={"listen": "tcp:2022"}, refresh=5)
    assert reloader.reload()
    assert lines(logged, LogLevel.warn) == [f"reload: {files.config}: refresh, ssh changed, which takes a restart"]


def echoed(session: subprocess.Popen, text: bytes, timeout: float = 10.0) -> bytes:
    """What C{cat} in the session gives back of C{text}."""
    assert session.stdin is not None and session.stdout is not None
    session.stdin.write(text)
    session.stdin.flush()
    got = b""
    deadline = time.monotonic() + timeout
    while len(got) < len(text) and (left := deadline - time.monotonic()) > 0:
        if select.select([session.stdout], [], [], left)[0]:
            chunk = os.read(session.stdout.fileno(), 65536)
            if not chunk:
                break
            got += chunk
    return got


@needs_root
def test_sighup_under_twistd_keeps_sessions_and_applies_to_new_logins(tmp_path):
    key = public_key(tmp_path / "id_alice")
    users = [{"name": "alice", "ssh_keys": [key]}]
    policy = [{"subjects": ["user:alice"], "verbs": ["exec"], "namespaces": ["team-a"]}]
    pods = [pod("web-0", {"name": "app", "command": ["sleep", "3600"]}, namespace="team-a")]
    server = PodshellServer(tmp_path, pods, users, policy)
    session = None
    try:
        server.wait_ready(containers=1)
        alice = Client(server, tmp_path / "id_alice")
        argv = [*alice.ssh_argv("team-a.web-0"), "cat"]
        session = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert echoed(session, b"before\n") == b"before\n"

        path = tmp_path / "podshell.yaml"
        config = yaml.safe_load(path.read_text())
        config["policy"].append({"subjects": ["user:alice"], "verbs": ["*"], "namespaces": ["*"], "effect": "deny"})
        path.write_text(yaml.safe_dump(config))
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "reload: " in server.log.read_text(), 10, "the reload's log line")
        assert echoed(session, b"after\n") == b"after\n"  # the open session carries on
        refused = alice.ssh("team-a.web-0", "true", timeout=15)
        assert refused.returncode == 255
        assert b"podshell: alice has no access to team-a/web-0" in refused.stderr

        path.write_text(path.read_text().replace("effect: deny", "effect: maybe"))
        server.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "kept the running configuration" in server.log.read_text(), 10, "the refusal's log line")
        [line] = [x for x in server.log.read_text().splitlines() if "kept the running configuration" in x]
        assert f"{path}: policy[1].effect:" in line
        assert b"alice has no access" in alice.ssh("team-a.web-0", "true", timeout=15).stderr  # the deny stays
        assert echoed(session, b"still\n") == b"still\n"
        assert server.proc.poll() is None
    finally:
        if session is not None:
            session.kill()
            session.wait()
        server.stop()
