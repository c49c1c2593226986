"""SFTP version 3 (draft-ietf-secsh-filexfer-02) with OpenSSH's extensions,
sans-IO: bytes in, L{Request}s out; replies as bytes.

L{Decoder.feed} takes whatever arrived and returns the complete packets as
requests.  It is strict: a packet whose fields do not fill it exactly is a
L{Malformed} request (the server answers C{SSH_FX_BAD_MESSAGE}), an
unknown type is L{Unknown} (C{SSH_FX_OP_UNSUPPORTED}), and what cannot be
a packet at all (a length of 0, or beyond L{MAX_PACKET}) raises
L{ProtocolError}: the stream cannot be resynchronised, the server ends.
Nothing in here raises anything else on any input.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

VERSION = 3
# OpenSSH's sftp-server: 256 KiB messages, reads and writes up to 1 KiB less.
MAX_PACKET = 256 * 1024
MAX_READ = MAX_PACKET - 1024

INIT, VERSION_PACKET = 1, 2
OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT = 3, 4, 5, 6, 7, 8, 9, 10
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME, READLINK, SYMLINK = range(11, 21)
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105
EXTENDED, EXTENDED_REPLY = 200, 201

FX_OK, FX_EOF, FX_NO_SUCH_FILE, FX_PERMISSION_DENIED, FX_FAILURE = 0, 1, 2, 3, 4
FX_BAD_MESSAGE, FX_NO_CONNECTION, FX_CONNECTION_LOST, FX_OP_UNSUPPORTED = 5, 6, 7, 8

# Open flags.
FXF_READ, FXF_WRITE, FXF_APPEND, FXF_CREAT, FXF_TRUNC, FXF_EXCL = 1, 2, 4, 8, 0x10, 0x20
# Attribute flags.
ATTR_SIZE, ATTR_UIDGID, ATTR_PERMISSIONS, ATTR_ACMODTIME, ATTR_EXTENDED = 1, 2, 4, 8, 0x80000000

# What OpenSSH 9's sftp-server announces, and we serve (name -> version string).
EXTENSIONS = {
    "posix-rename@openssh.com": "1",
    "statvfs@openssh.com": "2",
    "fstatvfs@openssh.com": "2",
    "hardlink@openssh.com": "1",
    "fsync@openssh.com": "1",
    "lsetstat@openssh.com": "1",
    "limits@openssh.com": "1",
    "expand-path@openssh.com": "1",
    "copy-data": "1",
    "home-directory": "1",
    "users-groups-by-id@openssh.com": "1",
}

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_HEAD = struct.Struct(">IBI")  # length, type, request id
_STATVFS = struct.Struct(">11Q")
_READ_TAIL = struct.Struct(">QI")  # offset, length
_WRITE_TAIL = struct.Struct(">QI")  # offset, the data's length


class ProtocolError(Exception):
    """The input is not an SFTP stream: nothing more can be read from it."""


class _Short(Exception):
    """A field runs past the end of its packet."""


@dataclass
class Attrs:
    """File attributes; None: not given."""

    size: int | None = None
    uid: int | None = None
    gid: int | None = None
    permissions: int | None = None
    atime: int | None = None
    mtime: int | None = None
    extended: list[tuple[bytes, bytes]] = field(default_factory=list)

    def encode(self) -> bytes:
        flags = 0
        parts = []
        if self.size is not None:
            flags |= ATTR_SIZE
            parts.append(_U64.pack(self.size & 0xFFFFFFFFFFFFFFFF))
        if self.uid is not None and self.gid is not None:
            flags |= ATTR_UIDGID
            parts.append(struct.pack(">II", self.uid & 0xFFFFFFFF, self.gid & 0xFFFFFFFF))
        if self.permissions is not None:
            flags |= ATTR_PERMISSIONS
            parts.append(_U32.pack(self.permissions & 0xFFFFFFFF))
        if self.atime is not None and self.mtime is not None:
            flags |= ATTR_ACMODTIME
            parts.append(struct.pack(">II", self.atime & 0xFFFFFFFF, self.mtime & 0xFFFFFFFF))
        if self.extended:
            flags |= ATTR_EXTENDED
            parts.append(_U32.pack(len(self.extended)))
            parts += [string(k) + string(v) for k, v in self.extended]
        return _U32.pack(flags) + b"".join(parts)


@dataclass
class Request:
    """A request; C{kind} is its packet type (or the extension's name for
    C{EXTENDED}), C{args} its fields in order (bytes, ints, L{Attrs})."""

    id: int
    kind: int | str
    args: tuple = ()


@dataclass
class Init:
    version: int
    extensions: list[tuple[bytes, bytes]]


@dataclass
class Malformed:
    """A packet that does not parse: answer C{SSH_FX_BAD_MESSAGE}."""

    id: int
    reason: str


@dataclass
class Unknown:
    """A packet type or extension we do not know: C{SSH_FX_OP_UNSUPPORTED}."""

    id: int
    what: str


Event = Request | Init | Malformed | Unknown


class _Reader:
    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes | bytearray | memoryview, pos: int, end: int) -> None:
        self.data, self.pos, self.end = data, pos, end

    def u32(self) -> int:
        pos = self.pos
        if pos + 4 > self.end:
            raise _Short("uint32")
        self.pos = pos + 4
        return _U32.unpack_from(self.data, pos)[0]

    def u64(self) -> int:
        pos = self.pos
        if pos + 8 > self.end:
            raise _Short("uint64")
        self.pos = pos + 8
        return _U64.unpack_from(self.data, pos)[0]

    def payload(self) -> bytearray:
        """A string as a bytearray: one copy, for data to write."""
        n = self.u32()
        pos = self.pos
        if pos + n > self.end:
            raise _Short("string")
        self.pos = pos + n
        return self.data[pos : pos + n]  # type: ignore[return-value]

    def string(self) -> bytes:
        n = self.u32()
        pos = self.pos
        if pos + n > self.end:
            raise _Short("string")
        self.pos = pos + n
        return bytes(self.data[pos : pos + n])

    def attrs(self) -> Attrs:
        flags = self.u32()
        a = Attrs()
        if flags & ATTR_SIZE:
            a.size = self.u64()
        if flags & ATTR_UIDGID:
            a.uid, a.gid = self.u32(), self.u32()
        if flags & ATTR_PERMISSIONS:
            a.permissions = self.u32()
        if flags & ATTR_ACMODTIME:
            a.atime, a.mtime = self.u32(), self.u32()
        if flags & ATTR_EXTENDED:
            count = self.u32()
            if count > (self.end - self.pos) // 8:
                raise _Short("extended attributes")
            a.extended = [(self.string(), self.string()) for _ in range(count)]
        return a


# The fields of each request after its id: s string, u uint32, q uint64, a attrs,
# d a string of data (a bytearray).
_LAYOUT: dict[int, str] = {
    OPEN: "sua",
    CLOSE: "s",
    READ: "squ",
    WRITE: "sqd",
    LSTAT: "s",
    FSTAT: "s",
    SETSTAT: "sa",
    FSETSTAT: "sa",
    OPENDIR: "s",
    READDIR: "s",
    REMOVE: "s",
    MKDIR: "sa",
    RMDIR: "s",
    REALPATH: "s",
    STAT: "s",
    RENAME: "ss",
    READLINK: "s",
    SYMLINK: "ss",
}
_EXTENDED_LAYOUT: dict[str, str] = {
    "posix-rename@openssh.com": "ss",
    "statvfs@openssh.com": "s",
    "fstatvfs@openssh.com": "s",
    "hardlink@openssh.com": "ss",
    "fsync@openssh.com": "s",
    "lsetstat@openssh.com": "sa",
    "limits@openssh.com": "",
    "expand-path@openssh.com": "s",
    "copy-data": "sqqsq",
    "home-directory": "s",
    "users-groups-by-id@openssh.com": "ss",
}
_NAMES = {
    OPEN: "open",
    CLOSE: "close",
    READ: "read",
    WRITE: "write",
    LSTAT: "lstat",
    FSTAT: "fstat",
    SETSTAT: "setstat",
    FSETSTAT: "fsetstat",
    OPENDIR: "opendir",
    READDIR: "readdir",
    REMOVE: "remove",
    MKDIR: "mkdir",
    RMDIR: "rmdir",
    REALPATH: "realpath",
    STAT: "stat",
    RENAME: "rename",
    READLINK: "readlink",
    SYMLINK: "symlink",
}


def _fields(r: _Reader, layout: str) -> tuple:
    out: list = []
    for kind in layout:
        if kind == "s":
            out.append(r.string())
        elif kind == "u":
            out.append(r.u32())
        elif kind == "q":
            out.append(r.u64())
        elif kind == "d":
            out.append(r.payload())
        else:
            out.append(r.attrs())
    return tuple(out)


class Decoder:
    """The server's side of the stream: requests from the bytes it reads."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self._buffer = bytearray()
        self._max = max_packet
        self.initialised = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """The complete packets now buffered, decoded.

        @raise ProtocolError: the stream cannot go on.
        """
        buffer = self._buffer
        buffer += data
        events: list[Event] = []
        pos, size = 0, len(buffer)
        while size - pos >= 4:
            length = _U32.unpack_from(buffer, pos)[0]
            if length < 1 or length > self._max:
                raise ProtocolError(f"bad packet length {length}")
            if size - pos - 4 < length:
                break
            events.append(self._packet(buffer, pos + 4, pos + 4 + length))
            pos += 4 + length
        if pos:
            del buffer[:pos]
        return events

    def _packet(self, buffer: bytearray, start: int, end: int) -> Event:
        kind = buffer[start]
        if not self.initialised:
            if kind != INIT:
                raise ProtocolError(f"packet type {kind} before SSH_FXP_INIT")
            r = _Reader(buffer, start + 1, end)
            try:
                version = r.u32()
                extensions = []
                while r.pos < end:
                    extensions.append((r.string(), r.string()))
            except _Short as e:
                raise ProtocolError(f"malformed SSH_FXP_INIT: truncated {e}") from None
            self.initialised = True
            return Init(version, extensions)
        if end - start < 5:
            raise ProtocolError(f"packet of type {kind} too short for a request id")
        request_id = _U32.unpack_from(buffer, start + 1)[0]
        if kind in (WRITE, READ):  # the bulk of a transfer: no general parsing
            fast = self._bulk(buffer, kind, request_id, start + 5, end)
            if fast is not None:
                return fast
        r = _Reader(buffer, start + 5, end)
        layout = _LAYOUT.get(kind)
        name: int | str = kind
        try:
            if layout is None:
                if kind != EXTENDED:
                    return Unknown(request_id, f"packet type {kind}")
                extension = r.string().decode("utf-8", "replace")
                layout = _EXTENDED_LAYOUT.get(extension)
                if layout is None:
                    return Unknown(request_id, f"extension {extension!r}")
                name = extension
            args = _fields(r, layout)
        except _Short as e:
            return Malformed(request_id, f"{_describe(name)}: truncated {e}")
        if r.pos != end:
            return Malformed(request_id, f"{_describe(name)}: {end - r.pos} bytes too many")
        return Request(request_id, name, args)

    @staticmethod
    def _bulk(buffer: bytearray, kind: int, request_id: int, pos: int, end: int) -> Request | None:
        """A well-formed READ or WRITE (None: let the general parser say what is wrong)."""
        if pos + 4 > end:
            return None
        n = _U32.unpack_from(buffer, pos)[0]
        pos += 4
        if kind == READ:
            if pos + n + 12 != end:
                return None
            offset, length = _READ_TAIL.unpack_from(buffer, pos + n)
            return Request(request_id, READ, (bytes(buffer[pos : pos + n]), offset, length))
        if pos + n + 12 > end:
            return None
        offset, size = _WRITE_TAIL.unpack_from(buffer, pos + n)
        start = pos + n + 12
        if start + size != end:
            return None
        return Request(request_id, WRITE, (bytes(buffer[pos : pos + n]), offset, buffer[start:end]))


def _describe(kind: int | str) -> str:
    return kind if isinstance(kind, str) else _NAMES.get(kind, str(kind))


# Replies.


def string(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data


def _packet(kind: int, request_id: int, body: bytes) -> bytes:
    return _HEAD.pack(len(body) + 5, kind, request_id) + body


def version(extensions: dict[str, str] = EXTENSIONS) -> bytes:
    body = b"".join(string(k.encode()) + string(v.encode()) for k, v in extensions.items())
    return struct.pack(">IBI", len(body) + 5, VERSION_PACKET, VERSION) + body


def status(request_id: int, code: int, message: str = "") -> bytes:
    return _packet(STATUS, request_id, _U32.pack(code) + string(message.encode("utf-8", "replace")) + string(b""))


def handle(request_id: int, value: bytes) -> bytes:
    return _packet(HANDLE, request_id, string(value))


def data_header(request_id: int, length: int) -> bytes:
    """The head of an C{SSH_FXP_DATA} reply whose C{length} bytes follow
    (written after it as they are, without a copy)."""
    return struct.pack(">IBII", length + 9, DATA, request_id, length)


def data(request_id: int, payload: bytes) -> bytes:
    return data_header(request_id, len(payload)) + payload


def name(request_id: int, entries: list[tuple[bytes, bytes, Attrs]]) -> bytes:
    body = [_U32.pack(len(entries))]
    body += [string(filename) + string(longname) + attrs.encode() for filename, longname, attrs in entries]
    return _packet(NAME, request_id, b"".join(body))


def attrs(request_id: int, value: Attrs) -> bytes:
    return _packet(ATTRS, request_id, value.encode())


def extended_reply(request_id: int, body: bytes) -> bytes:
    return _packet(EXTENDED_REPLY, request_id, body)


def statvfs_reply(request_id: int, values: tuple[int, ...]) -> bytes:
    """bsize, frsize, blocks, bfree, bavail, files, ffree, favail, fsid, flag, namemax."""
    return extended_reply(request_id, _STATVFS.pack(*(v & 0xFFFFFFFFFFFFFFFF for v in values)))


def limits_reply(request_id: int, packet: int, read: int, write: int, handles: int) -> bytes:
    return extended_reply(request_id, struct.pack(">4Q", packet, read, write, handles))


def names_reply(request_id: int, users: list[bytes], groups: list[bytes]) -> bytes:
    """users-groups-by-id@openssh.com: two strings, each of strings."""
    return extended_reply(
        request_id, string(b"".join(string(u) for u in users)) + string(b"".join(string(g) for g in groups))
    )


def ids(packed: bytes) -> list[int] | None:
    """The uint32s of users-groups-by-id's arguments; None if malformed."""
    if len(packed) % 4:
        return None
    return list(struct.unpack(f">{len(packed) // 4}I", packed))
