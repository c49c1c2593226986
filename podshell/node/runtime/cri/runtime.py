"""The CRI runtime: the pods containerd or CRI-O run for the kubelet, as
podshell sees them, and a way into their containers.

podshell only reads them: it never creates or removes a pod or container.
A listing of sandboxes and containers runs off the reactor thread every
L{INTERVAL} seconds, and at once whenever containerd's own event stream
says a task or container changed (containerd 1.6's CRI has no
C{GetContainerEvents}; CRI-O has neither, and is listed on the interval
alone).  Details are asked for once per new sandbox or container state, so
a listing is two cheap calls.  A handle names the
container's init by PID and start time, and the spawner enters it only if
that process still is the one: a restarted container (new ID, new PID)
never receives a session meant for its predecessor.  When the runtime does
not answer, its pods are withdrawn and every request says why, until it
answers again (gRPC reconnects by itself)."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

import grpc
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from podshell.core.contracts import DEFAULT_CONTAINER, Process, Sink
from podshell.core.logs import LogSource, Options
from podshell.core.pods import ContainerState, ContainerStatus, Phase, PodStatus
from podshell.core.target import LogsUnavailable
from podshell.node.nsexec import start_time
from podshell.node.runtime.base import ContainerHandle, ContainerNotRunning, NoSuchContainer, NoSuchPod
from podshell.node.runtime.cri.attach import RuntimeAttachment
from podshell.node.runtime.cri.client import Client, Container, Events, RpcError, Sandbox, State
from podshell.node.runtime.cri.logs import CRILog

log = Logger()
INTERVAL = 0.5  # seconds between listings: how stale a pod may be
SETTLE = 0.05  # the CRI updates its own state just after containerd's event: list once more then
RETRY = (0.1, 5.0)  # seconds before subscribing again to a runtime that went away: first, most
# The events that change what a listing shows.
CHANGES = ("/tasks/", "/containers/")


@dataclass(frozen=True)
class Snapshot:
    sandboxes: Mapping[str, Sandbox]
    containers: Mapping[str, Container]
    runtime: str = ""  # its name, as container IDs are prefixed with it


def _state(c: Container) -> ContainerState:
    if c.state is State.RUNNING:
        return ContainerState("running", started_at=c.started)
    if c.state is State.EXITED:
        return ContainerState(
            "terminated",
            reason=c.reason or ("Completed" if c.exit_code == 0 else "Error"),
            message=c.message or None,
            started_at=c.started,
            finished_at=c.finished,
            exit_code=c.exit_code,
        )
    return ContainerState("waiting", reason="ContainerCreating" if c.state is State.CREATED else "Unknown")


class CRIPod:
    """A kubelet's pod: its sandbox and every run of its containers."""

    def __init__(self, sandbox: Sandbox, runs: list[Container], runtime: str) -> None:
        self.sandbox = sandbox
        self.runtime = runtime
        by_name: dict[str, list[Container]] = defaultdict(list)
        for run in sorted(runs, key=lambda c: (c.restart_count, c.created)):
            by_name[run.name].append(run)
        # Containers in the order they first ran: the kubelet starts them in spec order.
        self.runs = dict(sorted(by_name.items(), key=lambda item: item[1][0].created))

    @property
    def namespace(self) -> str:
        return self.sandbox.namespace

    @property
    def name(self) -> str:
        return self.sandbox.name

    def current(self, name: str) -> Container:
        return self.runs[name][-1]

    def default_container(self) -> str:
        named = self.sandbox.annotations.get(DEFAULT_CONTAINER)
        return named if named in self.runs else next(iter(self.runs), "")

    def status(self) -> PodStatus:
        containers = []
        for name, runs in self.runs.items():
            current = runs[-1]
            last = _state(runs[-2]) if len(runs) > 1 else None
            pid = current.process.pid if current.process else None
            containers.append(
                ContainerStatus(
                    name, current.image, _state(current), last, current.restart_count, pid,
                    container_id=f"{self.runtime}://{current.id}", image_id=current.image_id,
                )
            )  # fmt: skip
        labels = {k: v for k, v in self.sandbox.labels.items() if not k.startswith("io.kubernetes.")}
        annotations = {k: v for k, v in self.sandbox.annotations.items() if not k.startswith("io.kubernetes.cri")}
        manifest = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": self.name, "namespace": self.namespace, "labels": labels, "annotations": annotations},
            "spec": {
                "hostname": self.sandbox.hostname,
                "containers": [_container_spec(n, r[-1]) for n, r in self.runs.items()],
            },
        }
        started = min((c.started for r in self.runs.values() for c in r if c.started), default=None)
        return PodStatus(manifest, self.sandbox.uid, self.sandbox.created, started, self._phase(containers), None,
                         tuple(containers), self.sandbox.ip)  # fmt: skip

    def _phase(self, containers: list[ContainerStatus]) -> Phase:
        kinds = [c.state.kind for c in containers]
        if "running" in kinds:
            return "Running"
        if kinds and all(k == "terminated" for k in kinds):
            return "Succeeded" if all(c.state.exit_code == 0 for c in containers) else "Failed"
        return "Pending" if self.sandbox.ready else "Unknown"

    def handle(self, container: str | None) -> ContainerHandle:
        name = container or self.default_container()
        if name not in self.runs:
            raise NoSuchContainer(self.namespace, self.name, name, list(self.runs))
        run = self.current(name)
        init, sandbox = run.process, self.sandbox.process
        if run.state is not State.RUNNING or init is None or sandbox is None:
            raise ContainerNotRunning(self.namespace, self.name, name, _state(run).reason or run.state.name.lower())
        if not (_alive(init.pid, init.started) and _alive(sandbox.pid, sandbox.started)):
            raise ContainerNotRunning(self.namespace, self.name, name, "it stopped or restarted")
        spec = run.spec or {}
        process = spec.get("process") or {}
        user = process.get("user") or {}
        env = tuple(tuple(e.split("=", 1)) for e in process.get("env", []) if "=" in e)
        return ContainerHandle(
            namespace=self.namespace,
            pod=self.name,
            container=name,
            hostname=spec.get("hostname") or self.sandbox.hostname,
            init=init,
            sandbox=sandbox,
            env=env,
            working_dir=process.get("cwd") or None,
            user=f"{user.get('uid', 0)}:{user.get('gid', 0)}",
            labels=dict(run.labels),
            runtime_spec=run.spec,
        )


def _container_spec(name: str, run: Container) -> dict[str, object]:
    """A v1 Container as kubectl reads it; attach -t needs C{tty} (false
    fields left out, as the API server does)."""
    spec: dict[str, object] = {"name": name, "image": run.image}
    spec.update(
        (key, True) for key, on in (("stdin", run.stdin), ("stdinOnce", run.stdin_once), ("tty", run.tty)) if on
    )
    return spec


def _alive(pid: int, started: int) -> bool:
    try:
        return start_time(pid) == started
    except (OSError, ValueError):
        return False


class CRIRuntime(Service):
    """The pods of the CRI at C{endpoint}, listed every C{interval} seconds."""

    name = "runtime"

    def __init__(self, reactor, endpoint: str, interval: float = INTERVAL) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.interval = interval
        self.client = Client(endpoint)
        self.problem: str | None = f"the container runtime at {endpoint} has not been asked yet"
        self.errors = 0  # listings that failed, since the start (a metric)
        self._snapshot = Snapshot({}, {})
        self._pods: dict[tuple[str, str], CRIPod] = {}
        self._listing: Deferred[None] | None = None
        self._again = False  # something changed while a listing was under way
        self._loop = LoopingCall(self.refresh)
        self._loop.clock = reactor
        self._watch = _EventWatch(self)

    def startService(self) -> None:
        super().startService()
        self._loop.start(self.interval, now=True)
        self._watch.start()

    def stopService(self) -> Deferred[None]:
        """Stop listing; the channel closes once a listing under way ends."""
        super().stopService()
        self._watch.stop()
        if self._loop.running:
            self._loop.stop()
        listing = self._listing if self._listing is not None else succeed(None)

        def close(_: object) -> None:
            self.client.close()

        return listing.addBoth(close)

    def refresh(self) -> Deferred[None]:
        """List again (in a thread: a call may wait for its timeout); asked
        while a listing is under way, list once more when it ends."""
        if self._listing is not None:
            self._again = True
            return self._listing
        d = deferToThread(self._list, self._snapshot).addCallbacks(self._listed, self._failed)
        self._listing = d

        def finished(result: None) -> None:
            self._listing = None
            if self._again and self.running:
                self._again = False
                self.refresh()

        return d.addCallback(finished)

    def changed(self) -> None:
        """containerd said a task or container changed: list now, and once
        more when the CRI has caught up with it."""
        if self.running:
            self.refresh()
            self.reactor.callLater(SETTLE, self.refresh)

    def _list(self, old: Snapshot) -> Snapshot:
        runtime = old.runtime or self.client.runtime_name()
        return Snapshot(self.client.sandboxes(old.sandboxes), self.client.containers(old.containers), runtime)

    def _listed(self, snapshot: Snapshot) -> None:
        if self.problem is not None:
            log.info("container runtime at {endpoint} answers", endpoint=self.endpoint)
        self.problem = None
        self._snapshot = snapshot
        runs: dict[str, list[Container]] = defaultdict(list)
        for c in snapshot.containers.values():
            runs[c.sandbox_id].append(c)
        pods: dict[tuple[str, str], CRIPod] = {}
        # A pod whose sandbox was made again: the newest (a ready one first) is the pod.
        for sandbox in sorted(snapshot.sandboxes.values(), key=lambda s: (s.ready, s.created)):
            pods[(sandbox.namespace, sandbox.name)] = CRIPod(sandbox, runs[sandbox.id], snapshot.runtime)
        self._pods = pods

    def _failed(self, failure: Failure) -> None:
        self.errors += 1
        error = failure.value
        if isinstance(error, RpcError):
            details = error.details() if hasattr(error, "details") else str(error)
            problem = f"the container runtime at {self.endpoint} does not answer: {details}"
        else:
            problem = f"the container runtime at {self.endpoint} gave an answer podshell cannot read: {error}"
        if problem != self.problem:
            log.warn("{problem}; its pods are withdrawn until it answers", problem=problem)
        self.problem = problem
        self._pods = {}
        self._snapshot = Snapshot({}, {})

    def statuses(self) -> list[PodStatus]:
        return [self._pods[key].status() for key in sorted(self._pods)]

    def _pod(self, namespace: str, name: str) -> CRIPod:
        pod = self._pods.get((namespace, name))
        if pod is None:
            raise NoSuchPod(namespace, name)
        return pod

    def container_names(self, namespace: str, pod: str) -> list[str] | None:
        found = self._pods.get((namespace, pod))
        return list(found.runs) if found is not None else None

    def resolve(self, namespace: str, pod: str, container: str | None = None) -> ContainerHandle:
        return self._pod(namespace, pod).handle(container)

    def attach(self, handle: ContainerHandle, sink: Sink) -> Process:
        """Join the container's own stdio through the runtime's C{Attach}
        (L{podshell.node.runtime.cri.attach}); the call runs in a thread, and
        what the runtime refuses is said on stderr as the attachment ends.

        @raise TargetError: the container restarted since C{handle} was made.
        """
        runs = self._pod(handle.namespace, handle.pod).runs.get(handle.container)
        run = runs[-1] if runs else None
        if run is None or run.process != handle.init:
            raise ContainerNotRunning(handle.namespace, handle.pod, handle.container, "it restarted or stopped")
        attachment = RuntimeAttachment(self.reactor, handle, sink, run.stdin, run.tty)

        def refused(failure: Failure) -> None:
            error = failure.value
            details = error.details() if isinstance(error, RpcError) and hasattr(error, "details") else str(error)
            attachment.failed(f"cannot attach to {handle.path}: the container runtime says: {details}")

        deferToThread(self.client.attach, run.id, run.stdin, run.tty).addCallbacks(attachment.connect, refused)
        return attachment

    def read_log(self, namespace: str, pod: str, container: str, previous: bool, options: Options) -> LogSource:
        """The current run's log, or the one before: the kubelet's rules
        and the kube-apiserver's words."""
        found = self._pod(namespace, pod)
        runs = found.runs.get(container)
        if runs is None:
            raise NoSuchContainer(namespace, pod, container, list(found.runs))
        if previous:
            if len(runs) < 2:
                raise LogsUnavailable(f'previous terminated container "{container}" in pod "{pod}" not found')
            run = runs[-2]
        elif runs[-1].state is State.CREATED and len(runs) > 1:
            run = runs[-2]
        elif runs[-1].state is State.CREATED:
            raise LogsUnavailable(f'container "{container}" in pod "{pod}" is waiting to start: ContainerCreating')
        else:
            run = runs[-1]
        return CRILog(self.reactor, run.log_path, options, lambda: self._running(run.id))

    def _running(self, container_id: str) -> bool:
        now = self._snapshot.containers.get(container_id)
        return now is not None and now.state is State.RUNNING


class _EventWatch:
    """containerd's event stream, followed in a thread of its own (one
    subscription blocks for as long as it lasts), telling the runtime of
    each change.  A runtime that goes away is subscribed to again, with a
    growing pause; one without the service is listed on the interval alone."""

    def __init__(self, runtime: CRIRuntime) -> None:
        self.runtime = runtime
        self._stopped = threading.Event()
        self._events: Events | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stopped.clear()
        self._thread = threading.Thread(target=self._follow, name="podshell-cri-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        with self._lock:
            if self._events is not None:
                self._events.cancel()

    def _follow(self) -> None:
        runtime, reactor = self.runtime, self.runtime.reactor
        pause = RETRY[0]
        while not self._stopped.is_set():
            with self._lock:
                if self._stopped.is_set():
                    return
                self._events = runtime.client.events()
            try:
                for topic in self._events:
                    pause = RETRY[0]
                    if topic.startswith(CHANGES):
                        reactor.callFromThread(runtime.changed)
            except RpcError as e:
                code = e.code() if isinstance(e, grpc.Call) else None
                if code is grpc.StatusCode.CANCELLED:
                    return
                if code is grpc.StatusCode.UNIMPLEMENTED:
                    reactor.callFromThread(
                        log.info,
                        "the container runtime at {endpoint} has no event stream: listing every {interval}s",
                        endpoint=runtime.endpoint,
                        interval=runtime.interval,
                    )
                    return
            self._stopped.wait(pause)
            pause = min(pause * 2, RETRY[1])
