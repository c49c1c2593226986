"""Every Prometheus metric podshell exports, in one registry per server.

Sessions and denials are counted where the audit log writes them
(L{podshell.auth.audit}), so each front door is counted by the one place
that already sees all of them; failed logins where the credentials are
checked; a gateway's node agents and a node's runtime are read from their
own state (C{problem}) when Prometheus scrapes.  The registry is the
server's own, never the client library's global one: a test process may
hold several servers.  The README's "Metrics and health" lists them all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from enum import StrEnum
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from podshell.core.denial import DenialKind


class FrontDoor(StrEnum):
    """The way a session came in (the audit log's C{via}, its first word)."""

    SSH = "ssh"
    API = "api"  # the Kubernetes API: kubectl, the Python client, the native CLI
    GATEWAY = "gateway"  # a node agent serving a gateway's stream
    OTHER = "other"

    @classmethod
    def of(cls, via: str) -> FrontDoor:
        word = via.split(" ", 1)[0]
        return cls(word) if word in cls._value2member_map_ else cls.OTHER


class Outcome(StrEnum):
    """How a session ended, from the audit log's C{status}."""

    OK = "ok"  # exit code 0, or a stream or forward closed
    ERROR = "error"  # a non-zero exit code or a signal
    FAILED = "failed"  # podshell could not run it (the status says why)
    GONE = "gone"  # the client hung up or went away first
    ENDED = "ended"  # podshell ended it: a timeout, an operator, a shutdown

    @classmethod
    def of(cls, status: str) -> Outcome:
        if status.startswith("ended"):
            return cls.ENDED
        if status.startswith("failed"):
            return cls.FAILED
        if status in ("hung up", "client went away") or status.startswith("refused by the client"):
            return cls.GONE
        if status.startswith("signal ") or (status.startswith("exit code ") and status != "exit code 0"):
            return cls.ERROR
        return cls.OK


class AuthMethod(StrEnum):
    """The credentials a failed login offered."""

    PUBLICKEY = "publickey"  # SSH: a key nobody has, or a bad signature
    TOKEN = "token"  # API: a bearer token that is not valid
    CERTIFICATE = "certificate"  # API: a client certificate no user has, and no token
    NONE = "none"  # API: neither a token nor a client certificate


class SSHLimit(StrEnum):
    """The SSH limit that a connection or channel hit."""

    MAX_STARTUPS = "max_startups"  # refused at accept: the total, by random early drop
    PER_SOURCE = "per_source_max_startups"  # refused at accept: too many from its address
    GRACE_TIME = "login_grace_time"  # dropped: not logged in within the grace time
    MAX_CHANNELS = "max_channels"  # a channel open refused: the connection has its share
    KEEPALIVE = "keepalive_count_max"  # dropped: the client answered no keepalive
    MAX_SESSIONS_PER_USER = "max_sessions_per_user"  # a session refused: its user has the cap open


class APILimit(StrEnum):
    """The limit of the Kubernetes API's streaming connections that one hit."""

    KEEPALIVE = "keepalive_count_max"  # dropped: the client answered no ping
    MAX_STREAMS = "max_streams"  # a SPDY stream refused (RST_STREAM REFUSED_STREAM)
    MAX_FORWARD_CONNECTIONS = "max_forward_connections"  # a port-forward's connection refused
    MAX_SESSIONS_PER_USER = "max_sessions_per_user"  # a stream refused: its user has the cap open


# Session start: the gate's name -> policy -> placement, up to the session's audit record.
START_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# A node agent's pod listing, TLS round trip included.
LIST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Watched(Protocol):
    """A node agent (gateway) or a runtime (node): None while it answers."""

    @property
    def problem(self) -> str | None: ...


class Metrics:
    """The server's metrics and their registry (L{registry} is what is served)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_started = Counter(
            "podshell_sessions_started", "Sessions let in, by front door and verb", ["front_door", "verb"], registry=r
        )
        self.sessions_ended = Counter(
            "podshell_sessions_ended",
            "Sessions ended, by front door, verb and outcome",
            ["front_door", "verb", "outcome"],
            registry=r,
        )
        self.sessions_active = Gauge(
            "podshell_sessions_active", "Sessions under way, by front door", ["front_door"], registry=r
        )
        self.bytes = Counter(
            "podshell_session_bytes",
            "Bytes of ended sessions, by front door; direction in: into the pod, out: out of it",
            ["front_door", "direction"],
            registry=r,
        )
        self.denials = Counter(
            "podshell_denials",
            "Requests refused, by front door, verb and kind (forbidden, not-found, invalid, unavailable)",
            ["front_door", "verb", "kind"],
            registry=r,
        )
        self.auth_failures = Counter(
            "podshell_authentication_failures",
            "Credentials refused, by front door and method",
            ["front_door", "method"],
            registry=r,
        )
        self.ssh_limits = Counter(
            "podshell_ssh_limits_hit",
            "SSH connections refused or dropped, and channel opens refused, by the limit they hit",
            ["limit"],
            registry=r,
        )
        self.api_limits = Counter(
            "podshell_api_limits_hit",
            "Kubernetes API streaming connections dropped, and streams or forwarded connections refused, by limit",
            ["limit"],
            registry=r,
        )
        self.recording_failures = Counter(
            "podshell_recording_failures",
            "Recordings that could not be opened or written, by the rule's mode (best-effort, required)",
            ["mode"],
            registry=r,
        )
        self.session_start = Histogram(
            "podshell_session_start_seconds",
            "From a request at the gate to its session's start (name, policy, placement, audit)",
            ["front_door"],
            buckets=START_BUCKETS,
            registry=r,
        )
        self.node_list = Histogram(
            "podshell_node_pod_list_seconds",
            "Round trip of a gateway's pod listing from a node agent, answered ones",
            ["node"],
            buckets=LIST_BUCKETS,
            registry=r,
        )
        self._state = _State()
        r.register(self._state)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_open_fds, ...
        PlatformCollector(registry=r)  # python_info

    def expect(self, doors: Sequence[FrontDoor], verbs: Sequence[str]) -> None:
        """Series at 0 from the start for the server's front doors: a rate
        or an alert on them works before the first session or failure."""
        methods = {FrontDoor.SSH: [AuthMethod.PUBLICKEY], FrontDoor.API: [AuthMethod.TOKEN, AuthMethod.CERTIFICATE]}
        for door in doors:
            self.sessions_active.labels(door)
            for verb in verbs:
                self.sessions_started.labels(door, verb)
            for method in methods.get(door, []):
                self.auth_failures.labels(door, method)
            if door is FrontDoor.SSH:
                for limit in SSHLimit:
                    self.ssh_limits.labels(limit)

    # Counted as they happen.
    def session_started(self, via: str, verb: str, seconds: float | None = None) -> None:
        door = FrontDoor.of(via)
        self.sessions_started.labels(door, verb).inc()
        self.sessions_active.labels(door).inc()
        if seconds is not None:
            self.session_start.labels(door).observe(seconds)

    def session_ended(self, via: str, verb: str, status: str, bytes_in: int, bytes_out: int) -> None:
        door = FrontDoor.of(via)
        self.sessions_ended.labels(door, verb, Outcome.of(status)).inc()
        self.sessions_active.labels(door).dec()
        self.bytes.labels(door, "in").inc(max(bytes_in, 0))
        self.bytes.labels(door, "out").inc(max(bytes_out, 0))

    def denied(self, via: str, verb: str, kind: DenialKind) -> None:
        self.denials.labels(FrontDoor.of(via), verb, kind.value).inc()

    def authentication_failed(self, door: FrontDoor, method: AuthMethod) -> None:
        self.auth_failures.labels(door, method).inc()

    def ssh_limit_hit(self, limit: SSHLimit) -> None:
        self.ssh_limits.labels(limit).inc()

    def recording_failed(self, mode: str) -> None:
        self.recording_failures.labels(mode).inc()

    def api_limit_hit(self, limit: APILimit) -> None:
        self.api_limits.labels(limit).inc()

    def sessions_per_user_hit(self, via: str) -> None:
        """The per-user session cap refused one, counted with its front door's limits."""
        door = FrontDoor.of(via)
        if door is FrontDoor.SSH:
            self.ssh_limit_hit(SSHLimit.MAX_SESSIONS_PER_USER)
        elif door is FrontDoor.API:
            self.api_limit_hit(APILimit.MAX_SESSIONS_PER_USER)

    def pods_listed(self, node: str, seconds: float) -> None:
        self.node_list.labels(node).observe(seconds)

    # Read when scraped.
    def watch_nodes(self, nodes: Callable[[], Sequence[tuple[str, Watched]]]) -> None:
        """A gateway's node agents, by name: C{podshell_node_reachable}."""
        self._state.nodes = nodes

    def watch_ssh_startups(self, count: Callable[[], int]) -> None:
        """The SSH connections not logged in yet: C{podshell_ssh_unauthenticated}."""
        self._state.startups = count

    def watch_runtime(self, kind: str, runtime: Watched, errors: Callable[[], int]) -> None:
        """A node's runtime: C{podshell_runtime_up}, C{podshell_runtime_errors_total}."""
        self._state.runtimes.append((kind, runtime, errors))


class _State(Collector):
    def __init__(self) -> None:
        self.nodes: Callable[[], Sequence[tuple[str, Watched]]] | None = None
        self.runtimes: list[tuple[str, Watched, Callable[[], int]]] = []
        self.startups: Callable[[], int] | None = None

    def describe(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        return iter(())  # unchecked: its series come and go with the nodes

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        if self.startups is not None:
            yield GaugeMetricFamily(
                "podshell_ssh_unauthenticated",
                "SSH connections from accept until login (what max_startups limits)",
                value=float(self.startups()),
            )
        if self.nodes is not None:
            reachable = GaugeMetricFamily(
                "podshell_node_reachable", "1 if the node agent answered its last pod listing, else 0", labels=["node"]
            )
            for name, node in self.nodes():
                reachable.add_metric([name], 0.0 if node.problem else 1.0)
            yield reachable
        if self.runtimes:
            up = GaugeMetricFamily("podshell_runtime_up", "1 if the runtime answers, else 0", labels=["runtime"])
            errors = CounterMetricFamily(
                "podshell_runtime_errors", "The runtime's failed pod listings (each poll)", labels=["runtime"]
            )
            for kind, runtime, count in self.runtimes:
                up.add_metric([kind], 0.0 if runtime.problem else 1.0)
                errors.add_metric([kind], float(count()))
            yield up
            yield errors
