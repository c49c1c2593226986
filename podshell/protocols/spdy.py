"""SPDY/3.1 as Kubernetes speaks it (moby/spdystream): a sans-IO core.

Bytes go in through L{SpdyConnection.receive_data}, events come out; frames
to send accumulate until L{SpdyConnection.data_to_send}.  Both ends use it:
the API server (exec, attach, port-forward) and the native CLI.

What differs from a textbook SPDY/3.1 peer, on purpose:
  - no flow-control windows: spdystream never sends WINDOW_UPDATE, so a
    sender that honoured the 64 KiB window would stall forever; received
    SETTINGS and WINDOW_UPDATE are accepted and ignored;
  - a peer's PING is echoed at once (kubectl sends one every 5 s);
  - header blocks share one zlib stream per direction, with the SPDY/3
    dictionary, and are bounded both compressed and inflated (a 1 KiB
    block must not become a gigabyte);
  - DATA payloads are passed on as they arrive rather than buffered to the
    frame's end, so a 16 MiB frame costs no more memory than a small one.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from importlib.resources import files

VERSION = 3
MAX_DATA_CHUNK = 32 * 1024  # what we put in one DATA frame
MAX_CONTROL = 256 * 1024  # the largest control frame we accept
MAX_HEADERS = 256 * 1024  # the largest inflated header block we accept
MAX_STREAMS = 1024  # concurrent streams a peer may have open

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02


def _dictionary() -> bytes:
    data = files(__package__).joinpath("spdy3_dict.bin").read_bytes()
    if len(data) != 1423 or zlib.adler32(data) != 0xE3C6A7C2:
        raise RuntimeError("the SPDY/3 header dictionary is damaged")
    return data


DICTIONARY = _dictionary()


class FrameType(IntEnum):
    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    NOOP = 5
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class Status(IntEnum):
    """RST_STREAM status codes."""

    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    FRAME_TOO_LARGE = 11


class GoAwayStatus(IntEnum):
    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class ProtocolError(Exception):
    """What the peer sent breaks the connection's framing or compression."""


class LocalProtocolError(Exception):
    """What we were asked to send breaks SPDY (a bug in the caller, as
    wsproto and h2 raise it): nothing is queued."""


Headers = dict[str, str]  # several values of one name are joined with NUL


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers
    fin: bool = False
    unidirectional: bool = False


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True)
class HeadersReceived:
    stream_id: int
    headers: Headers
    fin: bool = False


@dataclass(frozen=True)
class Data:
    """Part of a DATA frame's payload; C{fin} only on the frame's last part."""

    stream_id: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True)
class StreamReset:
    """The peer reset a stream (or we did, because of what it sent)."""

    stream_id: int
    status: int
    by_peer: bool = True


@dataclass(frozen=True)
class PingAcknowledged:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_stream_id: int
    status: int


@dataclass(frozen=True)
class ConnectionBroken:
    """Always the last event: the peer broke the protocol, a GOAWAY saying so
    is queued, and nothing more will be read."""

    reason: str


Event = SynStream | SynReply | HeadersReceived | Data | StreamReset | PingAcknowledged | GoAway | ConnectionBroken


@dataclass
class _Stream:
    local_closed: bool = False
    remote_closed: bool = False
    replied: bool = True  # a stream the peer opened waits for our SYN_REPLY


@dataclass
class _Frame:
    """The frame being read: its header, then (for control frames) its body."""

    control: bool
    kind: int  # control type, or stream id for DATA
    flags: int
    length: int
    body: bytearray = field(default_factory=bytearray)


class SpdyConnection:
    """One SPDY/3.1 connection, either end."""

    def __init__(self, client: bool, max_streams: int = MAX_STREAMS) -> None:
        """C{max_streams}: streams the peer may have open at once; one more is
        refused with RST_STREAM REFUSED_STREAM."""
        self.client = client
        self.max_streams = max_streams
        self._next_id = 1 if client else 2
        self._next_ping = 1 if client else 2
        self._last_peer_id = 0
        self._streams: dict[int, _Stream] = {}
        self._buffer = bytearray()
        self._frame: _Frame | None = None
        self._out: list[bytes | memoryview] = []  # joined once per data_to_send
        self._deflate = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, DICTIONARY)
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self.closed = False  # after a fatal error or a GOAWAY either way
        self._broken = False  # after a fatal error: nothing more is read

    # Output.
    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def open_stream(self, headers: Headers, fin: bool = False) -> int:
        """Send SYN_STREAM; returns the new stream's id."""
        if self.closed:
            raise LocalProtocolError("no new stream after a GOAWAY")
        stream_id = self._next_id
        self._next_id += 2
        self._streams[stream_id] = _Stream(local_closed=fin)
        block = self._compress(headers)
        payload = struct.pack(">IIBB", stream_id, 0, 0, 0) + block
        self._control(FrameType.SYN_STREAM, FLAG_FIN if fin else 0, payload)
        return stream_id

    def reply(self, stream_id: int, headers: Headers | None = None, fin: bool = False) -> None:
        """Send SYN_REPLY to a stream the peer opened."""
        stream = self._streams.get(stream_id)
        if stream is None or stream_id % 2 == self._next_id % 2:
            raise LocalProtocolError(f"stream {stream_id} is not one the peer opened and still has")
        if stream.replied:
            raise LocalProtocolError(f"stream {stream_id} was replied to already, or is unidirectional")
        stream.replied = True
        self._control(
            FrameType.SYN_REPLY, FLAG_FIN if fin else 0, struct.pack(">I", stream_id) + self._compress(headers or {})
        )
        if fin:
            self._local_close(stream_id)

    def send_data(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        """Send DATA frames of at most L{MAX_DATA_CHUNK} bytes (with FIN on the last)."""
        self._sendable(stream_id)
        view = memoryview(data)
        while len(view) > MAX_DATA_CHUNK:
            self._data_frame(stream_id, 0, view[:MAX_DATA_CHUNK])
            view = view[MAX_DATA_CHUNK:]
        if len(view) or fin:
            self._data_frame(stream_id, FLAG_FIN if fin else 0, view)
        if fin:
            self._local_close(stream_id)

    def reset(self, stream_id: int, status: int = Status.CANCEL) -> None:
        self._out.append(struct.pack(">HHBBHII", 0x8000 | VERSION, FrameType.RST_STREAM, 0, 0, 8, stream_id, status))
        self._streams.pop(stream_id, None)

    def ping(self) -> int:
        ping_id = self._next_ping
        self._next_ping += 2
        self._control(FrameType.PING, 0, struct.pack(">I", ping_id))
        return ping_id

    def go_away(self, status: int = GoAwayStatus.OK) -> None:
        if not self.closed:
            self._control(FrameType.GOAWAY, 0, struct.pack(">II", self._last_peer_id, status))
            self.closed = True

    def is_open(self, stream_id: int) -> bool:
        """Whether the stream is still there: neither reset nor closed both ways."""
        return stream_id in self._streams

    def _sendable(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is None:
            raise LocalProtocolError(f"stream {stream_id} is not open (never opened, reset, or closed)")
        if stream.local_closed:
            raise LocalProtocolError(f"stream {stream_id} is closed on our side (FIN sent, or unidirectional)")
        if not stream.replied:
            raise LocalProtocolError(f"stream {stream_id} needs our SYN_REPLY before data")

    def _data_frame(self, stream_id: int, flags: int, payload: memoryview | bytes) -> None:
        self._out.append(struct.pack(">IB", stream_id & 0x7FFFFFFF, flags) + len(payload).to_bytes(3, "big"))
        self._out.append(payload)  # a view of the caller's bytes: copied once, by the join

    def _control(self, kind: int, flags: int, payload: bytes) -> None:
        self._out.append(struct.pack(">HHB", 0x8000 | VERSION, kind, flags) + len(payload).to_bytes(3, "big") + payload)

    def _compress(self, headers: Headers) -> bytes:
        raw = bytearray(struct.pack(">I", len(headers)))
        for name, value in headers.items():
            key = name.lower().encode()  # spdystream refuses upper case
            data = value.encode()
            raw += struct.pack(">I", len(key)) + key + struct.pack(">I", len(data)) + data
        return self._deflate.compress(bytes(raw)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def _local_close(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.local_closed = True
            if stream.remote_closed:
                del self._streams[stream_id]

    def _remote_close(self, stream_id: int) -> None:
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.remote_closed = True
            if stream.local_closed:
                del self._streams[stream_id]

    # Input.
    def receive_data(self, data: bytes) -> list[Event]:
        """Parse what arrived; a broken peer ends the list with L{ConnectionBroken}."""
        if self._broken:
            return []
        self._buffer += data
        events: list[Event] = []
        try:
            self._parse(events)
        except ProtocolError as e:
            self.go_away(GoAwayStatus.PROTOCOL_ERROR)
            self._broken = True
            self._buffer.clear()
            events.append(ConnectionBroken(str(e)))
        return events

    def _parse(self, events: list[Event]) -> None:
        while True:
            frame = self._frame
            if frame is None:
                if len(self._buffer) < 8:
                    return
                first, flags, length = struct.unpack(">IB3s", self._buffer[:8])
                length = int.from_bytes(length, "big")
                del self._buffer[:8]
                if first & 0x80000000:
                    version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
                    if version != VERSION:
                        raise ProtocolError(f"SPDY version {version} is not supported (only 3)")
                    if length > MAX_CONTROL:
                        raise ProtocolError(f"control frame of {length} bytes is too large")
                    frame = self._frame = _Frame(True, kind, flags, length)
                else:
                    frame = self._frame = _Frame(False, first, flags, length)
                    if first == 0:
                        raise ProtocolError("DATA frame on stream 0")
                    if length == 0:
                        self._frame = None
                        self._on_data(frame.kind, b"", bool(flags & FLAG_FIN), events)
                        continue
            if not frame.control:
                take = min(len(self._buffer), frame.length)
                if not take:
                    return
                with memoryview(self._buffer) as view:
                    chunk = bytes(view[:take])  # one copy, not two
                del self._buffer[:take]
                frame.length -= take
                last = frame.length == 0
                if last:
                    self._frame = None
                self._on_data(frame.kind, chunk, last and bool(frame.flags & FLAG_FIN), events)
                continue
            need = frame.length - len(frame.body)
            frame.body += self._buffer[:need]
            del self._buffer[:need]
            if len(frame.body) < frame.length:
                return
            self._frame = None
            self._on_control(frame, bytes(frame.body), events)

    def _on_data(self, stream_id: int, data: bytes, fin: bool, events: list[Event]) -> None:
        stream = self._streams.get(stream_id)
        if stream is None or stream.remote_closed:
            # Late data for a stream that was reset is normal; after a FIN it is not.
            if (data or fin) and stream is not None:
                self.reset(stream_id, Status.STREAM_ALREADY_CLOSED)
                events.append(StreamReset(stream_id, Status.STREAM_ALREADY_CLOSED, by_peer=False))
            return
        if fin:
            self._remote_close(stream_id)
        events.append(Data(stream_id, data, fin))

    def _on_control(self, frame: _Frame, body: bytes, events: list[Event]) -> None:
        kind, fin = frame.kind, bool(frame.flags & FLAG_FIN)
        if kind == FrameType.SYN_STREAM:
            if len(body) < 10:
                raise ProtocolError("SYN_STREAM too short")
            stream_id = struct.unpack(">I", body[:4])[0] & 0x7FFFFFFF
            headers = self._headers(body[10:])
            self._on_syn_stream(stream_id, headers, fin, bool(frame.flags & FLAG_UNIDIRECTIONAL), events)
        elif kind in (FrameType.SYN_REPLY, FrameType.HEADERS):
            if len(body) < 4:
                raise ProtocolError(f"{FrameType(kind).name} too short")
            stream_id = struct.unpack(">I", body[:4])[0] & 0x7FFFFFFF
            headers = self._headers(body[4:])
            if stream_id not in self._streams:
                return  # for a stream already gone: nothing to tell
            if fin:
                self._remote_close(stream_id)
            cls = SynReply if kind == FrameType.SYN_REPLY else HeadersReceived
            events.append(cls(stream_id, headers, fin))
        elif kind == FrameType.RST_STREAM:
            stream_id, status = self._fixed(body, "RST_STREAM")
            stream_id &= 0x7FFFFFFF
            if self._streams.pop(stream_id, None) is not None:
                events.append(StreamReset(stream_id, status))
        elif kind == FrameType.PING:
            if len(body) != 4:
                raise ProtocolError("PING must carry exactly 4 bytes")
            (ping_id,) = struct.unpack(">I", body)
            if ping_id % 2 == self._next_ping % 2:
                events.append(PingAcknowledged(ping_id))
            else:
                self._control(FrameType.PING, 0, body)  # echo the peer's, at once
        elif kind == FrameType.GOAWAY:
            last, status = self._fixed(body, "GOAWAY")
            self.closed = True
            events.append(GoAway(last & 0x7FFFFFFF, status))
        elif kind == FrameType.SETTINGS:
            if len(body) < 4 or len(body) != 4 + 8 * struct.unpack(">I", body[:4])[0]:
                raise ProtocolError("SETTINGS length does not match its count")
        elif kind == FrameType.WINDOW_UPDATE:
            self._fixed(body, "WINDOW_UPDATE")
        # NOOP and unknown control types are skipped, as SPDY/3 says.

    def _on_syn_stream(self, stream_id: int, headers: Headers, fin: bool, uni: bool, events: list[Event]) -> None:
        peer_parity = 0 if self.client else 1
        if stream_id == 0 or stream_id % 2 != peer_parity or stream_id <= self._last_peer_id:
            self.reset(stream_id, Status.PROTOCOL_ERROR)
            events.append(StreamReset(stream_id, Status.PROTOCOL_ERROR, by_peer=False))
            return
        self._last_peer_id = stream_id
        if self.closed or len(self._streams) >= self.max_streams:
            self.reset(stream_id, Status.REFUSED_STREAM)
            events.append(StreamReset(stream_id, Status.REFUSED_STREAM, by_peer=False))
            return
        self._streams[stream_id] = _Stream(local_closed=uni, remote_closed=fin, replied=uni)
        events.append(SynStream(stream_id, headers, fin, uni))

    @staticmethod
    def _fixed(body: bytes, name: str) -> tuple[int, int]:
        if len(body) != 8:
            raise ProtocolError(f"{name} must carry exactly 8 bytes")
        a, b = struct.unpack(">II", body)
        return a, b

    def _headers(self, block: bytes) -> Headers:
        """Inflate and parse one header block (bounded: a bomb is an error)."""
        try:
            raw = self._inflate.decompress(block, MAX_HEADERS)
        except zlib.error as e:
            raise ProtocolError(f"header block does not decompress: {e}") from None
        if self._inflate.unconsumed_tail:
            raise ProtocolError(f"header block inflates beyond {MAX_HEADERS} bytes")
        return parse_header_block(raw)


def parse_header_block(raw: bytes) -> Headers:
    """The name/value pairs of an inflated SPDY/3 header block."""
    view = memoryview(raw)

    def take(n: int) -> bytes:
        nonlocal view
        if len(view) < n:
            raise ProtocolError("header block is truncated")
        out, view = bytes(view[:n]), view[n:]
        return out

    (count,) = struct.unpack(">I", take(4))
    if count > len(raw) // 8:
        raise ProtocolError("header block claims more pairs than it holds")
    headers: Headers = {}
    for _ in range(count):
        name = take(struct.unpack(">I", take(4))[0])
        value = take(struct.unpack(">I", take(4))[0])
        if not name:
            raise ProtocolError("header block has an empty name")
        key = name.decode("latin-1").lower()
        if key in headers:
            raise ProtocolError(f"header block repeats the name {key!r}")
        headers[key] = value.decode("latin-1")
    if view:
        raise ProtocolError("header block has bytes after its last pair")
    return headers
