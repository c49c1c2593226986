"""The local runtime: pods made of Linux namespaces on the host's filesystem.

Each pod has a sandbox process owning new net, uts and ipc namespaces (the
Kubernetes "pause" container).  Each container is a process that joins those
and gets its own pid and mount namespaces with its own /proc.  Containers are
restarted per C{restartPolicy} with Kubernetes' exponential back-off, and the
pod phase and container states follow Kubernetes' definitions.

Every process started here has C{PR_SET_PDEATHSIG}: if the server dies, its
pods die with it, and a clean stop terminates them with the pod's grace
period.

What a container writes goes to its log files as it comes (the kubelet's
layout: C{<logs>/<ns>_<pod>_<uid>/<container>/<restart>.log}, see
L{podshell.node.logfile}); the run before the current one is kept for
C{--previous}, older ones go.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from podshell.core.logs import Options
from podshell.core.pods import ContainerState, ContainerStatus, Phase, PodStatus
from podshell.core.process import ExitStatus, WindowSize, signal_number
from podshell.core.target import LogsUnavailable
from podshell.node import logfile
from podshell.node.logfile import LogFile, Reader
from podshell.node.nsexec import start_time
from podshell.node.runtime.base import (
    ContainerHandle,
    ContainerNotRunning,
    NoSuchContainer,
    NoSuchPod,
    ProcessRef,
)
from podshell.node.runtime.manifest import Backoff, Container, Pod
from podshell.node.spawner import ProcessSession, ProcessSink, Spawner

log = Logger()
INIT_POLL = 0.002  # seconds between looks for a container's PID 1
INIT_WAIT = 5.0
_POD_LOG_DIR = re.compile(r"^[a-z0-9-]+_[a-z0-9.-]+_[0-9a-f-]{36}$")


def now() -> datetime:
    return datetime.now(UTC)


def pod_hostname(name: str) -> str:
    """Kubernetes' rule: at most 63 characters, no trailing '-' or '.'."""
    return name[:63].rstrip("-.") if len(name) > 63 else name


def privilege_problem() -> str | None:
    """Why this process cannot run local pods, or None."""
    if os.geteuid() != 0:
        return (
            f"the local runtime creates pod namespaces and needs root (running as uid {os.geteuid()}); "
            "start podshell as root (rootless user namespaces are not supported)"
        )
    return None


class LogTail:
    """The last bytes a container wrote (both streams), bounded."""

    def __init__(self, limit: int = 256 * 1024) -> None:
        self.limit = limit
        self._data = bytearray()

    def append(self, data: bytes) -> None:
        self._data += data
        if len(self._data) > self.limit:
            del self._data[: len(self._data) - self.limit]

    def value(self) -> bytes:
        return bytes(self._data)

    def last_line(self) -> str:
        lines = self._data.rstrip(b"\n").rsplit(b"\n", 1)
        return lines[-1].decode(errors="replace")[-1024:]


class LocalContainer:
    """One supervised container process."""

    def __init__(self, pod: LocalPod, spec: Container) -> None:
        self.pod = pod
        self.spec = spec
        self.name = spec.name
        self.state = ContainerState("waiting", reason="ContainerCreating")
        self.last_state: ContainerState | None = None
        self.restart_count = 0
        self.session: ProcessSession | None = None
        self.init: ProcessRef | None = None
        self.logs = LogTail()
        self.log_dir = pod.log_dir / self.name
        self.log_file: LogFile | None = None  # the current run's, while it runs
        self._log_watchers: list[Callable[[], None]] = []
        self._log_failed = False
        self.attached: list[Attachment] = []
        self._pausing: set[Attachment] = set()
        self._delay = 0.0
        self._pending = None  # a scheduled restart or init poll

    def status(self) -> ContainerStatus:
        pid = self.init.pid if self.init is not None else None
        return ContainerStatus(self.name, self.spec.image or "", self.state, self.last_state, self.restart_count, pid)

    @property
    def env(self) -> tuple[tuple[str, str], ...]:
        return tuple((e.name, e.value) for e in self.spec.env)

    def start(self) -> None:
        pod = self.pod
        assert pod.sandbox_ref is not None
        self._pending = None
        self._open_log()
        env = pod.runtime.spawner.environment(pod.hostname, self.env, None, self.spec.tty)
        self.session = pod.runtime.spawner.container(
            pod.sandbox_ref,
            self.spec.argv,
            self,
            env,
            tty=self.spec.tty,
            workdir=self.spec.workingDir,
            description=f"{pod.path}/{self.name}",
        )
        if not self.spec.stdin and not self.spec.tty:
            self.session.closeStdin()  # as in Kubernetes: no stdin unless asked for
        self._find_init(self.session, pod.runtime.reactor.seconds())

    def _find_init(self, session: ProcessSession, since: float) -> None:
        """The container's PID 1 is the helper's only child; exec joins its
        namespaces.  It appears a few milliseconds after the spawn."""
        helper = session.process.pid
        if session is not self.session or session.status is not None or helper is None:
            return  # ended, or reaped with its output still draining: processEnded follows
        try:
            with open(f"/proc/{helper}/task/{helper}/children") as f:
                children = f.read().split()
            child = int(children[0]) if children else None
            ref = ProcessRef(child, start_time(child)) if child else None
        except (OSError, ValueError):
            ref = None
        reactor = self.pod.runtime.reactor
        if ref is None:
            if reactor.seconds() - since < INIT_WAIT:
                self._pending = reactor.callLater(INIT_POLL, self._find_init, session, since)
            return
        self._pending = None
        self.init = ref
        self.state = ContainerState("running", started_at=now(), instance=self.restart_count)
        log.info("container {path} started, pid {pid}", path=self.path, pid=ref.pid)

    @property
    def path(self) -> str:
        return f"{self.pod.path}/{self.name}"

    # Log files.
    def _open_log(self) -> None:
        """A new run's log file; runs before the previous one are forgotten."""
        instance, runtime = self.restart_count, self.pod.runtime
        for old in logfile.instances(self.log_dir) - {instance, instance - 1}:
            logfile.remove_instance(self.log_dir, old)
        try:
            self.log_file = LogFile(self.log_dir, instance, runtime.log_max_size, runtime.log_max_files)
        except OSError as e:
            self.log_file = None
            log.error("container {path}: cannot write its log in {dir}: {e}", path=self.path, dir=self.log_dir, e=e)

    def _record(self, stream: str, data: bytes) -> None:
        if self.log_file is not None:
            try:
                self.log_file.write(stream, data, time.time_ns())
                self._log_failed = False
            except OSError as e:
                if not self._log_failed:  # once per spell of failures (a full disk), not per chunk
                    log.error("container {path}: log write failed, output lost: {e}", path=self.path, e=e)
                self._log_failed = True
        for watcher in list(self._log_watchers):
            watcher()

    def watch_log(self, watcher: Callable[[], None]) -> None:
        """Call C{watcher} when the log grows or the run ends."""
        self._log_watchers.append(watcher)

    def unwatch_log(self, watcher: Callable[[], None]) -> None:
        if watcher in self._log_watchers:
            self._log_watchers.remove(watcher)

    def log_instance(self, previous: bool) -> int:
        """The run whose logs pods/log means: the kubelet's rules (a
        container waiting to restart shows the run that ended).

        @raise LogsUnavailable: with the kube-apiserver's message.
        """
        last = self.last_state if self.last_state is not None and self.last_state.kind == "terminated" else None
        if previous:
            if last is None:
                raise LogsUnavailable(f'previous terminated container "{self.name}" in pod "{self.pod.name}" not found')
            chosen = last
        elif self.state.kind in ("running", "terminated"):
            chosen = self.state
        elif last is not None:
            chosen = last
        else:
            raise LogsUnavailable(
                f'container "{self.name}" in pod "{self.pod.name}" is waiting to start: {self.state.reason}'
            )
        assert chosen.instance is not None
        return chosen.instance

    def read_log(self, previous: bool, options: Options) -> ContainerLog:
        instance = self.log_instance(previous)
        return ContainerLog(self, instance, Reader(self.log_dir, instance, options))

    # ProcessSink: the main process's output and end.
    def outReceived(self, data: bytes) -> None:
        self.logs.append(data)
        self._record("stdout", data)
        for attachment in list(self.attached):
            attachment.deliver(data, err=False)

    def errReceived(self, data: bytes) -> None:
        self.logs.append(data)
        self._record("stderr", data)
        for attachment in list(self.attached):
            attachment.deliver(data, err=True)

    def attach(self, handle: ContainerHandle, sink: ProcessSink) -> Attachment:
        """Join a client to this run of the container's stdio (kubectl attach)."""
        if self.session is None or self.init != handle.init:
            raise ContainerNotRunning(self.pod.namespace, self.pod.name, self.name, "it restarted or stopped")
        attachment = Attachment(self, self.session, sink)
        self.attached.append(attachment)
        return attachment

    def detach(self, attachment: Attachment) -> None:
        if attachment in self.attached:
            self.attached.remove(attachment)
            self.unpause(attachment)

    def pause(self, attachment: Attachment) -> None:
        """A slow attached client holds the container's output, as a slow
        terminal would: memory stays flat."""
        if not self._pausing and self.session is not None:
            self.session.pauseProducing()
        self._pausing.add(attachment)

    def unpause(self, attachment: Attachment) -> None:
        if attachment in self._pausing:
            self._pausing.discard(attachment)
            if not self._pausing and self.session is not None:
                self.session.resumeProducing()

    def processEnded(self, status: ExitStatus) -> None:
        for attachment in self.attached:
            attachment.sink.processEnded(status)
        self.attached.clear()
        self._pausing.clear()
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        started = self.state.started_at or now()
        finished = now()
        code = status.code if status.code is not None else 128 + signal_number(status.signal or "KILL")
        failed = code != 0
        self.last_state = self.state if self.state.kind == "running" else self.last_state
        self.state = ContainerState(
            "terminated",
            reason="Error" if failed else "Completed",
            message=self.logs.last_line() if failed else None,
            started_at=started,
            finished_at=finished,
            exit_code=code,
            signal=signal_number(status.signal) if status.signal else None,
            instance=self.restart_count,
        )
        self.init = None
        self.session = None
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None
        for watcher in list(self._log_watchers):
            watcher()
        log.info("container {path} ended: {status}", path=self.path, status=str(status))
        if self.pod.stopping:
            return
        policy = self.pod.manifest.spec.restartPolicy
        if policy == "Always" or (policy == "OnFailure" and failed):
            self._schedule_restart((finished - started).total_seconds())

    def _schedule_restart(self, ran_for: float) -> None:
        backoff: Backoff = self.pod.runtime.backoff
        if ran_for >= backoff.reset_after:
            self._delay = 0.0
        self._delay = min(backoff.max, self._delay * 2 if self._delay else backoff.initial)
        self.last_state, self.state = (
            self.state,
            ContainerState(
                "waiting",
                reason="CrashLoopBackOff",
                message=f"back-off {self._delay:g}s restarting failed container={self.name} pod={self.pod.name}",
            ),
        )
        log.info("container {path} restarts in {delay}s", path=self.path, delay=self._delay)
        self._pending = self.pod.runtime.reactor.callLater(self._delay, self._restart)

    def _restart(self) -> None:
        self.restart_count += 1
        self.start()

    def stop(self) -> Deferred:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        if self.session is None:
            return succeed(None)
        return self.session.terminate(self.pod.manifest.spec.terminationGracePeriodSeconds)


class ContainerLog:
    """One read of a run's log: its reader, and whether more may come."""

    def __init__(self, container: LocalContainer, instance: int, reader: Reader) -> None:
        self.container = container
        self.instance = instance
        self.reader = reader

    @property
    def live(self) -> bool:
        """The run is still writing."""
        current = self.container.log_file
        return current is not None and current.instance == self.instance

    def read(self, size: int = logfile.READ_SIZE) -> bytes:
        return self.reader.read(size)

    @property
    def at_end(self) -> bool:
        return self.reader.at_end

    @property
    def done(self) -> bool:
        return self.reader.done

    def watch(self, watcher: Callable[[], None]) -> None:
        self.container.watch_log(watcher)

    def close(self, watcher: Callable[[], None] | None = None) -> None:
        if watcher is not None:
            self.container.unwatch_log(watcher)
        self.reader.close()


class Attachment:
    """One client attached to a container's stdio.  Its stdin reaches the
    container only if the container has C{stdin: true}; closing it closes
    the container's stdin only with C{stdinOnce}, as in Kubernetes."""

    def __init__(self, container: LocalContainer, session: ProcessSession, sink: ProcessSink) -> None:
        self.container = container
        self.session = session
        self.sink = sink
        self.bytes_in = 0
        self.bytes_out = 0
        self._stdin_producer = False

    def deliver(self, data: bytes, err: bool) -> None:
        self.bytes_out += len(data)
        (self.sink.errReceived if err else self.sink.outReceived)(data)

    def write(self, data: bytes) -> None:
        if self.container.spec.stdin:
            self.bytes_in += len(data)
            self.session.write(data)

    def closeStdin(self) -> None:
        if self.container.spec.stdin and self.container.spec.stdinOnce:
            self.session.closeStdin()

    def resize(self, size: WindowSize) -> None:
        self.session.resize(size)

    @property
    def status(self) -> ExitStatus | None:
        return self.session.status

    def signal(self, sig: str | int) -> None:
        """Signal the container's main process, as a terminal's ^C would."""
        self.session.signal(sig)

    def hangup(self) -> None:
        """Detach: the container runs on."""
        self.unregisterProducer()
        self.container.detach(self)

    def registerProducer(self, producer: object, streaming: bool) -> None:
        """Stdin flow control, for the one attachment that writes first."""
        if self.container.spec.stdin and self.session.status is None:
            try:
                self.session.registerProducer(producer, streaming)
            except RuntimeError:
                return  # another attachment holds it
            self._stdin_producer = True

    def unregisterProducer(self) -> None:
        if self._stdin_producer:
            self._stdin_producer = False
            self.session.unregisterProducer()

    def pauseProducing(self) -> None:
        self.container.pause(self)

    def resumeProducing(self) -> None:
        self.container.unpause(self)

    def stopProducing(self) -> None:
        self.hangup()


class _SandboxSink:
    def __init__(self, pod: LocalPod) -> None:
        self.pod = pod
        self.out = b""
        self.err = LogTail(4096)

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if b"ready\n" in self.out and not self.pod.ready.called:
            self.pod.sandbox_ready()

    def errReceived(self, data: bytes) -> None:
        self.err.append(data)

    def processEnded(self, status: ExitStatus) -> None:
        self.pod.sandbox_ended(status, self.err.last_line())


class LocalPod:
    def __init__(self, runtime: LocalRuntime, manifest: Pod) -> None:
        self.runtime = runtime
        self.manifest = manifest
        self.name = manifest.metadata.name
        self.namespace = manifest.metadata.namespace
        self.uid = str(uuid.uuid4())
        self.created = now()
        self.started: datetime | None = None
        self.hostname = pod_hostname(self.name)
        self.containers = {c.name: LocalContainer(self, c) for c in manifest.spec.containers}
        self.sandbox: ProcessSession | None = None
        self.sandbox_ref: ProcessRef | None = None
        self.ready: Deferred[None] = Deferred()
        self.stopping = False
        self.failure: str | None = None

    @property
    def path(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def log_dir(self) -> Path:
        return self.runtime.log_dir / f"{self.namespace}_{self.name}_{self.uid}"

    def start(self) -> Deferred[None]:
        """Start the sandbox, then the containers; fires once they were launched."""
        self.sandbox = self.runtime.spawner.sandbox(self.hostname, _SandboxSink(self))
        return self.ready

    def sandbox_ready(self) -> None:
        assert self.sandbox is not None
        pid = self.sandbox.process.pid
        assert pid is not None
        self.sandbox_ref = ProcessRef(pid, start_time(pid))
        self.started = now()
        log.info("pod {path} sandbox up, pid {pid}", path=self.path, pid=pid)
        for container in self.containers.values():
            container.start()
        self.ready.callback(None)

    def sandbox_ended(self, status: ExitStatus, last_error: str) -> None:
        self.sandbox_ref = None
        if self.stopping:
            return
        self.failure = f"pod sandbox ended ({status}): {last_error or 'no message'}"
        log.error("pod {path}: {failure}", path=self.path, failure=self.failure)
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.failure))
        else:
            self.stop()

    def status(self) -> PodStatus:
        manifest = self.manifest.model_dump(mode="json", exclude_none=True, by_alias=True)
        containers = tuple(c.status() for c in self.containers.values())
        return PodStatus(manifest, self.uid, self.created, self.started, self.phase, self.failure, containers)

    @property
    def phase(self) -> Phase:
        if self.failure is not None:
            return "Failed"
        states = [c.state for c in self.containers.values()]
        if any(s.kind == "running" or s.reason == "CrashLoopBackOff" for s in states):
            return "Running"
        if states and all(s.kind == "terminated" for s in states):
            return "Succeeded" if all(s.exit_code == 0 for s in states) else "Failed"
        return "Pending"

    def default_container(self) -> str:
        return self.manifest.default_container

    def handle(self, container: str | None) -> ContainerHandle:
        name = container or self.default_container()
        c = self.containers.get(name)
        if c is None:
            raise NoSuchContainer(self.namespace, self.name, name, list(self.containers))
        if c.init is None or self.sandbox_ref is None:
            raise ContainerNotRunning(self.namespace, self.name, name, c.state.reason or c.state.kind)
        return ContainerHandle(
            namespace=self.namespace,
            pod=self.name,
            container=name,
            hostname=self.hostname,
            init=c.init,
            sandbox=self.sandbox_ref,
            env=c.env,
            working_dir=c.spec.workingDir,
        )

    def stop(self) -> Deferred:
        """Terminate the containers (grace period, then SIGKILL), then the sandbox."""
        self.stopping = True
        stopped = DeferredList([c.stop() for c in self.containers.values()], consumeErrors=True)

        def sandbox(_: object) -> Deferred | None:
            if self.sandbox is not None and self.sandbox.status is None:
                return self.sandbox.terminate(2.0)
            return None

        return stopped.addCallback(sandbox)


def _failed_to_start(failure: Failure, pod: LocalPod) -> None:
    log.error("pod {path} failed to start: {e}", path=pod.path, e=failure.value)


class LocalRuntime(Service):
    """Runs the pods of a manifest file and resolves targets to handles."""

    name = "runtime"
    problem: str | None = None  # it is this process: always there

    def __init__(
        self,
        reactor,
        spawner: Spawner,
        manifests: Iterable[Pod],
        backoff: Backoff | None = None,
        log_dir: Path | None = None,
        log_max_size: int = logfile.MAX_SIZE,
        log_max_files: int = logfile.MAX_FILES,
    ) -> None:
        """@param log_dir: where container logs go (the state directory's
        C{logs}); None: a temporary directory, removed at stop."""
        self.reactor = reactor
        self.spawner = spawner
        self.backoff = backoff or Backoff()
        self._own_log_dir = log_dir is None
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="podshell-logs-"))
        self.log_max_size = log_max_size
        self.log_max_files = log_max_files
        self._pods = {(m.metadata.namespace, m.metadata.name): LocalPod(self, m) for m in manifests}

    def pods(self, namespace: str | None = None) -> list[LocalPod]:
        return sorted(
            (p for p in self._pods.values() if namespace is None or p.namespace == namespace),
            key=lambda p: (p.namespace, p.name),
        )

    def statuses(self) -> list[PodStatus]:
        return [p.status() for p in self.pods()]

    def find(self, namespace: str, name: str) -> LocalPod | None:
        return self._pods.get((namespace, name))

    def pod(self, namespace: str, name: str) -> LocalPod:
        pod = self.find(namespace, name)
        if pod is None:
            raise NoSuchPod(namespace, name)
        return pod

    def container_names(self, namespace: str, name: str) -> list[str] | None:
        pod = self._pods.get((namespace, name))
        return list(pod.containers) if pod else None

    def resolve(self, namespace: str, pod: str, container: str | None = None) -> ContainerHandle:
        return self.pod(namespace, pod).handle(container)

    def attach(self, handle: ContainerHandle, sink: ProcessSink) -> Attachment:
        """Attach C{sink} to the stdio of the container C{handle} names."""
        pod = self.pod(handle.namespace, handle.pod)
        container = pod.containers.get(handle.container)
        if container is None:
            raise NoSuchContainer(handle.namespace, handle.pod, handle.container, list(pod.containers))
        return container.attach(handle, sink)

    def read_log(self, namespace: str, pod: str, container: str, previous: bool, options: Options) -> ContainerLog:
        """@raise TargetError: no such pod or container, or no such run (L{LogsUnavailable})."""
        found = self.pod(namespace, pod)
        c = found.containers.get(container)
        if c is None:
            raise NoSuchContainer(namespace, pod, container, list(found.containers))
        return c.read_log(previous, options)

    def startService(self) -> None:
        super().startService()
        self._forget_old_logs()
        for pod in self._pods.values():
            pod.start().addErrback(_failed_to_start, pod)

    def _forget_old_logs(self) -> None:
        """Logs of pods of earlier runs of the server: nothing can ask for
        them (a pod's uid is new each run), so they go, as the kubelet's do."""
        mine = {p.log_dir.name for p in self._pods.values()}
        try:
            names = os.listdir(self.log_dir)
        except FileNotFoundError:
            return
        for name in names:
            if _POD_LOG_DIR.match(name) and name not in mine:
                shutil.rmtree(self.log_dir / name, ignore_errors=True)

    def stopService(self) -> Deferred:
        super().stopService()
        log.info("stopping {n} pods", n=len(self._pods))
        stopped = DeferredList([p.stop() for p in self._pods.values()], consumeErrors=True)
        if self._own_log_dir:

            def remove(result: object) -> object:
                shutil.rmtree(self.log_dir, ignore_errors=True)
                return result

            stopped.addBoth(remove)
        return stopped
