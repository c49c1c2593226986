"""The server configuration: YAML, validated, with relative paths resolved
against the file's own directory.  Every mistake is one line naming the file
and the key."""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from podshell.auth.identity import NAME_PATTERN, User
from podshell.auth.live import Limits
from podshell.auth.policy import VERBS, Rule
from podshell.auth.recording import Retention
from podshell.core.keepalive import KeepaliveSettings
from podshell.core.metrics import APILimit
from podshell.core.yamlfile import ConfigError, StrictModel, load_document, load_documents, parse, resolve_path
from podshell.gateway.ssh.connection import ConnectionLimits
from podshell.gateway.ssh.startups import MaxStartups
from podshell.kube.limits import StreamLimits
from podshell.node.runtime.manifest import Backoff
from podshell.protocols.spdy import MAX_STREAMS


class Listener(StrictModel):
    listen: str = Field(min_length=1, description="a Twisted server endpoint string")


Cipher = Literal[
    "chacha20-poly1305@openssh.com",
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
]


class SSHConfig(Listener):
    listen: str = "tcp:2222:interface=127.0.0.1"
    accept_env: list[str] = Field(default=[], description="env names (globs) clients may set, beyond LANG, LC_*, TERM")
    ciphers: list[Cipher] = Field(
        default=["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com", "aes256-gcm@openssh.com"],
        min_length=1,
        description="offered (the client's preference wins); add aes128-ctr/aes256-ctr for clients without an AEAD",
    )
    # Unauthenticated connections (accept to login), as sshd's MaxStartups,
    # PerSourceMaxStartups and LoginGraceTime.
    max_startups: str = Field(
        default="10:30:100",
        description="START:RATE:FULL: from START unauthenticated connections on, refuse new ones with "
        "probability RATE% rising to 100% at FULL; or N (refuse at N)",
    )
    per_source_max_startups: int | None = Field(
        default=5,
        ge=1,
        description="unauthenticated connections from one address; null: no limit. Below max_startups' START, "
        "one address alone cannot bring the others into early drop",
    )
    login_grace_time: float = Field(default=60, gt=0, le=3600, description="seconds from accept to login")
    # Logged-in connections, as sshd's MaxSessions, ClientAliveInterval and ClientAliveCountMax.
    max_channels: int | None = Field(
        default=64,
        ge=1,
        description="channels (sessions, forwarded connections) open at once on one connection; null: no limit",
    )
    keepalive_interval: float = Field(
        default=15, ge=0, le=86400, description="seconds of silence before a keepalive request; 0: none"
    )
    keepalive_count_max: int = Field(
        default=3, ge=1, description="keepalive requests left unanswered before the connection is dropped"
    )

    @property
    def connection_limits(self) -> ConnectionLimits:
        keepalive = None
        if self.keepalive_interval:
            keepalive = KeepaliveSettings(self.keepalive_interval, self.keepalive_count_max)
        return ConnectionLimits(self.max_channels, keepalive)

    @field_validator("max_startups", mode="before")
    @classmethod
    def _max_startups(cls, v: object) -> object:
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if isinstance(v, str):
            MaxStartups.parse(v)
        return v

    @property
    def startups(self) -> MaxStartups:
        return MaxStartups.parse(self.max_startups)


class APIConfig(Listener):
    listen: str = "ssl:8443:interface=127.0.0.1"
    # Each upgraded streaming connection (exec, attach, port-forward).
    keepalive_interval: float = Field(
        default=30, ge=0, le=86400, description="seconds of silence before a WebSocket ping or SPDY PING; 0: none"
    )
    keepalive_count_max: int = Field(
        default=3, ge=1, description="pings left unanswered before the connection is dropped"
    )
    max_streams: int = Field(default=MAX_STREAMS, ge=2, description="SPDY streams open at once on one connection")
    max_forward_connections: int | None = Field(
        default=256, ge=1, description="TCP connections at once in one port-forward; null: no limit"
    )

    def stream_limits(self, hit: Callable[[APILimit], None]) -> StreamLimits:
        keepalive = None
        if self.keepalive_interval:
            keepalive = KeepaliveSettings(self.keepalive_interval, self.keepalive_count_max)
        return StreamLimits(keepalive, self.max_streams, self.max_forward_connections, hit)


class MetricsConfig(Listener):
    """Prometheus' /metrics, and /healthz and /readyz, on a listener of their own."""

    listen: str = Field(default="tcp:9100:interface=127.0.0.1", min_length=1, description="a Twisted endpoint string")


class SessionsConfig(StrictModel):
    """Every session's limits, whatever its front door (a gateway's, or the
    embedded server's: a node agent serves its gateways' sessions)."""

    idle_timeout: float | None = Field(
        default=4 * 3600,
        gt=0,
        description="seconds without a byte either way before a session ends (a terminal is warned a minute "
        "before); a policy rule's idle_timeout may be shorter; null: none",
    )
    max_duration: float | None = Field(default=None, gt=0, description="seconds a session may last; null: no limit")
    max_per_user: int | None = Field(
        default=None,
        ge=1,
        description="sessions (shells, commands, forwarded connections, log streams) one user may have open; "
        "null: no limit",
    )
    shutdown_grace: float = Field(
        default=30,
        ge=0,
        le=3600,
        description="seconds sessions may go on after SIGTERM before they are ended (none open: exit at once)",
    )

    def limits(self) -> Limits:
        return Limits(self.idle_timeout, self.max_duration, self.max_per_user)


class LogLimits(StrictModel):
    """Container log files, per run of a container (the kubelet's
    containerLogMaxSize and containerLogMaxFiles)."""

    max_size: int = Field(default=10 * 1024 * 1024, ge=64 * 1024)
    max_files: int = Field(default=5, ge=1)


class RuntimeKind(StrEnum):
    """Where pods come from: podshell's own, or a CRI's (the kubelet's)."""

    LOCAL = "local"
    CRI = "cri"


class RuntimeConfig(StrictModel):
    kind: RuntimeKind = RuntimeKind.LOCAL
    endpoint: str | None = Field(
        default=None,
        description="kind cri: the CRI socket, unix:///PATH; default containerd's, else CRI-O's if only it exists",
    )
    pods: str | None = None
    backoff: Backoff = Backoff()
    logs: LogLimits = LogLimits()

    @field_validator("endpoint")
    @classmethod
    def _unix(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("unix:///") and len(v) > len("unix:///")):
            raise ValueError(f"{v!r} is not unix:///ABSOLUTE/PATH (e.g. unix:///run/containerd/containerd.sock)")
        return v

    @model_validator(mode="after")
    def _kind(self) -> RuntimeConfig:
        if self.kind is RuntimeKind.CRI:
            if self.pods is not None:
                raise ValueError("pods: with kind cri the pods are the kubelet's; podshell only reads them")
        elif self.endpoint is not None:
            raise ValueError("endpoint: only kind cri talks to a runtime's socket")
        return self


class AuditConfig(StrictModel):
    path: str | None = None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_SIZES = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def duration(text: str) -> float:
    """C{30d}, C{12h}, C{90m}, C{45s}, C{2w} in seconds.  @raise ValueError."""
    number, unit = text[:-1], text[-1:]
    if unit not in _UNITS or not number.isdigit() or int(number) <= 0:
        raise ValueError(f"{text!r} is not a duration like 30d, 12h, 90m, 45s or 2w")
    return int(number) * _UNITS[unit]


def size(text: str) -> int:
    """C{10G}, C{500M}, C{64K} or bytes.  @raise ValueError."""
    number, unit = (text[:-1], text[-1:].upper()) if text[-1:].isalpha() else (text, "")
    if unit not in _SIZES or not number.isdigit() or int(number) <= 0:
        raise ValueError(f"{text!r} is not a size like 10G, 500M, 64K or a number of bytes")
    return int(number) * _SIZES[unit]


class RetentionConfig(StrictModel):
    """How long and how much recordings are kept (null: no limit)."""

    max_age: str | None = "30d"
    max_bytes: str | None = "10G"

    @field_validator("max_age")
    @classmethod
    def _age(cls, v: str | None) -> str | None:
        if v is not None:
            duration(v)
        return v

    @field_validator("max_bytes")
    @classmethod
    def _bytes(cls, v: str | None) -> str | None:
        if v is not None:
            size(v)
        return v

    def limits(self) -> Retention:
        return Retention(
            None if self.max_age is None else duration(self.max_age),
            None if self.max_bytes is None else size(self.max_bytes),
        )


class RecordingsConfig(StrictModel):
    """Where the sessions the policy records go (a rule's C{record})."""

    dir: str | None = Field(default=None, description="default: recordings in the state directory")
    retention: RetentionConfig = RetentionConfig()

    def directory(self, state_dir: Path) -> Path:
        return resolve_path(state_dir, self.dir) if self.dir else state_dir / "recordings"


class TLSFiles(StrictModel):
    """This server's identity in the cluster PKI (C{podshell ca issue})."""

    ca: str
    cert: str
    key: str


class NodeAgent(StrictModel):
    """A node agent's own name and its mutual-TLS listener for gateways."""

    name: str = Field(pattern=NAME_PATTERN)
    listen: str = Field(min_length=1, description="a Twisted endpoint string; always TLS, always mutual")

    @field_validator("listen")
    @classmethod
    def _tcp(cls, v: str) -> str:
        if not v.startswith("tcp:"):
            raise ValueError("a node agent listens on tcp:PORT[:interface=ADDRESS]; it adds mutual TLS itself")
        return v


class InventoryKind(StrEnum):
    """Where a gateway learns of pods and node agents."""

    KUBERNETES = "kubernetes"


class AgentPods(StrictModel):
    """The node agents' own pods (a DaemonSet's): each node's agent address."""

    namespace: str = Field(default="podshell", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    selector: str = Field(default="app.kubernetes.io/component=node-agent", min_length=1, description="label selector")
    port: int = Field(default=10350, gt=0, lt=65536, description="the port node agents listen on")


class Inventory(StrictModel):
    """Pods and node agents from the cluster's API server, instead of a C{nodes:} list."""

    kind: InventoryKind
    kubeconfig: str | None = Field(default=None, description="absent: in-cluster (the pod's ServiceAccount)")
    selector: str = Field(default="", description="only pods with these labels (absent: all)")
    agents: AgentPods = AgentPods()


class NodeAddress(StrictModel):
    """A node agent a gateway routes to."""

    name: str = Field(pattern=NAME_PATTERN)
    address: str = Field(description="HOST:PORT; the node's certificate must name HOST")

    @field_validator("address")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{v!r} is not HOST:PORT (e.g. 10.0.0.2:10250)")
        return v

    @property
    def host(self) -> str:
        return self.address.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])


class KubernetesAuth(StrictModel):
    """People from the cluster: bearer tokens podshell's users do not have are
    checked with TokenReview, each request with SubjectAccessReview."""

    kubeconfig: str | None = Field(default=None, description="the gateway's own credentials; null: in-cluster")
    allowed_ttl: float = Field(default=10, ge=0, le=3600, description="seconds a token or a yes is remembered")
    denied_ttl: float = Field(default=5, ge=0, le=3600, description="seconds an unknown token or a no is remembered")
    cache_size: int = Field(default=4096, ge=0, description="answers remembered of each kind; 0: none")


Role = Literal["all", "gateway", "node"]


class Config(StrictModel):
    role: Role = Field(default="all", description="all: one process; gateway: front doors; node: pods")
    state_dir: str = "./podshell-state"
    ssh: SSHConfig = SSHConfig()
    api: APIConfig | None = None
    users: list[User] = []
    policy: list[Rule] = []
    runtime: RuntimeConfig = RuntimeConfig()
    audit: AuditConfig = AuditConfig()
    sessions: SessionsConfig = SessionsConfig()
    recordings: RecordingsConfig = RecordingsConfig()
    metrics: MetricsConfig | None = Field(default=None, description="absent: no metrics listener")
    tls: TLSFiles | None = None
    node: NodeAgent | None = None
    nodes: list[NodeAddress] = []
    inventory: Inventory | None = None
    refresh: float = Field(default=2.0, gt=0, le=60, description="seconds between a gateway's pod listings")
    kubernetes_auth: KubernetesAuth | None = Field(default=None, description="absent: no people from the cluster")

    @model_validator(mode="after")
    def _roles(self) -> Config:
        given = self.model_fields_set
        if self.role != "all" and self.tls is None:
            raise ValueError(f"tls: a {self.role} needs its cluster certificate (ca, cert, key)")
        if self.role == "node":
            if self.node is None:
                raise ValueError("node: a node agent needs node: {name: ..., listen: ...}")
            for door in (
                "ssh",
                "api",
                "users",
                "policy",
                "nodes",
                "inventory",
                "recordings",
                "sessions",
                "kubernetes_auth",
            ):
                if door in given:
                    raise ValueError(f"{door}: a node agent has no front doors; gateways hold {door}")
        elif "node" in given and self.role == "gateway":
            raise ValueError("node: a gateway runs no pods; give nodes: [{name, address}] instead")
        if self.role == "gateway":
            if self.nodes and self.inventory is not None:
                raise ValueError("nodes: give nodes or inventory, not both: inventory finds the node agents")
            if not self.nodes and self.inventory is None:
                raise ValueError(
                    "nodes: a gateway needs node agents to route to: a nodes: list, or inventory: {kind: kubernetes}"
                )
            if "runtime" in given:
                raise ValueError("runtime: a gateway runs no pods; node agents do")
        elif self.nodes:
            raise ValueError(f"nodes: only a gateway routes to node agents (role is {self.role})")
        elif self.inventory is not None:
            raise ValueError(f"inventory: only a gateway routes to node agents (role is {self.role})")
        if self.kubernetes_auth is not None and self.api is None:
            raise ValueError("kubernetes_auth: checks people at the API front door; give api: {listen: ...} too")
        names = [n.name for n in self.nodes]
        if len(names) != len(set(names)):
            raise ValueError("nodes: two nodes have the same name")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        names = [u.name for u in self.users]
        groups = {g for u in self.users for g in u.groups}
        for i, user in enumerate(self.users):
            if user.name in names[:i]:
                raise ValueError(f"users[{i}]: two users are named {user.name!r}")
        tokens = [t for u in self.users for t in u.tokens]
        if len(tokens) != len(set(tokens)):
            raise ValueError("users: the same token is given twice")
        # The cluster's users and groups are named in the policy too.
        for i, rule in enumerate([] if self.kubernetes_auth else self.policy):
            for subject in rule.subjects:
                kind, _, name = subject.partition(":")
                if (kind == "user" and name not in names) or (kind == "group" and name not in groups):
                    raise ValueError(f"policy[{i}].subjects: {subject!r} names no configured {kind}")
        return self


def holds_manifests(path: Path) -> bool:
    """Whether C{path} holds Kubernetes manifests (documents with a C{kind}),
    such as the Pods of C{runtime.pods}, rather than a server configuration
    (which has no C{kind} key)."""
    return any(isinstance(doc, dict) and "kind" in doc for _, doc in load_documents(path))


def load_config(path: Path) -> tuple[Config, Path]:
    """The configuration in C{path}, and the directory its relative paths
    are relative to."""
    if holds_manifests(path):
        raise ConfigError(
            f"{path}: holds Pod manifests (kind: Pod), not a server configuration: "
            "name it in runtime.pods of one (like conf/podshell.yaml)"
        )
    config = parse(Config, load_document(path), str(path))
    return config, path.parent.resolve()


__all__ = ["VERBS", "Config", "ConfigError", "RuntimeKind", "holds_manifests", "load_config", "resolve_path"]
