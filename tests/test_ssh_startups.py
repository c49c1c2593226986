"""Limits on unauthenticated SSH connections against a real flood: thousands
of TCP connections that send a version line and stall, from 127.0.0.2, while
a real OpenSSH client logs in from 127.0.0.1 (both loopback, two source
addresses: what per_source_max_startups tells apart)."""

from __future__ import annotations

import resource
import subprocess
import time

import pytest

from .conftest import needs_root, pod
from .sshserver import Client, PodshellServer, keygen
from .support.flood import Flood, Reconnecting
from .support.waiting import wait_until

pytestmark = needs_root

FLOOD = 5000
GRACE = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, FLOOD + 1000)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))  # twistd inherits it too
    root = tmp_path_factory.mktemp("startups")
    key = keygen(root / "id_alice")
    users = [{"name": "alice", "ssh_keys": [key]}]
    policy = [{"subjects": ["user:alice"], "verbs": ["exec"], "namespaces": ["team-a"]}]
    pods = [pod("web-0", {"name": "app", "command": ["sleep", "3600"]}, namespace="team-a")]
    srv = PodshellServer(root, pods, users, policy, ssh={"login_grace_time": GRACE})
    try:
        srv.wait_ready(containers=1)
        yield srv
    finally:
        srv.stop()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def alice(server):
    return Client(server, server.root / "id_alice")


def login(alice: Client) -> subprocess.CompletedProcess:
    return alice.ssh("team-a.web-0", "echo in", timeout=10)


def test_a_login_goes_through_a_flood_of_stalled_connections_from_elsewhere(server, alice):
    flood = Flood(server.port, ["127.0.0.2"] * FLOOD)
    try:
        held, refused = flood.settle()
        assert (held, refused) == (5, FLOOD - 5)  # per_source_max_startups: 5
        assert flood.refusals() == {b"podshell: too many unauthenticated connections, try again later\r\n"}
        again = Reconnecting(server.port, "127.0.0.2")  # and the flood keeps trying
        try:
            done = login(alice)
        finally:
            again.stop()
        assert (done.returncode, done.stdout, done.stderr) == (0, b"in\n", b"")
        lines = [line for line in server.log.read_text().splitlines() if "SSH: refused" in line]
        assert 1 <= len(lines) <= 3, lines  # one line per 10 s, not one per connection
        assert "the latest from 127.0.0.2: per_source_max_startups" in lines[0]
        for s in set(flood.sockets) - flood.closed:  # the five held: dropped at the grace time
            s.settimeout(GRACE + 10)
            while data := s.recv(65536):
                flood.received[s] += data
            assert b"podshell: not logged in within the login grace time (3 s)" in flood.received[s]
        assert "SSH: dropped 1 connection(s) not logged in within the login grace time" in server.log.read_text()
    finally:
        flood.close()


def test_stalled_connections_from_many_addresses_fill_the_total_until_their_grace_time(server, alice):
    time.sleep(GRACE)  # the places the last test's flood held are free
    addresses = (f"127.0.{i // 250 + 1}.{i % 250 + 1}" for i in range(10000))  # one connection each
    floods: list[Flood] = []
    try:
        held = 0
        while held < 100:  # max_startups 10:30:100: early drop from 10, then at 100 every one
            floods.append(Flood(server.port, [next(addresses) for _ in range(250)]))
            held += floods[-1].settle()[0]
        assert held == 100
        kept_out = login(alice)
        assert kept_out.returncode == 255, kept_out
        started = time.monotonic()
        wait_until(lambda: login(alice).returncode == 0, GRACE + 10, "a login once the grace time dropped the flood")
        assert time.monotonic() - started < GRACE + 5
    finally:
        for flood in floods:
            flood.close()
