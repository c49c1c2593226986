"""Every byte through the native CLI, in both directions: payloads of odd
sizes past every frame, fragment, TLS record and window boundary, through
exec (stdout and stderr kept apart), attach, port-forward and every kind of
standard input, each checked by its sha256 at the other end."""

from __future__ import annotations

import fcntl
import hashlib
import os
import pty
import random
import select
import signal
import socket
import struct
import subprocess
import termios
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from . import podserver
from .conftest import PYTHON, needs_root, pod
from .podserver import SINK_PORT, SOURCE_PORT, download, pattern
from .sshserver import PODSERVER
from .support.cli import PODSHELL, Forward, cli, cli_env
from .support.cli_server import TOKEN, Server, ca
from .support.sink import upload

pytestmark = needs_root

MiB = 1 << 20
ECHO_PORT = 7100
ECHO = f"""
import socketserver
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while chunk := self.request.recv(1 << 16):
            self.request.sendall(chunk)
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = daemon_threads = True
Server(("127.0.0.1", {ECHO_PORT}), Echo).serve_forever()
"""
PODS = [
    pod(
        "data",
        {"name": "work", "command": ["sleep", "3600"]},
        {"name": "cat", "stdin": True, "command": ["cat"]},
        {"name": "app", "command": [PYTHON, PODSERVER]},
        {"name": "echo", "command": [PYTHON, "-c", ECHO]},
        namespace="team-a",
    )
]
# Writes two seeded random streams to stdout and stderr, interleaved in
# random-sized pieces, then exits with the code it was given.
WRITER = """
import os, random, sys
seed, nout, nerr, code = map(int, sys.argv[1:])
streams = {1: memoryview(random.Random(seed).randbytes(nout)), 2: memoryview(random.Random(seed + 1).randbytes(nerr))}
sizes = random.Random(seed + 2)
while any(streams.values()):
    for fd, view in streams.items():
        if view:
            streams[fd] = view[os.write(fd, view[: sizes.randint(1, 100000)]) :]
sys.exit(code)
"""


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def payload(seed: int, n: int) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    listening = [("team-a/data/app", podserver.ECHO_PORT), ("team-a/data/echo", ECHO_PORT)]  # the last of each
    server = Server(tmp_path_factory.mktemp("integrity"), PODS, 4, listening)
    try:
        home = tmp_path_factory.mktemp("home")
        r = cli(home, "login", "--server", server.url, "--token", TOKEN, "--certificate-authority", ca(server))
        assert r.returncode == 0, r.stderr
        yield home
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("nout", "nerr", "code"),
    [(1, 0, 0), (16383, 16385, 0), (65537, 1, 3), (MiB + 3, 65535, 0), (40 * MiB + 1, 3 * MiB + 7, 9)],
)
def test_exec_stdout_and_stderr_whole_and_apart(home, nout, nerr, code):
    seed = nout ^ nerr
    r = cli(home, "exec", "team-a/data/work", "--", PYTHON, "-c", WRITER, str(seed), str(nout), str(nerr), str(code))
    assert (len(r.stdout), len(r.stderr), r.returncode) == (nout, nerr, code)
    assert digest(r.stdout) == digest(payload(seed, nout))
    assert digest(r.stderr) == digest(payload(seed + 1, nerr))


def sha256sum_of_stdin(home, **kw) -> bytes:
    r = cli(home, "exec", "-i", "team-a/data/work", "--", "sha256sum", **kw)
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    return r.stdout.split()[0]


@pytest.mark.parametrize("size", [0, 1, 16385, 4 * MiB + 3])
def test_exec_stdin_from_a_regular_file(home, tmp_path, size):
    data = payload(size, size)
    (tmp_path / "in").write_bytes(data)
    with (tmp_path / "in").open("rb") as f:
        assert sha256sum_of_stdin(home, stdin=f) == digest(data).encode()


@pytest.mark.parametrize("size", [1, 65537, 4 * MiB + 3])
def test_exec_stdin_from_a_pipe(home, size):
    data = payload(size, size)
    assert sha256sum_of_stdin(home, input=data) == digest(data).encode()


def test_exec_stdin_from_dev_null(home):
    assert sha256sum_of_stdin(home, stdin=subprocess.DEVNULL) == digest(b"").encode()


def test_exec_stdin_closed(home):
    argv = ["sh", "-c", 'exec "$0" "$@" 0<&-', PODSHELL, "exec", "-i", "team-a/data/work", "--", "sha256sum"]
    r = subprocess.run(argv, env=cli_env(home), capture_output=True, timeout=60)
    assert (r.returncode, r.stderr) == (0, b"")
    assert r.stdout.split()[0] == digest(b"").encode()


def test_exec_cat_50_mib_both_ways_at_once(home):
    data = payload(50, 50 * MiB + 1)
    r = cli(home, "exec", "-i", "team-a/data/work", "--", "cat", input=data)
    assert (r.returncode, len(r.stdout), r.stderr) == (0, len(data), b"")
    assert digest(r.stdout) == digest(data)


# Runs its arguments and prints their peak RSS (KiB) on stderr.  Its own
# would not do: a child forked from pytest inherits pytest's high-water mark.
PEAK_RSS = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def test_exec_stdin_file_is_read_as_the_server_takes_it(home, tmp_path):
    """A big file is streamed, not loaded: podshell's peak memory stays far below its size."""
    size = 256 * MiB
    with (tmp_path / "sparse").open("wb") as f:
        f.truncate(size)
    with (tmp_path / "sparse").open("rb") as f:
        proc = subprocess.Popen(
            [PYTHON, "-c", PEAK_RSS, PODSHELL, "exec", "-i", "team-a/data/work", "--", "sha256sum"],
            env=cli_env(home), stdin=f, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err
    zeros = hashlib.sha256()
    for _ in range(size // MiB):
        zeros.update(bytes(MiB))
    assert out.split()[0] == zeros.hexdigest().encode()
    peak = int(err.split()[-1])
    assert peak < 100 * 1024, f"peak RSS {peak} KiB for a {size >> 20} MiB file"


def test_exec_with_a_terminal_passes_every_byte(home):
    data = payload(7, MiB + 3)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("4H", 24, 80, 0, 0))
    script = f"stty raw -echo -iexten; echo READY; head -c {len(data)} | sha256sum"
    proc = subprocess.Popen(
        [PODSHELL, "exec", "-it", "team-a/data/work", "--", "sh", "-c", script],
        env=cli_env(home), stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
    )  # fmt: skip
    os.close(slave)
    seen = bytearray()
    writer = None
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, f"no output from podshell -t: {bytes(seen)!r}"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every slave is closed
                break
            if not chunk:
                break
            seen += chunk
            if writer is None and b"READY" in seen:
                writer = threading.Thread(target=write_all, args=(master, data))
                writer.start()
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if writer is not None:
            writer.join(timeout=30)
        os.close(master)
    assert digest(data).encode() in seen, bytes(seen)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def test_attach_echoes_every_byte(home):
    data = payload(11, MiB + 3)
    proc = subprocess.Popen(
        [PODSHELL, "attach", "-i", "team-a/data/cat"],
        env=cli_env(home), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    writer = threading.Thread(target=proc.stdin.write, args=(data,))
    writer.start()
    try:
        got = bytearray()
        while len(got) < len(data):
            chunk = proc.stdout.read1(len(data) - len(got))
            assert chunk, f"attach ended after {len(got)} bytes"
            got += chunk
        assert digest(bytes(got)) == digest(data)
    finally:
        writer.join(timeout=30)
        proc.terminate()
        proc.communicate(timeout=15)


def test_output_into_a_closed_pipe_ends_quietly(home):
    proc = subprocess.Popen(
        [PODSHELL, "exec", "team-a/data/work", "--", "cat", "/dev/zero"],
        env=cli_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert proc.stdout.read(10) == bytes(10)
        proc.stdout.close()  # as `| head -c 10` does
        assert proc.wait(timeout=30) == 141  # 128 + SIGPIPE, as cat's would be
        assert proc.stderr.read() == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("size", [1, 16383, 16385, 32769, 65537, MiB + 3])
def test_port_forward_odd_sizes_both_ways(home, size):
    forward = Forward(home, f":{SOURCE_PORT}", f":{SINK_PORT}", pod="team-a/data")
    source, sink = forward.local
    try:
        data = payload(size, size)
        with ThreadPoolExecutor(2) as pool:
            down = pool.submit(download, source, size)
            up = pool.submit(upload, sink, data)
            assert down.result() == (size, digest(pattern(size)))
            assert up.result() == f"{size} {digest(data)}".encode()
    finally:
        forward.stop()


def test_port_forward_to_an_echo_40_mib_both_ways_at_once(home):
    """What the pod sends back while we still send must not stop what we send (it did: a blocking write)."""
    data = payload(40, 40 * MiB + 1)
    forward = Forward(home, f":{ECHO_PORT}", pod="team-a/data")
    try:
        with socket.create_connection(("127.0.0.1", forward.local[0]), timeout=60) as s:

            def send() -> None:
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)

            writer = threading.Thread(target=send, daemon=True)
            writer.start()
            got, h = 0, hashlib.sha256()
            while chunk := s.recv(MiB):
                h.update(chunk)
                got += len(chunk)
            writer.join(timeout=60)
        assert (got, h.hexdigest()) == (len(data), digest(data))
    finally:
        forward.stop()
