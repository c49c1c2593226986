"""The legacy scp protocol (``scp -O``): what its remote command says.

A client in legacy mode runs ``scp [-v] [-r] [-p] [-d] -t|-f [--] PATH...``
through the remote shell.  L{server_args} recognises that command, so that a
node can serve it without a shell or an scp in the image.  Pure, no I/O.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

# What a shell would do more with than split words: not an scp we can serve.
_SHELL = re.compile(r"[;&|`$<>(){}\n\\!#~]")
_FLAGS = set("vrpdtfq")


@dataclass(frozen=True)
class ScpCommand:
    sink: bool  # -t: we receive; else -f: we send
    recursive: bool
    preserve: bool
    directory: bool  # -d: the target must be a directory
    paths: tuple[str, ...]


def server_args(command: str) -> ScpCommand | None:
    """The scp server invocation C{command} is, or None if it is anything else."""
    if _SHELL.search(command):
        return None
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if not words or words[0] not in ("scp", "/usr/bin/scp", "/bin/scp"):
        return None
    flags: set[str] = set()
    rest = words[1:]
    while rest and rest[0].startswith("-") and rest[0] != "-":
        word = rest.pop(0)
        if word == "--":
            break
        if not set(word[1:]) <= _FLAGS:
            return None
        flags |= set(word[1:])
    if ("t" in flags) == ("f" in flags) or not rest:
        return None
    sink = "t" in flags
    if sink and len(rest) != 1:
        return None
    return ScpCommand(sink, "r" in flags, "p" in flags, "d" in flags, tuple(rest))
