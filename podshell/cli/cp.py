"""C{podshell cp SRC DST}, in kubectl's syntax: a file or a tree to or from a
container, as a tar stream through an exec (the container's tar, or
podshell's own where it has none), with progress on a terminal."""

from __future__ import annotations

import os
import posixpath
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO, cast

from podshell.cli import remote
from podshell.cli.api import API
from podshell.cli.profile import CLIError


@dataclass(frozen=True)
class Remote:
    namespace: str
    pod: str
    path: str


def parse(text: str, namespace: str) -> Remote | str:
    """A container path, or a local one, as kubectl tells them apart."""
    if text.startswith(("/", "./", "../")) or ":" not in text:
        return text
    pod, _, path = text.partition(":")
    if not path:
        raise CLIError(f"{text!r}: give a path in the container after the ':'")
    parts = pod.split("/")
    if len(parts) == 2 and all(parts):
        return Remote(parts[0], parts[1], path)
    if len(parts) == 1 and pod:
        return Remote(namespace, pod, path)
    raise CLIError(f"{text!r} is not [NAMESPACE/]POD:PATH")


def run(api: API, source: str, destination: str, namespace: str, container: str | None) -> int:
    src, dst = parse(source, namespace), parse(destination, namespace)
    if isinstance(src, Remote) == isinstance(dst, Remote):
        raise CLIError("one of SRC and DST is a container path ([NAMESPACE/]POD:PATH), the other a local one")
    if isinstance(dst, Remote):
        assert isinstance(src, str)
        return _upload(api, src, dst, container)
    assert isinstance(src, Remote) and isinstance(dst, str)
    return _download(api, src, dst, container)


def _upload(api: API, local: str, to: Remote, container: str | None) -> int:
    if not os.path.lexists(local):
        raise CLIError(f"{local}: no such file or directory")
    path = to.path
    # A directory there takes the source under its own name: one ending in
    # '/' says so itself (an image may have no test to ask).
    if path.endswith("/") or _quiet_exec(api, to, container, ["test", "-d", path]) == 0:
        path = posixpath.join(path, os.path.basename(os.path.normpath(local)))
    directory, name = posixpath.split(path.rstrip("/") or "/")
    if os.path.isdir(local):
        total = sum(os.lstat(os.path.join(d, f)).st_size for d, _, files in os.walk(local) for f in files)
    else:
        total = os.lstat(local).st_size
    progress = Progress(total)

    def produce(out: BinaryIO) -> None:
        with tarfile.open(fileobj=cast(BinaryIO, _Counted(out, progress)), mode="w|", format=tarfile.GNU_FORMAT) as tar:
            tar.add(local, arcname=name)

    command = ["tar", "-xmf", "-", "-C", directory or "/"]
    code = _through_pipe(0, produce, lambda: remote.run(api, to.namespace, to.pod, container, command, True, False))
    progress.done()
    return code


def _download(api: API, source: Remote, local: str, container: str | None) -> int:
    prefix = posixpath.normpath(source.path).lstrip("/")
    into = os.path.join(local, posixpath.basename(prefix)) if os.path.isdir(local) else local
    base, top = os.path.split(os.path.abspath(into))
    progress = Progress(0)

    def consume(stream: BinaryIO) -> None:
        def renamed(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
            name = posixpath.normpath(member.name)
            if name != prefix and not name.startswith(prefix + "/"):
                return None  # not under what was asked for
            rest = name[len(prefix) :].lstrip("/")
            member = member.replace(name=posixpath.join(top, rest) if rest else top, deep=False)
            return tarfile.data_filter(member, dest)  # nothing outside the destination, no devices

        with tarfile.open(fileobj=cast(BinaryIO, _Counted(stream, progress)), mode="r|") as tar:
            tar.extractall(base, filter=renamed)

    command = ["tar", "cf", "-", source.path]
    code = _through_pipe(
        1, consume, lambda: remote.run(api, source.namespace, source.pod, container, command, False, False)
    )
    progress.done()
    return code


def _quiet_exec(api: API, where: Remote, container: str | None, command: list[str]) -> int:
    """An exec whose output is not the user's: its exit code only."""
    with open(os.devnull, "r+b") as null:
        saved = os.dup(1), os.dup(2)
        os.dup2(null.fileno(), 1)
        os.dup2(null.fileno(), 2)
        try:
            return remote.run(api, where.namespace, where.pod, container, command, False, False)
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _through_pipe(fd: int, work: Callable[[BinaryIO], None], session: Callable[[], int]) -> int:
    """Run C{session} with its stdin (C{fd} 0) or stdout (1) a pipe to
    C{work} in a thread: the exec's loop stays the one that moves bytes."""
    read, write = os.pipe()
    ours, theirs = (write, read) if fd == 0 else (read, write)
    failure: list[BaseException] = []

    def guarded() -> None:
        try:
            with os.fdopen(ours, "wb" if fd == 0 else "rb") as stream:
                work(stream)
        except (OSError, tarfile.TarError) as e:
            failure.append(e)

    saved = os.dup(fd)
    os.dup2(theirs, fd)
    os.close(theirs)
    worker = threading.Thread(target=guarded, daemon=True)
    worker.start()
    try:
        code = session()
    finally:
        os.dup2(saved, fd)  # for a download, the pipe's last writer closes: the worker sees its end
        os.close(saved)
    worker.join()
    if failure:
        print(f"podshell: cp: {failure[0]}", file=sys.stderr)
        return code or 1
    return code


class _Counted:
    """A file object that counts what passes, for the progress line."""

    def __init__(self, stream: BinaryIO, progress: Progress) -> None:
        self.stream = stream
        self.progress = progress

    def write(self, data: bytes) -> int:
        self.stream.write(data)
        self.progress.add(len(data))
        return len(data)

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.progress.add(len(data))
        return data


class Progress:
    """Bytes so far, the rate, and the share of C{total} when it is known:
    one line on a terminal's stderr, never in a pipe or a file."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.count = 0
        self.started = time.monotonic()
        self.shown = 0.0
        self.enabled = sys.stderr.isatty()

    def add(self, n: int) -> None:
        self.count += n
        now = time.monotonic()
        if self.enabled and now - self.shown >= 0.2:
            self.shown = now
            self._show(now)

    def done(self) -> None:
        if self.enabled and self.shown:
            self._show(time.monotonic())
            sys.stderr.write("\n")

    def _show(self, now: float) -> None:
        rate = self.count / max(now - self.started, 1e-6)
        share = f" {min(100, self.count * 100 // self.total):3d}%" if self.total else ""
        sys.stderr.write(f"\r{_size(self.count)}{share}  {_size(rate)}/s ")
        sys.stderr.flush()


def _size(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            break
    return f"{n:.1f} {unit}"
