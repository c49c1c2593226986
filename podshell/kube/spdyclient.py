"""The client side of a SPDY/3.1 channel stream (C{v4.channel.k8s.io}):
what a kubelet dials on a CRI runtime's streaming server, and what podshell
dials there too, because v4 over WebSocket cannot close stdin on its own
and v4 over SPDY can (a FIN on the stdin stream).

The upgrade is HTTP/1.1 on h11, the frames the sans-IO core's
(L{podshell.protocols.spdy}).  One stream per channel; the app is the same
L{podshell.kube.wsclient.ChannelProcess} a WebSocket stream feeds, so only
the framing differs: its channel messages are mapped to streams both ways.
"""

from __future__ import annotations

from typing import cast

import h11
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure

from podshell.core.addresses import set_keepalive, set_no_delay
from podshell.core.transports import StreamTransport
from podshell.kube.spdy import StreamType
from podshell.kube.wsclient import MAX_REJECTION, ChannelProcess, status_message
from podshell.protocols import remotecommand as rc
from podshell.protocols import spdy

# The channel each stream type carries, as the app's messages number them.
_CHANNELS = {
    StreamType.STDIN: rc.STDIN,
    StreamType.STDOUT: rc.STDOUT,
    StreamType.STDERR: rc.STDERR,
    StreamType.ERROR: rc.ERROR,
    StreamType.RESIZE: rc.RESIZE,
}


class ClientSpdy(Protocol):
    """A v4 SPDY stream to C{target} on C{host}, with the streams
    C{wanted} (the error stream always).  The app sees it as it sees a
    WebSocket endpoint: C{opened}, channel messages, C{closed}; what it
    sends goes on the stream of its channel, and closing stdin is a FIN.

    The final status is passed on only once stdout and stderr have ended
    too: they are separate streams, and the runtime writes the status when
    its process exits, while the last output may still be on its way."""

    def __init__(self, host: str, target: str, wanted: list[StreamType], app: ChannelProcess, peer: str) -> None:
        self.app = app
        self.peer = peer
        self.wanted = [StreamType.ERROR, *(w for w in wanted if w is not StreamType.ERROR)]
        self.http = h11.Connection(h11.CLIENT)
        self.request = h11.Request(
            method="POST",
            target=target,
            headers=[
                ("Host", host),
                ("Connection", "Upgrade"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", rc.V4),
                ("Content-Length", "0"),
            ],
        )
        self.core: spdy.SpdyConnection | None = None
        self.streams: dict[StreamType, int] = {}
        self._kinds: dict[int, StreamType] = {}
        self._unanswered: set[int] = set()
        self._open_output: set[int] = set()  # stdout and stderr streams not yet ended
        self._error = bytearray()
        self._status: bytes | None = None
        self._rejection: list[bytes] = []
        self._rejected: int | None = None
        self.done = False
        self.opened = False

    @property
    def tcp(self) -> StreamTransport:
        assert self.transport is not None, "connected"
        return cast(StreamTransport, self.transport)

    def connectionMade(self) -> None:
        set_no_delay(self.transport)
        set_keepalive(self.transport)
        self.tcp.write(self.http.send(self.request) + self.http.send(h11.EndOfMessage()))

    def dataReceived(self, data: bytes) -> None:
        if self.core is not None:
            self._frames(data)
            return
        try:
            self.http.receive_data(data)
            self._handshake()
        except h11.RemoteProtocolError as e:
            self.fail(f"{self.peer} answered with a bad handshake: {e}")

    def _handshake(self) -> None:
        while self.core is None and not self.done:
            event = self.http.next_event()
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                self._upgraded(self.http.trailing_data[0])
                return
            if isinstance(event, h11.Response):
                self._rejected = event.status_code
            elif isinstance(event, h11.Data):
                self._rejection.append(bytes(event.data))
                if sum(map(len, self._rejection)) > MAX_REJECTION:
                    self._refused()
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                self._refused()

    def _refused(self) -> None:
        body = b"".join(self._rejection)
        if body:
            self.fail(status_message(body, self.peer))
        else:
            self.fail(f"{self.peer} refused the stream (HTTP {self._rejected})")

    def _upgraded(self, rest: bytes) -> None:
        core = self.core = spdy.SpdyConnection(client=True)
        for kind in self.wanted:
            stream = core.open_stream({"streamtype": kind.value})
            self.streams[kind] = stream
            self._kinds[stream] = kind
            self._unanswered.add(stream)
            if kind in (StreamType.STDOUT, StreamType.STDERR):
                self._open_output.add(stream)
        self._flush()
        if rest:
            self._frames(rest)

    def _frames(self, data: bytes) -> None:
        assert self.core is not None
        for event in self.core.receive_data(data):
            if isinstance(event, spdy.SynReply):
                self._unanswered.discard(event.stream_id)
                if not self._unanswered and not self.opened:
                    self.opened = True
                    self.app.opened(self)
            elif isinstance(event, spdy.Data):
                self._data(event)
            elif isinstance(event, spdy.StreamReset):
                self._ended(event.stream_id)
            elif isinstance(event, spdy.ConnectionBroken):
                self.fail(f"{self.peer} broke the SPDY stream: {event.reason}")
            elif isinstance(event, spdy.GoAway):
                self.tcp.loseConnection()
        self._flush()

    def _data(self, event: spdy.Data) -> None:
        kind = self._kinds.get(event.stream_id)
        if kind is StreamType.ERROR:
            self._error += event.data
            if len(self._error) > MAX_REJECTION:
                self.fail(f"{self.peer} sent a status too long to read")
                return
        elif kind is not None and event.data:
            self.app.messageReceived(bytes((_CHANNELS[kind],)) + event.data, False)
        if event.fin:
            self._ended(event.stream_id)

    def _ended(self, stream: int) -> None:
        """A stream the runtime finished (or reset): the status goes to the
        app once it and the output are all in."""
        if self._kinds.get(stream) is StreamType.ERROR and self._status is None:
            self._status = bytes(self._error)
        self._open_output.discard(stream)
        if self._status is not None and not self._open_output:
            status, self._status = self._status, b""
            if status:
                self.app.messageReceived(bytes((rc.ERROR,)) + status, False)

    # What the app sends, as it would send it on a WebSocket.
    def send(self, message: bytes) -> None:
        if self.core is None or self.core.closed or not message:
            return
        channel, data = message[0], message[1:]
        if channel == rc.CLOSE:
            stream = self.streams.get(StreamType.STDIN)
            if data == bytes((rc.STDIN,)) and stream is not None and self.core.is_open(stream):
                self.core.send_data(stream, b"", fin=True)
                self.streams.pop(StreamType.STDIN)
        else:
            kind = next((k for k, c in _CHANNELS.items() if c == channel), None)
            stream = self.streams.get(kind) if kind in (StreamType.STDIN, StreamType.RESIZE) else None
            if stream is not None and self.core.is_open(stream):
                self.core.send_data(stream, data)
            # v4 has no signal stream: the caller signals by other means
        self._flush()

    def close(self, code: int = 1000) -> None:
        """Go: say so (GOAWAY) and drop the connection; the runtime ends
        the attachment (or hangs its command up)."""
        if self.core is not None:
            self.core.go_away()
            self._flush()
        if self.transport is not None:
            self.tcp.unregisterProducer()
            self.tcp.loseConnection()

    def _flush(self) -> None:
        if self.core is not None and self.transport is not None:
            out = self.core.data_to_send()
            if out:
                self.tcp.write(out)

    def fail(self, message: str) -> None:
        """The stream did not open, or broke: say why, once."""
        if not self.done:
            self.done = True
            self.app.failed(message)
        if self.transport is not None:
            self.tcp.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.done:
            return
        self.done = True
        if self.opened:
            if self._status:  # the status came, some output stream never ended
                self.app.messageReceived(bytes((rc.ERROR,)) + self._status, False)
            self.app.closed()
        else:
            self.app.failed(f"{self.peer} closed before answering: {reason.getErrorMessage()}")
