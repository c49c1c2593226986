"""``twistd podshell``: options, and the service tree they describe.

Everything that can be wrong with the configuration is found in
L{Options.postOptions}, before anything starts, and reported as one line.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import ReactorNotRunning
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python import usage
from twisted.python.failure import Failure

from podshell.auth.audit import AuditLog
from podshell.auth.gate import Gate
from podshell.auth.identity import Directory
from podshell.auth.live import LiveSessions
from podshell.auth.policy import POD_VERBS, Policy
from podshell.auth.recording import Recorder, prune
from podshell.core import kubeconfig
from podshell.core.addresses import host_port
from podshell.core.contracts import Node
from podshell.core.metrics import FrontDoor, Metrics
from podshell.core.yamlfile import ConfigError, count
from podshell.gateway.kubernetes.client import APIServer, Credentials
from podshell.gateway.kubernetes.inventory import KubernetesInventory
from podshell.gateway.kubernetes.reviews import ClusterReviews
from podshell.gateway.nodes import RemoteNode
from podshell.gateway.routing import Cluster
from podshell.gateway.ssh.server import StartupLimits, make_factory
from podshell.kube.front import APIFactory, AskElsewhere, by_credentials
from podshell.kube.resources import KubeAPI
from podshell.node.agent import TrustGateway, gateway_requests
from podshell.node.inprocess import LocalNode
from podshell.node.runtime.cri.client import default_endpoint
from podshell.node.runtime.cri.runtime import CRIRuntime
from podshell.node.runtime.local import LocalRuntime, privilege_problem
from podshell.node.runtime.manifest import Pod, load_pods
from podshell.node.spawner import Spawner
from podshell.pki.mutual import ClusterIdentity, NodeServerTLS
from podshell.pki.state_ca import StateCA
from podshell.server import defaults
from podshell.server.config import Config, RuntimeKind, holds_manifests, load_config, resolve_path
from podshell.server.health import Readiness, site
from podshell.server.heap import keep_buffers_on_the_heap
from podshell.server.reload import Reloader, ReloadOnHangup
from podshell.server.shutdown import Graceful

log = Logger()

# The console script installed beside the interpreter running twistd.
PODSHELL = Path(sys.executable).parent / "podshell"


@dataclass
class Loaded:
    """A validated configuration and what was read because of it."""

    config: Config
    source: str
    state_dir: Path
    directory: Directory
    policy: Policy
    pods: list[Pod]
    embedded: bool = False
    identity: ClusterIdentity | None = None  # in the cluster PKI (gateway, node)
    inventory_api: Credentials | None = None  # where a gateway learns of pods and node agents
    kubernetes: Credentials | None = None  # to ask the cluster's API server who people are


def load(config_file: str | None, state_dir: str | None = None) -> Loaded:
    """Read and check everything the server will need; C{state_dir} overrides
    the configuration's (or the embedded default's, L{defaults.state_dir}).

    @raise ConfigError: with a one-line message naming the file and key.
    """
    if config_file is None:
        state = Path(state_dir).absolute() if state_dir else defaults.state_dir()
        config, base, source = defaults.embedded_config(state), Path.cwd(), "the embedded default"
    else:
        config, base = load_config(Path(config_file))
        source = config_file
        if state_dir:
            config = config.model_copy(update={"state_dir": str(Path(state_dir).absolute())})
    where = config_file or "embedded default"
    try:
        directory = Directory.fromConfig(config.users, base)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    if config_file is None:
        directory.watch(config.users[0].name, defaults.own_key_files(Path.home()))
    pods: list[Pod] = []
    if config.runtime.pods:
        pods = load_pods(resolve_path(base, config.runtime.pods))
    identity = None
    if config.tls is not None and config.role != "all":
        tls = config.tls
        paths = (resolve_path(base, tls.ca), resolve_path(base, tls.cert), resolve_path(base, tls.key))
        try:
            _require_pki(config, *paths)
            identity = ClusterIdentity.load(*paths, role=config.role)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    inventory_api = None
    if config.inventory is not None:
        try:
            if config.inventory.kubeconfig:
                inventory_api = Credentials.from_kubeconfig(resolve_path(base, config.inventory.kubeconfig))
            else:
                inventory_api = Credentials.in_cluster()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    kubernetes = None
    if config.kubernetes_auth is not None:
        kubeconfig = config.kubernetes_auth.kubeconfig
        try:
            if kubeconfig is None:
                kubernetes = Credentials.in_cluster(key="kubernetes_auth")
            else:
                kubernetes = Credentials.from_kubeconfig(resolve_path(base, kubeconfig), key="kubernetes_auth")
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return Loaded(
        config,
        source,
        resolve_path(base, config.state_dir),
        directory,
        Policy(config.policy),
        pods,
        config_file is None,
        identity,
        inventory_api,
        kubernetes,
    )


def _shown(path: Path) -> str:
    """A path as the operator would type it here: relative below the current directory."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _require_pki(config: Config, ca: Path, cert: Path, key: Path) -> None:
    """@raise ConfigError: a file of the cluster PKI is missing; the message
    gives the C{podshell ca} commands that make it."""
    missing = next((p for p in (ca, cert, key) if not p.exists()), None)
    if missing is None:
        return
    pki = _shown(ca.parent)
    name = config.node.name if config.node is not None else cert.stem
    issue = f"podshell ca issue --dir {pki} --name {name} --role {config.role}"
    if config.role == "node":
        assert config.node is not None
        interface = re.search(r"interface=([^:]+)", config.node.listen)
        issue += f" --san {interface.group(1) if interface else 'ADDRESS'}"  # the address gateways dial
    key_of_ca = ca.parent / "ca.key"
    if not ca.exists():
        how = f"podshell ca init --dir {pki} && {issue}"
    elif key_of_ca.exists():
        how = issue
    else:
        how = f"{issue} where the CA's key is, then copy {name}.crt and {name}.key into {pki} here"
    if (cert, key) != (ca.parent / f"{name}.crt", ca.parent / f"{name}.key"):
        how += f" (it writes {pki}/{name}.crt and {pki}/{name}.key: name those in tls.cert and tls.key)"
    raise ConfigError(f"tls: {_shown(missing)} does not exist: make the cluster PKI with {how}")


def check(config_file: str | None) -> str:
    """What C{podshell config check} says of a server configuration, or of a
    file of Pod manifests (each one validated, as C{runtime.pods} would be).

    @raise ConfigError: the first problem, as one line.
    """
    if config_file is not None and holds_manifests(Path(config_file)):
        pods = load_pods(Path(config_file))
        containers = sum(len(p.spec.containers) for p in pods)
        names = ", ".join(f"{p.metadata.namespace}/{p.metadata.name}" for p in pods)
        counts = f"{count(len(pods), 'pod')}, {count(containers, 'container')}"
        return f"{config_file}: OK (Pod manifests: {counts}: {names})"
    loaded = load(config_file)
    config = loaded.config
    doors = f"{count(len(config.users), 'user')}, {count(len(config.policy), 'policy rule')}"
    pod_count = count(len(loaded.pods), "pod")
    nodes = count(len(config.nodes), "node") if config.inventory is None else "nodes from the API server"
    what = {
        "all": f"{doors}, {pod_count}",
        "gateway": f"gateway {loaded.identity.name if loaded.identity else ''}: {nodes}, {doors}",
        "node": f"node agent {config.node.name if config.node else ''}: {pod_count}",
    }[config.role]
    return f"{loaded.source}: OK ({what})"


def prepare_state_dir(path: Path) -> None:
    """Create the state directory private to the server (0700)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(path, 0o700)
    except OSError as e:
        raise ConfigError(f"state_dir: cannot create {path}: {e.strerror}") from None


class Options(usage.Options):
    synopsis = "[--config FILE] [--state-dir DIR]"
    longdesc = (
        "Run podshell: pods and the front doors into them. With no --config, the "
        "embedded default runs a demo pod on 127.0.0.1 for your own SSH keys, with "
        f"its state in ${defaults.STATE_ENV}, else /var/lib/podshell for root, else "
        "$XDG_STATE_HOME/podshell (~/.local/state/podshell)."
    )
    optParameters = [
        ["config", "c", None, "the YAML configuration file (see conf/podshell.yaml)"],
        ["state-dir", None, None, "host keys, CA, token, audit log (overrides state_dir and the default)"],
    ]

    def postOptions(self) -> None:
        try:
            self.loaded = load(self["config"], self["state-dir"])
            problem = privilege_problem() if self.loaded.config.role != "gateway" else None
            if problem:
                raise ConfigError(problem)
            prepare_state_dir(self.loaded.state_dir)
        except ConfigError as e:
            sys.stderr.write(f"podshell: {e}\n")
            raise SystemExit(1) from None


# The SSH listener's accept queue unless its endpoint string sets backlog=
# (Twisted's default is 50; Linux caps it at net.core.somaxconn).  A flood
# of connections that outpaces the accept loop fills a short queue, and then
# every new connection's SYN, a real user's too, waits on a retry (1 s, 3 s, ...).
SSH_BACKLOG = 4096


def with_backlog(description: str, backlog: int) -> str:
    """C{description} (a Twisted endpoint string) with C{backlog} if it is a
    TCP or TLS one without a backlog of its own."""
    kind = description.split(":", 1)[0]
    if kind not in ("tcp", "tcp6", "ssl") or "backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"


class Listening(Service):
    """Listens on an endpoint; if it cannot, the server stops with exit code 1
    and one line on stderr (a port in use is an operator's mistake)."""

    def __init__(
        self,
        reactor,
        description: str,
        what: str,
        factory: IProtocolFactory,
        announce: Callable[[str], None],
        backlog: int | None = None,
    ) -> None:
        """C{backlog}: the accept queue, unless C{description} sets one."""
        self.reactor = reactor
        self.backlog = backlog
        self.description = description
        self.what = what
        self.factory = factory
        self.announce = announce
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        try:
            description = self.description
            if self.backlog is not None:
                description = with_backlog(description, self.backlog)
            endpoint = serverFromString(self.reactor, description)
        except ValueError as e:
            return self._failed(Failure(e))
        endpoint.listen(self.factory).addCallbacks(self._listening, self._failed)

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        address = host_port(port.getHost())
        log.info("{what} listening on {address}", what=self.what, address=address)
        self.announce(address)

    def _failed(self, failure: Failure) -> None:
        sys.stderr.write(f"podshell: {self.what}: cannot listen on {self.description!r}: {failure.getErrorMessage()}\n")
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.callWhenRunning(self._stop)

    def _stop(self) -> None:
        with contextlib.suppress(ReactorNotRunning):  # another listener failed too and stopped it first
            self.reactor.stop()

    def stopService(self) -> Deferred | None:
        """Once (a graceful shutdown stops the front doors first)."""
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


def _how_to_get_in(cluster: Cluster) -> Callable[[str], None]:
    def announce(address: str) -> None:
        host, _, port = address.rpartition(":")
        pods = [p["metadata"] for p in cluster.pods()]
        example = f"{pods[0]['namespace']}.{pods[0]['name']}" if pods else "NAMESPACE.POD"
        log.info(
            "get in: ssh -p {port} {example}@{host}   (the user name is the target: NAMESPACE.POD[.CONTAINER])",
            port=port,
            example=example,
            host=host.strip("[]"),
        )

    return announce


def _server_names(description: str) -> list[str]:
    """What the API certificate must name: loopback, this host, the interface."""
    names = ["localhost", "127.0.0.1", "::1", socket.gethostname()]
    interface = re.search(r"interface=([^:]+)", description)
    if interface and interface.group(1) not in names and interface.group(1) not in ("0.0.0.0", "::"):
        names.append(interface.group(1))
    return names


def _kubeconfig_writer(loaded: Loaded, ca: StateCA, scheme: str) -> Callable[[str], None]:
    def announce(address: str) -> None:
        user = loaded.config.users[0]
        path = loaded.state_dir / "kubeconfig"
        ca_pem = ca.cert_pem if scheme == "https" else None
        kubeconfig.write(path, kubeconfig.render(f"{scheme}://{address}", user.name, user.tokens[0], ca_pem))
        log.info("kubectl: KUBECONFIG={path} kubectl exec demo -- ps", path=str(path))
        if scheme == "https" and PODSHELL.exists():
            log.info(
                "podshell CLI: {cli} login --server https://{address} --token-file {token} "
                "--certificate-authority {ca}",
                cli=str(PODSHELL),
                address=address,
                token=str(loaded.state_dir / "token"),
                ca=str(ca.dir / "ca.crt"),
            )

    return announce


def makeService(options: Options) -> MultiService:
    from twisted.internet import reactor

    loaded: Loaded = options.loaded
    config = loaded.config
    keep_buffers_on_the_heap()
    live = LiveSessions(reactor, config.sessions.limits())
    top = Graceful(live, config.sessions.shutdown_grace)
    audit_path = (
        resolve_path(loaded.state_dir, config.audit.path) if config.audit.path else loaded.state_dir / "audit.jsonl"
    )
    metrics = Metrics()
    audit = AuditLog(audit_path, metrics)
    nodes: list[Node] = []
    runtime: LocalRuntime | CRIRuntime | None = None
    remotes: list[RemoteNode] = []
    if config.role in ("all", "node"):
        spawner = Spawner(reactor)
        runtime = _runtime(reactor, loaded, spawner)
        nodes.append(LocalNode(config.node.name if config.node else "podshell", runtime, spawner))
        metrics.watch_runtime(config.runtime.kind.value, runtime, _errors_of(runtime))
    inventory: KubernetesInventory | None = None
    if config.role == "gateway" and config.inventory is not None:
        assert loaded.identity is not None
        inventory = _inventory(reactor, loaded, metrics)
        inventory.setServiceParent(top)
        nodes = inventory.nodes  # type: ignore[assignment]  # live: nodes come and go with the cluster
        metrics.watch_nodes(lambda: list(inventory.nodes.items()) if inventory else [])
    elif config.role == "gateway":
        assert loaded.identity is not None
        for address in config.nodes:
            remote = RemoteNode(
                reactor, address.name, address.host, address.port, loaded.identity, config.refresh, metrics
            )
            TimerService(config.refresh, remote.refresh).setServiceParent(top)
            nodes.append(remote)
            remotes.append(remote)
        metrics.watch_nodes(lambda: [(r.name, r) for r in remotes])
    recorder = None if config.role == "node" else _recorder(reactor, loaded, audit, top)
    cluster = Cluster(nodes, recorder, inventory.unreachable if inventory else None)
    listeners: list[Listening] = []
    if config.role == "node":
        agent = _node_agent(reactor, loaded, cluster, audit)
        agent.setServiceParent(top)
        listeners.append(agent)
    else:
        doors = _front_doors(reactor, loaded, cluster, Gate(cluster, loaded.policy, audit, live), metrics)
        doors.setServiceParent(top)
        top.doors = doors
        listeners += [s for s in doors if isinstance(s, Listening)]
    if config.role == "node":
        metrics.expect([FrontDoor.GATEWAY], POD_VERBS)
    else:
        metrics.expect([FrontDoor.SSH, *([FrontDoor.API] if config.api is not None else [])], POD_VERBS)
    if config.metrics is not None:
        readiness = Readiness(
            listeners,
            runtime,
            (lambda: [(r.name, r) for r in cluster.nodes.values()]) if config.role == "gateway" else None,
            inventory,
            lambda: live.shutting_down,
        )
        factory = site(metrics, readiness)
        Listening(reactor, config.metrics.listen, "metrics", factory, lambda address: None).setServiceParent(top)
    if runtime is not None:
        runtime.setServiceParent(top)
    reloader = None
    if not loaded.embedded:
        reloader = Reloader(Path(loaded.source).absolute(), config, loaded.directory, loaded.policy)
    ReloadOnHangup(reactor, reloader).setServiceParent(top)
    log.info(
        "{what} starting from {source}: {n} pods, state in {state}, audit log {audit}",
        what={"all": "podshell", "gateway": "podshell gateway", "node": "podshell node agent"}[config.role],
        source=loaded.source,
        n=len(loaded.pods),
        state=str(loaded.state_dir),
        audit=str(audit_path),
    )
    log.info(
        "the podshell command (config check, ca, login, exec): {cli}",
        cli=str(PODSHELL) if PODSHELL.exists() else f"none beside {sys.executable}",
    )
    if loaded.embedded:
        _warn_about_old_state(loaded)
    if config.role != "node" and not loaded.directory.has_keys:
        _warn_about_keys(loaded)
    return top


def _inventory(reactor, loaded: Loaded, metrics: Metrics) -> KubernetesInventory:
    """Pods and node agents from the API server (C{inventory: {kind: kubernetes}})."""
    settings = loaded.config.inventory
    assert settings is not None and loaded.identity is not None and loaded.inventory_api is not None
    api = APIServer(reactor, loaded.inventory_api)
    agents = settings.agents
    log.info(
        "inventory: pods and node agents ({selector} in {namespace}) from the API server at {server}",
        selector=agents.selector,
        namespace=agents.namespace,
        server=api.server,
    )
    return KubernetesInventory(
        reactor, api, loaded.identity, agents.namespace, agents.selector, agents.port, settings.selector, metrics
    )


def _recorder(reactor, loaded: Loaded, audit: AuditLog, top: MultiService) -> Recorder:
    """Where the policy's recordings go; retention applied now and every ten minutes."""
    settings = loaded.config.recordings
    directory = settings.directory(loaded.state_dir)
    recorder = Recorder(reactor, directory, audit)
    limits = settings.retention.limits()

    def retain() -> None:
        try:
            removed = prune(directory, limits, time.time(), set(recorder.recording))
        except OSError as e:
            log.warn("recordings in {dir}: retention failed: {e}", dir=str(directory), e=e)
            return
        if removed:
            log.info("recordings: removed {n} past retention", n=len(removed))

    TimerService(600, retain).setServiceParent(top)
    # After the services' stop, whose grace lets sessions (and their recordings) end.
    reactor.addSystemEventTrigger("during", "shutdown", recorder.close)
    return recorder


def _errors_of(runtime: LocalRuntime | CRIRuntime) -> Callable[[], int]:
    """The runtime's failed listings so far (the local runtime is this process: none)."""
    if isinstance(runtime, CRIRuntime):
        return lambda: runtime.errors
    return lambda: 0


def _runtime(reactor, loaded: Loaded, spawner: Spawner) -> LocalRuntime | CRIRuntime:
    """The pods this node serves: its own (kind local), or the kubelet's through the CRI."""
    settings = loaded.config.runtime
    if settings.kind is RuntimeKind.CRI:
        endpoint = settings.endpoint or default_endpoint()
        log.info("pods from the CRI runtime at {endpoint}", endpoint=endpoint)
        return CRIRuntime(reactor, endpoint)
    logs = settings.logs
    return LocalRuntime(
        reactor, spawner, loaded.pods, settings.backoff,
        log_dir=loaded.state_dir / "logs", log_max_size=logs.max_size, log_max_files=logs.max_files,
    )  # fmt: skip


def _warn_about_old_state(loaded: Loaded) -> None:
    """Earlier versions kept the embedded default's state in ./podshell-state:
    say where it is now, or the host keys seem to change for no reason."""
    old = Path.cwd() / defaults.OLD_STATE
    if old.is_dir() and old.resolve() != loaded.state_dir.resolve():
        log.warn(
            "{old} is an earlier podshell's state (host keys, CA); the embedded default now keeps one state "
            "per user, in {state}: to go on with the old host keys, start with --state-dir {old} or move it there",
            old=str(old),
            state=str(loaded.state_dir),
        )


def _warn_about_keys(loaded: Loaded) -> None:
    """A server nobody can log in to over SSH says so, and how to fix it:
    otherwise the only sign is the client's C{Permission denied (publickey)}."""
    if loaded.embedded:
        files = " and ".join(str(p) for p in defaults.own_key_files(Path.home()))
        log.warn(
            "no SSH key to let in: looked in {files}; make one with ssh-keygen -t ed25519 (or add a public "
            "key to authorized_keys): it is read at the next login, no restart needed",
            files=files,
        )
    else:
        log.warn(
            "no SSH key to let in: no user in {source} has ssh_keys, or an authorized_keys_file with a key "
            "in it (those files are read again at each login)",
            source=loaded.source,
        )


def _node_agent(reactor, loaded: Loaded, cluster: Cluster, audit: AuditLog) -> Listening:
    """The node agent's one listener: mutual TLS, gateways only, no front door."""
    assert loaded.identity is not None and loaded.config.node is not None
    api = KubeAPI(Gate(cluster, TrustGateway(), audit), cluster, reactor, agent=True)
    factory = TLSMemoryBIOFactory(NodeServerTLS(loaded.identity), False, APIFactory(api.route, gateway_requests()))
    return Listening(reactor, loaded.config.node.listen, "node agent", factory, lambda address: None)


def _cluster_reviews(reactor, loaded: Loaded) -> AskElsewhere | None:
    """Who the cluster says a token is, and what RBAC lets them do (kubernetes_auth)."""
    settings = loaded.config.kubernetes_auth
    if settings is None or loaded.kubernetes is None:
        return None
    try:
        server = APIServer(reactor, loaded.kubernetes, key="kubernetes_auth")
    except ConfigError as e:
        raise ConfigError(f"{loaded.source}: {e}") from None
    log.info("people from the cluster: tokens and rights checked with {server}", server=server.server)
    reviews = ClusterReviews(server, reactor, settings.allowed_ttl, settings.denied_ttl, settings.cache_size)
    return reviews.check


def _front_doors(reactor, loaded: Loaded, cluster: Cluster, gate: Gate, metrics: Metrics) -> MultiService:
    """SSH and the Kubernetes API, in front of the cluster's nodes.
    Listeners come first: if a port is taken, stop before any pod starts."""
    config = loaded.config
    doors = MultiService()
    limits = StartupLimits(config.ssh.startups, config.ssh.per_source_max_startups, config.ssh.login_grace_time)
    ssh = make_factory(
        config.ssh.accept_env,
        config.ssh.ciphers,
        loaded.state_dir,
        loaded.directory,
        gate,
        cluster,
        metrics,
        limits,
        reactor,
        config.ssh.connection_limits,
    )
    ssh_door = Listening(reactor, config.ssh.listen, "SSH", ssh, _how_to_get_in(cluster), backlog=SSH_BACKLOG)
    ssh_door.setServiceParent(doors)
    if config.api is not None:
        api = KubeAPI(gate, cluster, reactor, limits=config.api.stream_limits(metrics.api_limit_hit))
        authenticate = by_credentials(loaded.directory, metrics, _cluster_reviews(reactor, loaded))
        factory: IProtocolFactory = APIFactory(api.route, authenticate)
        description = config.api.listen
        scheme = "https" if description.startswith("ssl:") else "http"
        ca = StateCA(loaded.state_dir)
        if description.startswith("ssl:") and "privateKey=" not in description:
            # Our own certificate from the state CA; client certificates it issued log in too.
            factory = TLSMemoryBIOFactory(ca.server_options(_server_names(description)), False, factory)
            description = "tcp:" + description[len("ssl:") :]
        announce = _kubeconfig_writer(loaded, ca, scheme) if loaded.embedded else (lambda address: None)
        Listening(reactor, description, "Kubernetes API", factory, announce).setServiceParent(doors)
    return doors
