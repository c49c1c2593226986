"""Session recordings as asciicast v2, and the hash chain that makes them
tamper-evident (sans-IO: lines in, lines out).

A recording is an asciicast v2 file (C{ID.cast}): a JSON header line, then
one C{[time, code, data]} line per event, so the real C{asciinema} player
plays a terminal session as it is.  podshell's fields (who, from where, the
target, the command, the audit session id, the kind) are in the header's
C{podshell} object, which asciicast readers ignore.  A command without a
terminal is recorded the same way with more codes: C{"o"} stdout, C{"e"}
stderr, C{"i"} stdin and C{"x"} the exit status; players show its stdout.
A port forward's recording has one C{"c"} event per connection opened
(C{"N ADDRESS"}) and one C{"d"} when it closes (C{"N IN OUT"}: bytes into
the pod and out of it).

The chain cannot go in the event lines (a player reads exactly three
fields), so it is a sidecar, C{ID.cast.chain}: line I{n} is the hex SHA-256
of (line I{n-1}'s digest, as text, followed by cast line I{n} with its
newline); the first line's predecessor is L{GENESIS}.  When the recording
ends a last line C{end COUNT DIGEST} says how many lines there are, so a
cut-off recording is told from a whole one.  Changing, removing or adding
any byte of the cast breaks the chain from that line on.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

VERSION = 2
GENESIS = "0" * 64
CHAIN_SUFFIX = ".chain"


class Kind(StrEnum):
    TERMINAL = "terminal"
    EXEC = "exec"
    FORWARD = "forward"  # a port forward's connections


class Code(StrEnum):
    OUTPUT = "o"
    INPUT = "i"
    RESIZE = "r"
    STDERR = "e"
    EXIT = "x"
    OPENED = "c"  # a forwarded connection: "N ADDRESS"
    CLOSED = "d"  # its end: "N IN OUT", bytes into the pod and out of it


def header(kind: Kind, width: int, height: int, timestamp: float, term: str | None, fields: dict[str, Any]) -> dict:
    out: dict[str, Any] = {"version": VERSION, "width": width, "height": height, "timestamp": int(timestamp)}
    if term:
        out["env"] = {"TERM": term}
    out["podshell"] = {"kind": kind.value, **fields}
    return out


def _line(value: Any) -> bytes:
    return (json.dumps(value, separators=(", ", ": ")) + "\n").encode()


class Encoder:
    """Events to cast lines.  Output is bytes; asciicast data is text, so
    each stream is decoded as UTF-8 incrementally (a character split across
    reads stays whole) and bytes that are not UTF-8 are kept as escapes
    (L{data_bytes} gives back the exact bytes)."""

    def __init__(self, head: dict) -> None:
        self.head = _line(head)
        self._decoders: dict[Code, codecs.IncrementalDecoder] = {}

    def event(self, t: float, code: Code, data: bytes | str) -> bytes | None:
        """The line for an event, or None while a character is incomplete."""
        if isinstance(data, bytes):
            decoder = self._decoders.get(code)
            if decoder is None:
                decoder = self._decoders[code] = codecs.getincrementaldecoder("utf-8")("surrogateescape")
            data = decoder.decode(data)
            if not data:
                return None
        return _line([round(t, 6), code.value, data])

    def resize(self, t: float, cols: int, rows: int) -> bytes:
        return _line([round(t, 6), Code.RESIZE.value, f"{cols}x{rows}"])


def data_bytes(data: str) -> bytes:
    """An event's data as the bytes that were recorded."""
    return data.encode("utf-8", "surrogateescape")


class Chain:
    """The running digest over a recording's lines."""

    def __init__(self) -> None:
        self.digest = GENESIS
        self.count = 0

    def add(self, line: bytes) -> bytes:
        """The sidecar's line for the cast line C{line}."""
        self.digest = hashlib.sha256(self.digest.encode() + line).hexdigest()
        self.count += 1
        return f"{self.digest}\n".encode()

    def trailer(self) -> bytes:
        return f"end {self.count} {self.digest}\n".encode()


@dataclass(frozen=True)
class Verdict:
    ok: bool
    message: str
    complete: bool = False  # the trailer is there: the recording was closed


def verify(cast: bytes, chain: bytes) -> Verdict:
    """Check a cast against its chain: the first line that differs, or how
    many lines are intact."""
    lines = cast.splitlines(keepends=True)
    digests = chain.splitlines()
    trailer = None
    if digests and digests[-1].startswith(b"end "):
        trailer = digests.pop().split()
    running = Chain()
    for n, line in enumerate(lines, 1):
        expected = running.add(line).strip()
        if n > len(digests):
            return Verdict(False, f"line {n}: not in the chain (added after the recording, or cut off in a crash)")
        if digests[n - 1] != expected:
            return Verdict(False, f"line {n}: changed (its digest does not match the chain)")
    if len(digests) > len(lines):
        return Verdict(False, f"line {len(lines) + 1}: missing (the chain has {len(digests)} lines)")
    if trailer is None:
        return Verdict(True, f"{len(lines)} lines intact; no end mark: still being written, or cut off")
    if len(trailer) != 3 or trailer[1] != str(running.count).encode() or trailer[2] != running.digest.encode():
        return Verdict(False, "the end mark does not match the lines")
    return Verdict(True, f"{len(lines)} lines intact, complete, sha256 {running.digest}", complete=True)


def read_events(lines: Iterable[bytes]) -> tuple[dict, list[tuple[float, str, str]]]:
    """A cast's header and events.  @raise ValueError: not asciicast v2."""
    it = iter(lines)
    try:
        head = json.loads(next(it))
    except (StopIteration, json.JSONDecodeError):
        raise ValueError("not an asciicast file (no JSON header line)") from None
    if not isinstance(head, dict) or head.get("version") != VERSION:
        raise ValueError("not an asciicast v2 file")
    events = []
    for line in it:
        if not line.strip():
            continue
        t, code, data = json.loads(line)
        events.append((float(t), str(code), str(data)))
    return head, events
