"""Limits on unauthenticated SSH connections (MaxStartups, PerSourceMaxStartups,
LoginGraceTime) on Twisted's fakes: the early-drop decision with a chosen
random source, the counting as connections come, log in and go, and the
grace time on a fake clock.  No sockets, no root."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import transport
from twisted.conch.ssh.keys import Key
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher

from podshell.core.metrics import Metrics, SSHLimit
from podshell.gateway.ssh.connection import PodConnection
from podshell.gateway.ssh.server import PodSSHFactory, StartupLimits
from podshell.gateway.ssh.startups import REFUSAL, MaxStartups, Startups, Throttled, Ticket
from podshell.server.config import SSHConfig

KEY = Key(ed25519.Ed25519PrivateKey.generate())


# The decision.


@pytest.mark.parametrize(
    ("text", "spec"),
    [("10:30:100", MaxStartups(10, 30, 100)), ("20", MaxStartups(20, 100, 20)), (" 0:0:5 ", MaxStartups(0, 0, 5))],
)
def test_max_startups_is_read_as_sshd_reads_it(text, spec):
    assert MaxStartups.parse(text) == spec


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("10:30", "is not START:RATE:FULL"),
        ("a:b:c", "is not START:RATE:FULL"),
        ("10:130:100", "RATE is a percentage"),
        ("50:30:10", "START must not be above FULL"),
        ("0", "FULL must be at least 1"),
    ],
)
def test_a_bad_max_startups_says_what_is_wrong(text, why):
    with pytest.raises(ValueError, match=why):
        MaxStartups.parse(text)


def test_the_drop_probability_rises_from_rate_at_start_to_all_at_full():
    spec = MaxStartups(10, 30, 100)
    assert [spec.drop_probability(n) for n in (0, 9)] == [0.0, 0.0]
    assert spec.drop_probability(10) == pytest.approx(0.30)
    assert spec.drop_probability(55) == pytest.approx(0.65)
    assert spec.drop_probability(99) == pytest.approx(0.30 + 0.70 * 89 / 90)
    assert [spec.drop_probability(n) for n in (100, 5000)] == [1.0, 1.0]
    assert MaxStartups(5, 100, 5).drop_probability(4) == 0.0
    assert MaxStartups(5, 100, 5).drop_probability(5) == 1.0


def test_early_drop_draws_against_the_probability():
    draws = iter([0.29, 0.31])
    startups = Startups(MaxStartups(1, 30, 100), None, uniform=lambda: next(draws))
    assert isinstance(startups.admit("a"), Ticket)  # below start: no draw
    assert startups.admit("b") is SSHLimit.MAX_STARTUPS  # 0.29 < 0.30
    assert isinstance(startups.admit("c"), Ticket)  # 0.31: let in
    assert (startups.total, startups.by_source) == (2, {"a": 1, "c": 1})


def test_full_refuses_without_a_draw_and_a_release_makes_room():
    def never() -> float:
        raise AssertionError("no draw below start or at full")

    startups = Startups(MaxStartups(3, 100, 3), None, uniform=never)
    tickets = [startups.admit(s) for s in "abc"]
    assert startups.admit("d") is SSHLimit.MAX_STARTUPS
    first = tickets[0]
    assert isinstance(first, Ticket)
    first.release()
    first.release()  # once only
    assert startups.total == 2
    assert isinstance(startups.admit("d"), Ticket)


def test_one_source_fills_its_own_share_only():
    startups = Startups(MaxStartups(100, 30, 200), 2)
    assert [isinstance(startups.admit("10.0.0.1"), Ticket) for _ in range(2)] == [True, True]
    assert startups.admit("10.0.0.1") is SSHLimit.PER_SOURCE
    assert isinstance(startups.admit("10.0.0.2"), Ticket)
    assert startups.by_source == {"10.0.0.1": 2, "10.0.0.2": 1}


def test_a_flood_is_logged_once_then_once_an_interval_with_the_count():
    clock = Clock()
    quiet = Throttled(clock.seconds, interval=10)
    assert quiet.event() == 1
    assert [quiet.event() for _ in range(500)] == [0] * 500
    clock.advance(10)
    assert quiet.event() == 501
    clock.advance(3)
    assert quiet.event() == 0


def test_the_configuration_has_sshds_defaults_and_checks_them():
    ssh = SSHConfig()
    assert (ssh.startups, ssh.per_source_max_startups, ssh.login_grace_time) == (MaxStartups(10, 30, 100), 5, 60)
    assert SSHConfig(max_startups=50, per_source_max_startups=None).startups == MaxStartups(50, 100, 50)
    with pytest.raises(ValueError, match="START must not be above FULL"):
        SSHConfig(max_startups="50:30:10")
    with pytest.raises(ValueError):
        SSHConfig(per_source_max_startups=0)


# The factory and the transport, on fakes.


class Server:
    def __init__(self, limits: StartupLimits) -> None:
        self.clock = Clock()
        self.metrics = Metrics()
        self.factory = PodSSHFactory(Portal(None), [KEY], limits=limits, clock=self.clock, metrics=self.metrics)
        self.factory.doStart()
        self.port = 40000

    def connect(self, host: str = "10.0.0.1") -> tuple[object, StringTransport]:
        self.port += 1
        address = IPv4Address("TCP", host, self.port)
        protocol = self.factory.buildProtocol(address)
        tcp = StringTransport(peerAddress=address)
        protocol.makeConnection(tcp)
        return protocol, tcp

    def hit(self, limit: SSHLimit) -> float:
        found = self.metrics.registry.get_sample_value("podshell_ssh_limits_hit_total", {"limit": limit.value})
        return 0.0 if found is None else found

    @property
    def startups(self) -> Startups:
        assert self.factory.startups is not None
        return self.factory.startups


@pytest.fixture
def logged():
    events: list[dict] = []

    def observe(event: dict) -> None:
        if event.get("log_level") is LogLevel.warn and "SSH:" in event.get("log_format", ""):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def test_connections_are_counted_until_they_go_and_one_over_is_told_why(logged):
    server = Server(StartupLimits(MaxStartups(3, 100, 3), None, 60))
    held = [server.connect(f"10.0.0.{i}") for i in range(3)]
    assert all(tcp.value().startswith(b"SSH-2.0-podshell_") for _, tcp in held)
    assert server.startups.total == 3

    refused, tcp = server.connect("10.0.0.9")
    assert tcp.value() == REFUSAL and tcp.disconnecting
    assert not isinstance(refused, transport.SSHServerTransport)
    assert server.hit(SSHLimit.MAX_STARTUPS) == 1
    assert len(logged) == 1 and logged[0]["limit"] == "max_startups" and logged[0]["source"] == "10.0.0.9"

    protocol, _ = held[0]
    protocol.connectionLost(None)
    assert server.startups.total == 2
    _, tcp = server.connect("10.0.0.9")
    assert tcp.value().startswith(b"SSH-2.0-")


def test_a_login_gives_its_place_back_and_a_refusal_flood_logs_one_line(logged):
    server = Server(StartupLimits(MaxStartups(100, 30, 200), 2, 60))
    one, tcp = server.connect()
    server.connect()
    assert server.startups.by_source == {"10.0.0.1": 2}
    for _ in range(1000):
        _, refused = server.connect()
        assert refused.value() == REFUSAL
    assert server.hit(SSHLimit.PER_SOURCE) == 1000 and len(logged) == 1
    assert server.connect("10.0.0.2")[1].value().startswith(b"SSH-2.0-")  # another address

    one.setService(PodConnection())  # what userauth does once the user is authenticated
    assert server.startups.by_source == {"10.0.0.1": 1, "10.0.0.2": 1}
    server.clock.advance(60)
    assert not tcp.disconnecting  # logged in: no grace time any more
    assert server.startups.total == 0 and server.hit(SSHLimit.GRACE_TIME) == 2  # the other two
    one.connectionLost(None)
    assert server.startups.total == 0  # released once, not again

    server.connect()
    server.connect()
    _, refused = server.connect()
    assert refused.value() == REFUSAL
    assert [e["limit"] for e in logged if "limit" in e] == ["per_source_max_startups"] * 2  # a line an interval


def test_a_handshake_that_stalls_is_dropped_at_the_grace_time(logged):
    server = Server(StartupLimits(MaxStartups(10, 30, 100), 10, 30))
    stalled, tcp = server.connect()
    stalled.dataReceived(b"SSH-2.0-flood\r\n")
    server.clock.advance(29)
    assert not tcp.disconnecting and server.startups.total == 1
    server.clock.advance(1)
    assert tcp.disconnecting
    assert b"podshell: not logged in within the login grace time (30 s)" in tcp.value()
    assert server.startups.total == 0
    assert server.hit(SSHLimit.GRACE_TIME) == 1
    assert [e["count"] for e in logged] == [1]
    server.clock.advance(5)  # it read nothing: its connection is aborted
    assert tcp.disconnected
    stalled.connectionLost(None)
    assert server.startups.total == 0 and not server.clock.getDelayedCalls()


def test_without_limits_nothing_is_counted():
    factory = PodSSHFactory(Portal(None), [KEY])
    factory.doStart()
    protocol = factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", 1))
    protocol.makeConnection(StringTransport())
    assert factory.startups is None


def test_the_unauthenticated_are_read_when_scraped(tmp_path):
    from podshell.gateway.ssh.server import make_factory

    metrics = Metrics()
    limits = StartupLimits(MaxStartups(10, 30, 100), 5, 60)
    factory = make_factory([], ["aes128-gcm@openssh.com"], tmp_path, None, None, None, metrics, limits, Clock())
    factory.doStart()
    for port in (1, 2):
        factory.buildProtocol(IPv4Address("TCP", "10.0.0.1", port)).makeConnection(StringTransport())
    assert metrics.registry.get_sample_value("podshell_ssh_unauthenticated") == 2


def test_the_limits_series_are_there_at_zero():
    from podshell.core.metrics import FrontDoor

    metrics = Metrics()
    metrics.expect([FrontDoor.SSH], ["exec"])
    for limit in SSHLimit:
        assert metrics.registry.get_sample_value("podshell_ssh_limits_hit_total", {"limit": limit.value}) == 0
