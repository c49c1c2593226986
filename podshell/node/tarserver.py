"""The tar of C{kubectl cp}, served by podshell in a container that has no
tar of its own (kubernetes#58512): a child of the spawner, in the container
as an exec is (L{podshell.node.spawner}), writing or reading the archive on
its stdout or stdin with Python's C{tarfile}.  A container with a tar runs
its own, as kubectl expects.

Everything it uses is imported here, before the fork (C{tarfile} brings
C{pwd} and C{grp}: inside the container they read its own files).
"""

from __future__ import annotations

import os
import tarfile
import time

from podshell.node import nsexec
from podshell.node.sftpserver import child_setup
from podshell.protocols.tar import TarCommand, parse

# Extraction never leaves its directory and never makes devices or setuid
# files: the "tar" filter of PEP 706, then kubectl's options.
_SAFE = tarfile.tar_filter


def main(env: dict[str, str], argv: list[str]) -> int:
    """In the child, once it is the container's: its own tar if it has
    one, else ours.  GNU tar's exit codes: 2 for a fatal error."""
    child_setup(env, at_home=False)
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
    failed = False
    with (
        os.fdopen(1, "wb", closefd=False) as out,
        tarfile.open(fileobj=out, mode="w|", format=tarfile.GNU_FORMAT) as tar,
    ):
        for name in command.paths:
            source = os.path.join(command.directory, name) if command.directory else name
            arcname = name.lstrip("/")
            if arcname != name:
                os.write(2, b"tar: Removing leading `/' from member names\n")
            try:
                tar.add(source, arcname=arcname or ".", recursive=True)
            except OSError as e:
                os.write(2, f"tar: {name}: Cannot stat: {e.strerror}\n".encode(errors="replace"))
                failed = True
    if failed:
        os.write(2, b"tar: Exiting with failure status due to previous errors\n")
    return 2 if failed else 0


def _extract(command: TarCommand) -> int:
    now = time.time()

    def allowed(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        member = _SAFE(member, dest)
        if not command.keep_mtime:
            member = member.replace(mtime=now, deep=False)
        if not command.preserve:
            member = member.replace(uid=os.getuid(), gid=os.getgid(), uname="", gname="", deep=False)
        return member

    with os.fdopen(0, "rb", closefd=False) as source, tarfile.open(fileobj=source, mode="r|") as tar:
        tar.extractall(path=command.directory or ".", filter=allowed)
    return 0
