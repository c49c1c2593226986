"""The tar command lines C{kubectl cp} sends (kubectl 1.20 through 1.33):
C{tar cf - PATH} to copy out of a container, C{tar [--no-same-permissions
--no-same-owner] -xmf - [-C DIR]} to copy in.  Recognised here, so that a
container without tar gets podshell's own (L{podshell.node.tarserver})."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

_CREATE = {"cf", "-cf"}
_EXTRACT = {"xf", "-xf", "xmf", "-xmf"}
_NO_PRESERVE = {"--no-same-permissions", "--no-same-owner"}


@dataclass(frozen=True)
class TarCommand:
    create: bool
    paths: tuple[str, ...] = ()  # create: what goes into the archive
    directory: str | None = None  # extract: where it goes (-C); else the working directory
    keep_mtime: bool = True  # extract without m: the archive's times
    preserve: bool = True  # extract: owners and permissions from the archive (as root)


def parse(argv: Sequence[str]) -> TarCommand | None:
    """The command, if C{argv} is one of kubectl cp's; None for any other."""
    if len(argv) < 3 or argv[0] != "tar":
        return None
    words = list(argv[1:])
    preserve = True
    while words and words[0] in _NO_PRESERVE:
        preserve = False
        words.pop(0)
    if len(words) < 2 or words[1] != "-":
        return None
    mode, rest = words[0], words[2:]
    directory = None
    if rest[:1] == ["-C"]:
        if len(rest) < 2 or not rest[1]:
            return None
        directory, rest = rest[1], rest[2:]
    if mode in _CREATE and rest and preserve and all(rest):
        return TarCommand(True, tuple(rest), directory)
    if mode in _EXTRACT and not rest:
        return TarCommand(False, (), directory, keep_mtime="m" not in mode, preserve=preserve)
    return None
