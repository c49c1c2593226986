"""What a process is to everyone who deals with one: its terminal size, how
it ended, signal names.  No Twisted here, so clients can import it cheaply."""

from __future__ import annotations

import signal
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.python.failure import Failure

# The argv that asks a node for podshell's own SFTP server in a container
# (served by the spawner's child, nothing needed in the image) instead of a
# command: the SSH subsystem, and any exec client that names it.
SFTP_SERVER = "podshell:sftp-server"
# The same for legacy scp (scp -O): [SCP_SERVER, the client's remote command];
# the container's own scp runs it if the container has a shell and scp.
SCP_SERVER = "podshell:scp"
# And for kubectl cp's tar: [TAR_SERVER, *the tar command]; the container's
# own tar runs it if it has one.
TAR_SERVER = "podshell:tar"


@dataclass(frozen=True)
class WindowSize:
    rows: int
    cols: int
    xpixel: int = 0
    ypixel: int = 0

    def pack(self) -> bytes:
        return struct.pack("4H", self.rows, self.cols, self.xpixel, self.ypixel)


@dataclass(frozen=True)
class ExitStatus:
    """How a process ended: an exit code, or the name of the signal (C{"TERM"})."""

    code: int | None = None
    signal: str | None = None

    @classmethod
    def fromFailure(cls, reason: Failure) -> ExitStatus:
        signum = getattr(reason.value, "signal", None)
        if signum is not None:
            return cls(signal=signal_name(signum))
        return cls(code=getattr(reason.value, "exitCode", None) or 0)

    def __str__(self) -> str:
        return f"signal {self.signal}" if self.signal else f"exit code {self.code}"


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name.removeprefix("SIG")
    except ValueError:
        return str(signum)


def signal_number(name: str | int) -> int:
    """C{"TERM"}, C{"SIGTERM"} or C{15} -> 15; raises C{ValueError} otherwise."""
    if isinstance(name, int):
        return signal.Signals(name).value
    upper = name.upper()
    try:
        return signal.Signals[upper if upper.startswith("SIG") else "SIG" + upper].value
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None
