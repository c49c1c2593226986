"""The local runtime and the spawner against real namespaces and processes."""

from __future__ import annotations

import contextlib
import os
import socket
import time

import psutil
import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from podshell.core.addresses import PortRefused
from podshell.core.process import ExitStatus, WindowSize
from podshell.node.runtime.base import ContainerNotRunning, NoSuchContainer, NoSuchPod
from podshell.node.runtime.manifest import Backoff

from .conftest import PYTHON, Collect, needs_root, pod, sleep, wait_for
from .support.waiting import listens_argv

pytestmark = needs_root

ECHO_SERVER = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', PORT)); s.listen()\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    data = b''\n"
    "    while chunk := c.recv(65536): data += chunk\n"
    "    c.sendall(b'got %d' % len(data)); c.close()\n"
)


def two_containers(port: int) -> list[dict]:
    """Pod team-a/web-0: an echo server on 127.0.0.1:port, and a client."""
    return [
        pod(
            "web-0",
            {"name": "server", "command": [PYTHON, "-c", ECHO_SERVER.replace("PORT", str(port))]},
            {"name": "client", "command": ["sleep", "3600"], "env": [{"name": "GREETING", "value": "hello"}]},
            namespace="team-a",
        )
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def run(spawner, handle, argv, **kw) -> tuple[ExitStatus, bytes, bytes]:
    sink = Collect()
    session = spawner.process(handle, argv, sink, **kw)
    status = await sink.done
    assert session.status == status
    return status, bytes(sink.out), bytes(sink.err)


async def until_listening(spawner, handle, port: int, timeout: float = 10.0) -> None:
    """Until a connection to C{port} from inside the pod succeeds: its server is up."""
    deadline = time.monotonic() + timeout
    while (await run(spawner, handle, listens_argv(PYTHON, port)))[0] != ExitStatus(code=0):
        assert time.monotonic() < deadline, f"nothing listened on {port} in the pod after {timeout:g}s"
        await sleep(0.05)


# Commands that say when they run, so that a signal is sent to them and not to what starts them.
STARTED = ["sh", "-c", "echo started; exec sleep 30"]


@pytest_twisted.ensureDeferred
async def test_containers_share_the_pod_network_and_only_it(start_pods, spawner):
    port = free_port()
    runtime = await start_pods(two_containers(port))
    client = runtime.resolve("team-a", "web-0", "client")
    await until_listening(spawner, client, port)
    probe = (
        f"import socket; s = socket.create_connection(('127.0.0.1', {port})); s.sendall(b'abc');"
        " s.shutdown(socket.SHUT_WR); print(s.recv(100).decode())"
    )
    status, out, err = await run(spawner, client, [PYTHON, "-c", probe])
    assert (status, out, err) == (ExitStatus(code=0), b"got 3\n", b"")
    # The host's own loopback does not reach the pod's port.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)


@pytest_twisted.ensureDeferred
async def test_each_container_sees_only_its_own_processes(start_pods, spawner):
    runtime = await start_pods(two_containers(free_port()))
    handle = runtime.resolve("team-a", "web-0", "client")
    status, out, _ = await run(spawner, handle, ["ps", "-e", "-o", "pid=,comm="])
    assert status.code == 0
    procs = [line.split() for line in out.decode().splitlines()]
    assert procs[0] == ["1", "sleep"]
    assert sorted(p[1] for p in procs) == ["ps", "sleep"]
    assert all(not line.startswith(b"python") for line in out.split())


@pytest_twisted.ensureDeferred
async def test_hostname_is_the_pod_name_truncated_like_kubernetes(start_pods, spawner):
    long_name = "a" * 62 + "-b.c"  # 66 characters: cut to 63, trailing '-' dropped
    runtime = await start_pods(
        [
            pod(long_name, {"name": "main", "command": ["sleep", "3600"]}),
            pod("short", {"name": "main", "command": ["sleep", "3600"]}, namespace="other"),
        ]
    )
    _, out, _ = await run(spawner, runtime.resolve("default", long_name), ["hostname"])
    assert out.decode().strip() == "a" * 62
    _, out, _ = await run(spawner, runtime.resolve("other", "short"), ["hostname"])
    assert out == b"short\n"
    assert socket.gethostname() not in ("short", "a" * 62)


@pytest_twisted.ensureDeferred
async def test_exit_codes_signals_and_separate_stderr(start_pods, spawner):
    runtime = await start_pods(two_containers(free_port()))
    handle = runtime.resolve("team-a", "web-0", "client")
    assert await run(spawner, handle, ["sh", "-c", "echo out; echo err >&2; exit 7"]) == (
        ExitStatus(code=7),
        b"out\n",
        b"err\n",
    )
    status, _, _ = await run(spawner, handle, ["sh", "-c", "kill -TERM $$"])
    assert status == ExitStatus(signal="TERM")
    status, _, err = await run(spawner, handle, ["no-such-command-xyz"])
    assert status == ExitStatus(code=127)
    assert err == b'podshell: exec: "no-such-command-xyz": executable file not found in $PATH\n'
    status, _, err = await run(spawner, handle, ["/no/such/program"])
    assert status == ExitStatus(code=127)
    assert err == b'podshell: exec: "/no/such/program": stat /no/such/program: no such file or directory\n'
    # A signal sent to the session reaches the command, not just the helper.
    sink = Collect()
    session = spawner.process(
        handle, ["sh", "-c", "trap 'echo got-usr1; exit 3' USR1; echo trapped; while :; do sleep 0.05; done"], sink
    )
    await wait_for(lambda: b"trapped\n" in sink.out, what="the trap to be set")
    session.signal("USR1")
    assert await sink.done == ExitStatus(code=3)
    assert bytes(sink.out) == b"trapped\ngot-usr1\n"
    sink = Collect()
    session = spawner.process(handle, STARTED, sink)
    await wait_for(lambda: b"started" in sink.out, what="the command to start")
    session.signal("KILL")
    assert await sink.done == ExitStatus(signal="KILL")


@pytest_twisted.ensureDeferred
async def test_environment_user_and_workdir_are_explicit(start_pods, spawner):
    os.environ["PODSHELL_SERVER_SECRET"] = "leak"
    try:
        runtime = await start_pods(two_containers(free_port()))
        handle = runtime.resolve("team-a", "web-0", "client")
        _, out, _ = await run(spawner, handle, ["env"], env={"LANG": "C.UTF-8"})
        env = dict(line.split("=", 1) for line in out.decode().splitlines())
        assert "PODSHELL_SERVER_SECRET" not in env
        assert env["GREETING"] == "hello" and env["LANG"] == "C.UTF-8" and env["HOSTNAME"] == "web-0"
        assert env["HOME"] == "/root"
        _, out, err = await run(
            spawner, handle, ["sh", "-c", "id -u; id -g; pwd; echo $HOME"], user="nobody", workdir="/tmp"
        )
        assert out.decode().split() == ["65534", "65534", "/tmp", "/nonexistent"], err
        status, _, err = await run(spawner, handle, ["true"], user="no-such-user")
        assert status.code == 126 and b"no user 'no-such-user'" in err
        status, _, err = await run(spawner, handle, ["true"], workdir="/no/such/dir")
        assert status.code == 126 and b"working directory /no/such/dir" in err
    finally:
        del os.environ["PODSHELL_SERVER_SECRET"]


@pytest_twisted.ensureDeferred
async def test_stdin_and_eof_reach_the_process(start_pods, spawner):
    runtime = await start_pods(two_containers(free_port()))
    handle = runtime.resolve("team-a", "web-0", "client")
    sink = Collect()
    session = spawner.process(handle, ["wc", "-c"], sink)
    session.write(b"x" * 100000)
    session.closeStdin()
    assert await sink.done == ExitStatus(code=0)
    assert bytes(sink.out).strip() == b"100000"
    assert session.bytes_in == 100000


@pytest_twisted.ensureDeferred
async def test_a_pty_session_has_the_size_it_was_given_and_resizes(start_pods, spawner):
    runtime = await start_pods(two_containers(free_port()))
    handle = runtime.resolve("team-a", "web-0", "client")
    sink = Collect()
    session = spawner.process(
        handle,
        ["sh", "-c", "stty size; tty; trap 'stty size; exit 5' WINCH; echo trapped; while :; do sleep 0.05; done"],
        sink,
        tty=True,
        size=WindowSize(40, 100),
    )
    # A resize before the trap is set would be ignored (SIGWINCH's default).
    await wait_for(lambda: b"trapped" in sink.out)
    session.resize(WindowSize(50, 132))
    assert await sink.done == ExitStatus(code=5)
    lines = bytes(sink.out).decode().split("\r\n")
    assert lines[0] == "40 100" and lines[1].startswith("/dev/pts/") and "50 132" in lines


@pytest_twisted.ensureDeferred
async def test_ctrl_c_on_a_pty_interrupts_the_foreground_command(start_pods, spawner):
    runtime = await start_pods(two_containers(free_port()))
    handle = runtime.resolve("team-a", "web-0", "client")
    sink = Collect()
    session = spawner.process(handle, STARTED, sink, tty=True)
    await wait_for(lambda: b"started" in sink.out, what="the command to start")
    session.write(b"\x03")
    assert await sink.done == ExitStatus(signal="INT")


@pytest_twisted.ensureDeferred
async def test_every_child_is_in_a_session_of_its_own(start_pods, spawner):
    """Not in the server's session or process group: a Ctrl-C on its terminal
    must not reach sandboxes, containers (a tty one too) or commands."""
    runtime = await start_pods(
        [
            pod(
                "web-0",
                {"name": "main", "command": ["sleep", "3600"]},
                {"name": "console", "command": ["sleep", "3600"], "tty": True, "stdin": True},
            )
        ]
    )
    handle = runtime.resolve("default", "web-0", "main")
    sessions = [spawner.process(handle, ["sleep", "3600"], Collect(), tty=tty) for tty in (False, True)]
    try:
        await wait_for(lambda: len(children()) >= 1 + 2 * 2 + 2)  # a sandbox, 2 containers (helper, command), 2 execs

        def ours() -> list[list[str]]:
            """Children still in our session or group: a fork caught between
            fork and its setsid is, for a moment; any other would stay."""
            found = []
            for child in children():
                with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                    if os.getsid(child.pid) == os.getsid(0) or os.getpgid(child.pid) == os.getpgid(0):
                        found.append(child.cmdline())
            return found

        await wait_for(lambda: not ours(), timeout=5, what="every child out of our session and process group")
    finally:
        for session in sessions:
            await session.terminate(0)


@pytest_twisted.ensureDeferred
async def test_a_hangup_reaches_the_whole_process_group(start_pods, spawner):
    """In a session of its own, a command is still the leader of its group:
    a hangup ends its children too, with or without a terminal."""
    runtime = await start_pods(two_containers(free_port()))
    handle = runtime.resolve("team-a", "web-0", "client")
    for tty in (False, True):
        sink = Collect()
        session = spawner.process(handle, ["sh", "-c", "sleep 1005 & wait"], sink, tty=tty)
        await wait_for(lambda: bool(jobs("1005")))
        session.signal("HUP")
        assert await with_timeout(sink.done, 10) == ExitStatus(signal="HUP")
        await wait_for(lambda: not jobs("1005"))  # dead (a zombie: the pod's PID 1 does not reap)


def jobs(duration: str) -> list[psutil.Process]:
    """The live C{sleep duration} processes under this one."""
    found = []
    for p in children():
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.status() != psutil.STATUS_ZOMBIE and p.cmdline() == ["sleep", duration]:
                found.append(p)
    return found


def children() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


@pytest_twisted.ensureDeferred
async def test_a_terminal_ends_with_its_command_despite_a_background_job(start_pods, spawner):
    """As in sshd: the job holds the terminal, the session ends anyway with
    everything the command wrote before it exited, and the job runs on."""
    runtime = await start_pods(two_containers(free_port()))
    handle = runtime.resolve("team-a", "web-0", "client")
    sink = Collect()
    script = "trap '' HUP; sleep 1000 & head -c 30000 /dev/zero | tr '\\0' x; echo last-words; exit 4"
    spawner.process(handle, ["sh", "-c", script], sink, tty=True)
    assert await with_timeout(sink.done, 10) == ExitStatus(code=4)
    assert bytes(sink.out) == b"x" * 30000 + b"last-words\r\n"
    assert jobs("1000")  # the pod's end ends it


def with_timeout(d: defer.Deferred, seconds: float) -> defer.Deferred:
    return d.addTimeout(seconds, reactor)


class SlowReader(Collect):
    """Holds what it reads and drains it only every few milliseconds, pausing
    the session while more than `limit` bytes are held."""

    def __init__(self, session_ref: list, limit: int = 1 << 20) -> None:
        super().__init__()
        self.session_ref = session_ref
        self.held: list[bytes] = []
        self.buffered = self.total = self.max_buffered = self.peak_rss = 0
        self.limit = limit
        self.paused = False

    def outReceived(self, data: bytes) -> None:
        self.held.append(data)
        self.total += len(data)
        self.buffered += len(data)
        self.max_buffered = max(self.max_buffered, self.buffered)
        if self.buffered > self.limit and not self.paused:
            self.paused = True
            self.session_ref[0].pauseProducing()
            reactor.callLater(0.005, self.drain)

    def drain(self) -> None:
        self.peak_rss = max(self.peak_rss, psutil.Process().memory_info().rss)
        self.held.clear()
        self.buffered = 0
        self.paused = False
        self.session_ref[0].resumeProducing()


@pytest_twisted.ensureDeferred
async def test_a_slow_reader_pauses_the_process_and_memory_stays_flat(start_pods, spawner):
    runtime = await start_pods(two_containers(free_port()))
    handle = runtime.resolve("team-a", "web-0", "client")
    before = psutil.Process().memory_info().rss
    ref: list = []
    sink = SlowReader(ref)
    ref.append(spawner.process(handle, ["head", "-c", str(200 * 1024 * 1024), "/dev/zero"], sink))
    assert await sink.done == ExitStatus(code=0)
    assert sink.total == 200 * 1024 * 1024
    assert sink.max_buffered < 2 * sink.limit  # the process stopped while we held data
    assert sink.peak_rss - before < 30 * 1024 * 1024


@pytest_twisted.ensureDeferred
async def test_sockets_inside_the_pod_with_half_close_and_refusal(start_pods, spawner):
    port = free_port()
    runtime = await start_pods(two_containers(port))
    handle = runtime.resolve("team-a", "web-0")
    await until_listening(spawner, handle, port)

    class Client(protocol.Protocol):
        def connectionMade(self):
            self.received = b""
            self.done = defer.Deferred()
            self.transport.write(b"y" * 300000)
            self.transport.loseWriteConnection()  # half-close: the server answers after EOF

        def dataReceived(self, data):
            self.received += data

        def connectionLost(self, reason):
            self.done.callback(self.received)

    proto = await spawner.connect(handle, port, protocol.Factory.forProtocol(Client))
    assert await proto.done == b"got 300000"
    with pytest.raises(PortRefused, match=f"nothing listens on localhost:{port + 1} in pod team-a/web-0"):
        await spawner.connect(handle, port + 1, protocol.Factory.forProtocol(Client))
    for outside in ("example.com", "10.1.2.3", "0.0.0.0"):  # the node refuses, whatever a gateway let through
        with pytest.raises(ValueError, match="is not on the pod's loopback"):
            await spawner.connect(handle, port, protocol.Factory.forProtocol(Client), host=outside)


@pytest_twisted.ensureDeferred
async def test_listening_inside_the_pod(start_pods, spawner):
    runtime = await start_pods(two_containers(free_port()))
    handle = runtime.resolve("team-a", "web-0", "client")

    class Hello(protocol.Protocol):
        def connectionMade(self):
            self.transport.write(b"hello from outside")
            self.transport.loseConnection()

    port = await spawner.listen(handle, 0, protocol.Factory.forProtocol(Hello))
    try:
        number = port.getHost().port
        probe = f"import socket; print(socket.create_connection(('127.0.0.1', {number})).recv(100).decode())"
        _status, out, _ = await run(spawner, handle, [PYTHON, "-c", probe])
        assert out == b"hello from outside\n"
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", number), timeout=2)
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_unknown_targets_are_clear_errors(start_pods):
    runtime = await start_pods(two_containers(free_port()))
    with pytest.raises(NoSuchPod, match="no pod team-a/web-1"):
        runtime.resolve("team-a", "web-1")
    with pytest.raises(NoSuchContainer, match=r"has no container 'db' \(it has: server, client\)"):
        runtime.resolve("team-a", "web-0", "db")
    assert runtime.resolve("team-a", "web-0").container == "server"


@pytest_twisted.ensureDeferred
async def test_restart_policy_back_off_and_phases(start_pods, spawner):
    runtime = await start_pods(
        """
        apiVersion: v1
        kind: Pod
        metadata: {name: crashy}
        spec:
          containers: [{name: main, command: [sh, -c, "echo boom >&2; exit 3"]}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: once}
        spec:
          restartPolicy: OnFailure
          containers: [{name: main, command: ["true"]}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: failed}
        spec:
          restartPolicy: Never
          containers: [{name: main, command: ["false"]}]
        """,
        backoff=Backoff(initial=0.2, max=0.4),
        wait=False,
    )
    crashy = runtime.pod("default", "crashy").containers["main"]
    await wait_for(lambda: crashy.restart_count >= 3 and crashy.state.reason == "CrashLoopBackOff")
    assert runtime.pod("default", "crashy").phase == "Running"
    assert crashy.state.message == "back-off 0.4s restarting failed container=main pod=crashy"  # capped at max
    assert crashy.last_state.kind == "terminated"
    assert (crashy.last_state.exit_code, crashy.last_state.reason, crashy.last_state.message) == (3, "Error", "boom")
    await wait_for(lambda: runtime.pod("default", "once").phase == "Succeeded")
    await wait_for(lambda: runtime.pod("default", "failed").phase == "Failed")
    failed = runtime.pod("default", "failed").containers["main"]
    assert failed.state.exit_code == 1 and failed.restart_count == 0
    with pytest.raises(ContainerNotRunning, match="is not running"):
        runtime.resolve("default", "failed")
