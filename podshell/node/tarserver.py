"""The tar of C{kubectl cp}, served by podshell in a container that has no
tar of its own (kubernetes#58512): a child of the spawner, in the container
as an exec is (L{podshell.node.spawner}), writing or reading the archive on
its stdout or stdin with Python's C{tarfile}.  A container with a tar runs
its own, as kubectl expects.

Everything it uses is imported here, before the fork.  Owners go by
number: C{tarfile}'s name lookups would go through the host's NSS, which
could load a library from the container's filesystem into this process.
"""

from __future__ import annotations

import os
import tarfile
import time
from collections.abc import Callable, Iterator
from typing import BinaryIO

from podshell.node import nsexec
from podshell.node.sftpserver import child_setup
from podshell.protocols.tar import TarCommand, parse

# Longest path a member or its link may name.  Python before 3.11.13 lets
# PEP 706's filter be bypassed through paths past PATH_MAX (CVE-2025-4517 and
# its family): refusing long ones first closes that door on any 3.11.
_LONGEST = 1024


class PathTooLong(tarfile.FilterError):
    def __init__(self, member: tarfile.TarInfo) -> None:
        super().__init__(f"{member.name!r} names a path longer than {_LONGEST} bytes")
        self.tarinfo = member


def safe(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """Extraction never leaves its directory and never makes devices or
    setuid files: the "tar" filter of PEP 706, after a length bound."""
    for path in (member.name, member.linkname):
        if len(os.path.join(dest, path).encode(errors="surrogateescape")) > _LONGEST:
            raise PathTooLong(member)
    return tarfile.tar_filter(member, dest)


def main(env: dict[str, str], argv: list[str]) -> int:
    """In the child, once it is the container's: its own tar if it has
    one, else ours.  GNU tar's exit codes: 2 for a fatal error."""
    child_setup(env, at_home=False)
    tarfile.pwd = tarfile.grp = None  # type: ignore[attr-defined]  # numeric owners only
    path = env.get("PATH", "/usr/bin:/bin").split(":")
    if any(os.access(os.path.join(d, "tar"), os.X_OK) for d in path if d):
        nsexec._exec(argv[1:], env)
    command = parse(argv[1:])
    if command is None:
        os.write(2, b"podshell: not a tar command of kubectl cp\n")
        return 2
    try:
        return _create(command) if command.create else _extract(command)
    except (OSError, tarfile.TarError) as e:
        os.write(2, f"tar: {e}\n".encode(errors="replace"))
        return 2


def _create(command: TarCommand) -> int:
    """As GNU tar: a member that cannot be read is said and skipped, the
    rest of its tree goes on, and the exit code says something was left out."""
    problems = 0

    def said(message: str) -> None:
        nonlocal problems
        problems += 1
        os.write(2, f"tar: {message}\n".encode(errors="replace"))

    out = os.fdopen(1, "wb", closefd=False)
    with out, tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar:
        for name in command.paths:
            source = os.path.join(command.directory, name) if command.directory else name
            arcname = name.lstrip("/") or "."
            if arcname != name:
                os.write(2, b"tar: Removing leading `/' from member names\n")
            for path, member in _walk(source, arcname, said):
                try:
                    info = tar.gettarinfo(path, member)
                except OSError as e:
                    said(f"{path}: Cannot stat: {e.strerror}")
                    continue
                if not info.isreg():
                    tar.addfile(info)
                    continue
                try:
                    f = open(path, "rb")  # noqa: SIM115 (closed below, after the copy)
                except OSError as e:
                    said(f"{path}: Cannot open: {e.strerror}")
                    continue
                with f:
                    tar.addfile(info, _Exactly(f, info.size, path))
    if problems:
        os.write(2, b"tar: Exiting with failure status due to previous errors\n")
    return 2 if problems else 0


def _walk(path: str, member: str, said: Callable[[str], None]) -> Iterator[tuple[str, str]]:
    """C{path} and, for a directory (not a link to one), what is under it."""
    yield path, member
    if os.path.isdir(path) and not os.path.islink(path):
        try:
            names = sorted(os.listdir(path))
        except OSError as e:
            said(f"{path}: Cannot open: {e.strerror}")
            return
        for name in names:
            yield from _walk(os.path.join(path, name), f"{member}/{name}", said)


class _Exactly:
    """A file read as exactly the size its header says: one that shrank
    meanwhile is padded with zeros (GNU tar's way), so the archive stays
    whole; one that grew is cut at its header's size."""

    def __init__(self, f: BinaryIO, size: int, path: str) -> None:
        self.f = f
        self.left = size
        self.path = path
        self.shrank = False

    def read(self, n: int = -1) -> bytes:
        want = self.left if n < 0 else min(n, self.left)
        data = b"" if self.shrank else self.f.read(want)
        if len(data) < want:
            if not self.shrank:
                self.shrank = True
                short = self.left - len(data)
                os.write(2, f"tar: {self.path}: File shrank by {short} bytes; padding with zeros\n".encode())
            data += bytes(want - len(data))
        self.left -= want
        return data


def _extract(command: TarCommand) -> int:
    now = time.time()

    def allowed(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        member = safe(member, dest)
        if not command.keep_mtime:
            member = member.replace(mtime=now, deep=False)
        if not command.preserve:
            member = member.replace(uid=os.getuid(), gid=os.getgid(), uname="", gname="", deep=False)
        return member

    with os.fdopen(0, "rb", closefd=False) as source, tarfile.open(fileobj=source, mode="r|") as tar:
        tar.extractall(path=command.directory or ".", filter=allowed)
    return 0
