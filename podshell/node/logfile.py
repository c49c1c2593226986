"""Container logs on disk, in the kubelet's CRI log format, and the reader
that serves them as the kube-apiserver's pods/log does.

Each line of a file is one entry: an RFC 3339 timestamp with nanoseconds,
the stream, C{F} (the entry ends a line) or C{P} (it does not), and the
text (CRI: C{2016-10-06T00:17:09.669794202Z stdout F text}).  Output is
written as it comes, chunk by chunk: a chunk's unfinished last line is a
C{P} entry at once (nothing waits in memory for a newline), and lines
longer than L{MAX_LINE} are split as containerd splits them.

Files live in one directory per container, one set per run of it
(C{<restart>.log}, the kubelet's naming), rotated at a size bound into
C{<restart>.log.<n>}; the oldest go past a file count.  Everything here is
plain blocking file I/O in small appends: it never holds more than a chunk.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from podshell.core.logs import Options, parse_timestamp

MAX_SIZE = 10 * 1024 * 1024  # the kubelet's containerLogMaxSize
MAX_FILES = 5  # the kubelet's containerLogMaxFiles (the file being written included)
MAX_LINE = 16 * 1024  # containerd's max_container_log_line_size
READ_SIZE = 64 * 1024
_BLOCK = 64 * 1024
_ROTATED = re.compile(r"^(\d+)\.log\.(\d+)$")
STREAMS = ("stdout", "stderr")


def timestamp(ns: int) -> bytes:
    """RFC3339Nano as Go writes it: trailing zeros of the fraction trimmed."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:09d}".rstrip("0")
    return f"{text}{'.' + digits if digits else ''}Z".encode()


def encode(ns: int, stream: str, data: bytes) -> bytes:
    """The entries for one chunk of a stream's output."""
    full = timestamp(ns) + b" " + stream.encode() + b" F "
    lines = data.split(b"\n")
    last = lines.pop()
    if max(map(len, lines), default=0) > MAX_LINE or len(last) > MAX_LINE:
        return _encode_long(full, lines, last)
    out = full + (b"\n" + full).join(lines) + b"\n" if lines else b""
    if last:
        out += full[:-2] + b"P " + last + b"\n"
    return out


def _encode_long(full: bytes, lines: list[bytes], last: bytes) -> bytes:
    partial = full[:-2] + b"P "
    out = bytearray()
    for line, ends in [*((line, True) for line in lines), (last, False)]:
        while len(line) > MAX_LINE:
            out += partial + line[:MAX_LINE] + b"\n"
            line = line[MAX_LINE:]
        if ends or line:
            out += (full if ends else partial) + line + b"\n"
    return bytes(out)


@dataclass(frozen=True)
class Entry:
    time: int  # nanoseconds since the epoch
    stream: str
    partial: bool
    text: bytes


def decode(line: bytes) -> Entry:
    """One entry, without its newline. @raise ValueError: not a CRI log line."""
    parts = line.split(b" ", 3)
    if len(parts) < 3 or parts[2] not in (b"F", b"P"):
        raise ValueError(f"not a CRI log line: {line[:80]!r}")
    return Entry(parse_timestamp(parts[0]), parts[1].decode(), parts[2] == b"P", parts[3] if len(parts) > 3 else b"")


def instance_files(directory: Path, instance: int) -> list[Path]:
    """The files of one run of a container, oldest first (the one being written last)."""
    rotated = []
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    for name in names:
        m = _ROTATED.match(name)
        if m and int(m[1]) == instance:
            rotated.append((int(m[2]), directory / name))
    current = directory / f"{instance}.log"
    return [p for _, p in sorted(rotated)] + ([current] if current.exists() else [])


def instances(directory: Path) -> set[int]:
    """The runs of a container that have logs."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return set()
    return {int(name.split(".", 1)[0]) for name in names if re.match(r"^\d+\.log(\.\d+)?$", name)}


def remove_instance(directory: Path, instance: int) -> None:
    for path in instance_files(directory, instance):
        path.unlink(missing_ok=True)


class LogFile:
    """The writer of one run of a container: appends, rotates, forgets the oldest."""

    def __init__(self, directory: Path, instance: int, max_size: int = MAX_SIZE, max_files: int = MAX_FILES) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.instance = instance
        self.max_size = max_size
        self.max_files = max(1, max_files)
        self.path = directory / f"{instance}.log"
        self._fd = self._open()
        self._size = os.fstat(self._fd).st_size
        rotated = [int(m[2]) for p in instance_files(directory, instance) if (m := _ROTATED.match(p.name))]
        self._next = max(rotated, default=0) + 1

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)

    def write(self, stream: str, data: bytes, ns: int) -> None:
        """Append a chunk of C{stream}'s output, rotating at the size bound
        (between entries; one entry longer than the bound gets a file alone)."""
        entries = encode(ns, stream, data)
        while entries:
            room = self.max_size - self._size
            if len(entries) <= room:
                self._append(entries)
                return
            cut = entries.rfind(b"\n", 0, max(room, 0)) + 1
            if cut == 0 and self._size == 0:
                cut = entries.index(b"\n") + 1
            if cut:
                self._append(entries[:cut])
                entries = entries[cut:]
            self.rotate()

    def _append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._size += len(data)

    def rotate(self) -> None:
        os.close(self._fd)
        os.rename(self.path, self.directory / f"{self.instance}.log.{self._next}")
        self._next += 1
        self._fd = self._open()
        self._size = 0
        for old in instance_files(self.directory, self.instance)[: -self.max_files]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Formatter:
    """Entries to what the kubelet sends: the text, a newline for C{F},
    the time first with C{timestamps} (once per line, not per partial
    entry), at most C{limit} bytes in all."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.remaining = options.limit
        self._midline: set[str] = set()

    @property
    def done(self) -> bool:
        return self.remaining is not None and self.remaining <= 0

    def format(self, entry: Entry) -> bytes:
        since = self.options.since
        if self.done or (since is not None and entry.time < since):
            return b""
        out = entry.text if entry.partial else entry.text + b"\n"
        if self.options.timestamps and entry.stream not in self._midline:
            out = timestamp(entry.time) + b" " + out
        if entry.partial:
            self._midline.add(entry.stream)
        else:
            self._midline.discard(entry.stream)
        if self.remaining is not None:
            out = out[: self.remaining]
            self.remaining -= len(out)
        return out


def _lines_backwards(f: BinaryIO, end: int) -> Iterator[tuple[int, bytes]]:
    """(offset, line without its newline) of each whole line before C{end}, last first."""
    pos, rest = end, b""
    while pos > 0:
        start = max(0, pos - _BLOCK)
        f.seek(start)
        data = f.read(pos - start) + rest
        cut = 0
        if start > 0:
            cut = data.find(b"\n") + 1
            if cut == 0:
                pos, rest = start, data
                continue
        lines = data[cut:].split(b"\n")[:-1]
        at = start + cut + sum(len(line) + 1 for line in lines)
        for line in reversed(lines):
            at -= len(line) + 1
            yield at, line
        pos, rest = start, data[:cut]


def tail_start(paths: list[Path], lines: int) -> tuple[int, int]:
    """Where the last C{lines} lines begin: (index in C{paths}, offset).
    A line is entries up to an C{F} one; an unfinished last line counts."""
    if not paths:
        return 0, 0
    if lines <= 0:
        return len(paths) - 1, paths[-1].stat().st_size
    found, last = 0, True
    for index in reversed(range(len(paths))):
        with paths[index].open("rb") as f:
            for offset, line in _lines_backwards(f, f.seek(0, os.SEEK_END)):
                ends_a_line = line.split(b" ", 3)[2:3] == [b"F"]
                if ends_a_line and not last:
                    found += 1
                    if found == lines:
                        return index, offset + len(line) + 1
                last = False
    return 0, 0


class Reader:
    """Formatted output of one run of a container, read as far as it has
    been written; called again, it goes on (following rotation)."""

    def __init__(self, directory: Path, instance: int, options: Options) -> None:
        self.directory = directory
        self.instance = instance
        self.formatter = Formatter(options)
        paths = instance_files(directory, instance)
        index, offset = tail_start(paths, options.tail) if options.tail is not None else (0, 0)
        self._file: BinaryIO | None = None
        self._buffer = b""
        self.at_end = False
        if paths:
            self._file = paths[index].open("rb")
            self._file.seek(offset)

    @property
    def done(self) -> bool:
        """The byte limit is reached: nothing more will come."""
        return self.formatter.done

    def read(self, size: int = READ_SIZE) -> bytes:
        """About C{size} bytes of the files, formatted (maybe none: all
        filtered out).  L{at_end} says whether the files are read to their end."""
        out: list[bytes] = []
        self.at_end = self._file is None
        while self._file is not None and not self.done:
            data = self._file.read(size)
            if not data:
                if self._next_file():
                    continue
                self.at_end = True
                break
            lines = (self._buffer + data).split(b"\n")
            self._buffer = lines.pop()
            for line in lines:
                try:
                    out.append(self.formatter.format(decode(line)))
                except ValueError:
                    continue  # a torn line (a crash mid-write): skip it as the kubelet does
            if len(data) >= size or out:
                break
        return b"".join(out)

    def _next_file(self) -> bool:
        """At the end of a file that was rotated away: open the next one."""
        assert self._file is not None
        mine = os.fstat(self._file.fileno())
        paths = instance_files(self.directory, self.instance)
        stats = [(p, p.stat()) for p in paths if p.exists()]
        at = next((i for i, (_, s) in enumerate(stats) if (s.st_dev, s.st_ino) == (mine.st_dev, mine.st_ino)), None)
        following = stats[at + 1 :] if at is not None else stats
        if not following:
            return False
        self._file.close()
        self._buffer = b""
        self._file = following[0][0].open("rb")
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
