"""The remote end of legacy ``scp -O``, served by podshell in a container
that has no shell or no scp of its own: a child of the spawner, in the
container as an exec is (L{podshell.node.spawner}), running the rcp
protocol on its stdin and stdout with plain C{os} calls.  A container
that has both runs its own, through its shell, as before.

Everything it uses is imported here, before the fork.
"""

from __future__ import annotations

import glob
import os
import stat

from podshell.node import nsexec
from podshell.node.sftpserver import child_setup
from podshell.protocols.scp import ScpCommand, server_args

CHUNK = 256 * 1024
MAX_LINE = 64 * 1024


class Lost(Exception):
    """The client went away, or broke the protocol: end now."""


class Stream:
    """Buffered reads of stdin: lines, exact sizes, single bytes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def _more(self) -> None:
        data = os.read(self.fd, CHUNK)
        if not data:
            raise Lost("end of input")
        self.buffer += data

    def line(self) -> bytes | None:
        """A line without its newline; None at the end of input."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE:
                raise Lost("protocol line too long")
            try:
                self._more()
            except Lost:
                if self.buffer:
                    raise
                return None
        line, _, rest = bytes(self.buffer).partition(b"\n")
        self.buffer = bytearray(rest)
        return line

    def byte(self) -> int:
        if not self.buffer:
            self._more()
        b = self.buffer[0]
        del self.buffer[0]
        return b

    def chunks(self, size: int):
        """C{size} bytes, as they come."""
        while size > 0:
            if not self.buffer:
                self._more()
            take = bytes(self.buffer[:size])
            del self.buffer[: len(take)]
            size -= len(take)
            yield take


class Scp:
    def __init__(self, command: ScpCommand, stdin: int = 0, stdout: int = 1) -> None:
        self.command = command
        self.input = Stream(stdin)
        self.out = stdout
        self.errors = 0

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.out, view) :]

    def error(self, message: str, fatal: bool = False) -> None:
        self.errors += 1
        self.send(b"\x02" if fatal else b"\x01")
        self.send(f"scp: {message}\n".encode(errors="surrogateescape"))

    def ack(self) -> None:
        self.send(b"\0")

    def response(self) -> bool:
        """The client's answer: True for OK; a warning or an error is told on stderr."""
        code = self.input.byte()
        if code == 0:
            return True
        line = self.input.line() or b""
        os.write(2, line + b"\n")
        if code == 1:
            return False
        raise Lost(line.decode(errors="replace"))

    # -f: we send.
    def source(self) -> None:
        if not self.response():
            return
        for pattern in self.command.paths:
            paths = [pattern]
            if not os.path.lexists(pattern) and glob.has_magic(pattern):
                paths = sorted(glob.glob(pattern)) or [pattern]
            for path in paths:
                self._send_path(path)

    def _times(self, st: os.stat_result) -> bool:
        self.send(f"T{int(st.st_mtime)} 0 {int(st.st_atime)} 0\n".encode())
        return self.response()

    def _send_path(self, path: str) -> None:
        name = os.path.basename(path.rstrip("/")) or "/"
        try:
            st = os.stat(path)
        except OSError as e:
            self.error(f"{path}: {e.strerror}")
            return
        if stat.S_ISDIR(st.st_mode):
            if not self.command.recursive:
                self.error(f"{path}: not a regular file")
                return
            if self.command.preserve and not self._times(st):
                return
            try:
                entries = sorted(os.listdir(path))
            except OSError as e:
                self.error(f"{path}: {e.strerror}")
                return
            self.send(f"D{stat.S_IMODE(st.st_mode):04o} 0 {name}\n".encode(errors="surrogateescape"))
            if not self.response():
                return
            for entry in entries:
                self._send_path(os.path.join(path, entry))
            self.send(b"E\n")
            self.response()
            return
        if not stat.S_ISREG(st.st_mode):
            self.error(f"{path}: not a regular file")
            return
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            self.error(f"{path}: {e.strerror}")
            return
        try:
            if self.command.preserve and not self._times(st):
                return
            size = os.fstat(fd).st_size
            self.send(f"C{stat.S_IMODE(st.st_mode):04o} {size} {name}\n".encode(errors="surrogateescape"))
            if not self.response():
                return
            failure = self._copy_out(fd, size)
            if failure is None:
                self.ack()
            else:
                self.error(f"{path}: {failure}")
            self.response()
        finally:
            os.close(fd)

    def _copy_out(self, fd: int, size: int) -> str | None:
        """Send C{size} bytes of C{fd}; always that many (zeros after a read error, as scp does)."""
        offset, failure = 0, None
        while offset < size:
            want = min(CHUNK, size - offset)
            try:
                data = os.pread(fd, want, offset) if failure is None else b""
            except OSError as e:
                failure, data = e.strerror, b""
            if not data:
                failure = failure or "file shrank while being sent"
                data = bytes(want)
            self.send(data)
            offset += len(data)
        return failure

    # -t: we receive.
    def sink(self) -> None:
        target = self.command.paths[0]
        into = os.path.isdir(target)
        if self.command.directory and not into:
            self.error(f"{target}: Not a directory", fatal=True)
            return
        self.ack()
        self._receive(target, into, top=True)

    def _receive(self, target: str, into: bool, top: bool) -> None:
        times: tuple[int, int] | None = None
        while True:
            line = self.input.line()
            if line is None:
                return
            if not line:
                raise Lost("empty protocol line")
            code, rest = line[:1], line[1:].decode(errors="surrogateescape")
            if code in (b"\x01", b"\x02"):
                os.write(2, line[1:] + b"\n")
                self.errors += 1
                if code == b"\x02":
                    raise Lost(rest)
                continue
            if code == b"E":
                if top:
                    raise Lost("unexpected E")
                self.ack()
                return
            if code == b"T":
                try:
                    fields = [int(f) for f in rest.split()]
                    times = (fields[2], fields[0])  # atime, mtime
                except (ValueError, IndexError):
                    self.error("protocol error: bad times", fatal=True)
                    raise Lost("bad times") from None
                self.ack()
                continue
            if code not in (b"C", b"D"):
                self.error(f"protocol error: unexpected {line[:20]!r}", fatal=True)
                raise Lost("unexpected line")
            try:
                mode_text, size_text, name = rest.split(" ", 2)
                mode, size = int(mode_text, 8) & 0o7777, int(size_text)
            except ValueError:
                self.error("protocol error: bad file line", fatal=True)
                raise Lost("bad file line") from None
            if "/" in name or name in ("", ".", ".."):
                self.error(f"protocol error: unexpected filename: {name}", fatal=True)
                raise Lost("bad name")
            path = os.path.join(target, name) if into else target
            if code == b"D":
                self._directory(path, mode, times)
            else:
                self._file(path, mode, size, times)
            times = None

    def _directory(self, path: str, mode: int, times: tuple[int, int] | None) -> None:
        if not self.command.recursive:
            self.error("received directory without -r", fatal=True)
            raise Lost("directory without -r")
        try:
            if not os.path.isdir(path):
                os.mkdir(path, mode | 0o700)
        except OSError as e:
            self.error(f"{path}: {e.strerror}", fatal=True)
            raise Lost(str(e)) from None
        self.ack()
        self._receive(path, True, top=False)
        try:
            if self.command.preserve:
                os.chmod(path, mode)
            if times is not None:
                os.utime(path, times)
        except OSError as e:
            self.error(f"{path}: {e.strerror}")

    def _file(self, path: str, mode: int, size: int, times: tuple[int, int] | None) -> None:
        failure = None
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, mode)
        except OSError as e:
            fd, failure = -1, e.strerror
        self.ack()
        offset = 0
        for data in self.input.chunks(size):
            if failure is None:
                try:
                    view = memoryview(data)
                    while view:
                        n = os.pwrite(fd, view, offset)
                        view, offset = view[n:], offset + n
                except OSError as e:
                    failure = e.strerror
        ok = self.response()
        if fd >= 0:
            try:
                if failure is None:
                    os.ftruncate(fd, size)
                    if self.command.preserve:
                        os.fchmod(fd, mode)
                    if times is not None:
                        os.utime(fd, times)
            except OSError as e:
                failure = e.strerror
            os.close(fd)
        if failure is not None:
            self.error(f"{path}: {failure}")
        elif ok:
            self.ack()


def main(env: dict[str, str], argv: list[str]) -> int:
    """In the child, once it is the container's: its own shell and scp if
    it has both (the command as the client sent it), else ours."""
    child_setup(env)
    command = argv[1]
    path = env.get("PATH", "/usr/bin:/bin").split(":")
    if os.path.exists("/bin/sh") and any(os.access(os.path.join(d, "scp"), os.X_OK) for d in path if d):
        nsexec._exec(["/bin/sh", "-c", command], env)
    parsed = server_args(command)
    if parsed is None:
        os.write(2, b"podshell: not an scp server command\n")
        return 1
    scp = Scp(parsed)
    try:
        scp.sink() if parsed.sink else scp.source()
    except Lost as e:
        os.write(2, f"podshell scp: {e}\n".encode(errors="replace"))
        return 1
    except BrokenPipeError:
        return 1
    return 1 if scp.errors else 0
