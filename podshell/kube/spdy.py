"""exec, attach and port-forward over SPDY/3.1 (kubectl's long-standing
transport, and what its WebSocket port-forward tunnels).

L{SpdyServer} is the thin Twisted adapter over the sans-IO core; what the
streams mean is up to its handler: L{SpdyCommand} or L{SpdyPortForward}.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import Enum, StrEnum
from typing import Protocol as TypingProtocol
from typing import cast

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from podshell.core.addresses import host_port
from podshell.core.contracts import Session
from podshell.core.flow import FanOut, Valve
from podshell.core.keepalive import Keepalive
from podshell.core.metrics import APILimit
from podshell.core.transports import StreamTransport, abort
from podshell.kube.command import CommandSession, Start
from podshell.kube.limits import StreamLimits
from podshell.kube.portforward import Backend, Connect, failure_text, open_backend
from podshell.kube.websocket import MessageTransport, WebSocketEndpoint
from podshell.protocols import remotecommand as rc
from podshell.protocols import spdy
from podshell.protocols.remotecommand import StreamOptions

log = Logger()
STREAM_CREATION_TIMEOUT = 30.0  # what the kubelet allows a client to open its streams
CLOSE_GRACE = 5.0  # for the client to tear down after the last status


class StreamHandler(TypingProtocol):
    def streamOpened(self, stream_id: int, headers: spdy.Headers) -> None: ...

    def streamData(self, stream_id: int, data: bytes, fin: bool) -> None: ...

    def streamReset(self, stream_id: int) -> None: ...

    def connectionEnded(self) -> None: ...


class SpdyServer(Protocol):
    """Server end of one SPDY connection."""

    def __init__(
        self, reactor, make_handler: Callable[[SpdyServer], StreamHandler], limits: StreamLimits | None = None
    ) -> None:
        self.reactor = reactor
        self.limits = limits or StreamLimits()
        self.core = spdy.SpdyConnection(client=False, max_streams=self.limits.max_streams)
        self.make_handler = make_handler
        self.keepalive: Keepalive | None = None
        self.fanout = FanOut()
        self.valve: Valve | None = None
        self.handler: StreamHandler | None = None
        self._closing: IDelayedCall | None = None
        self._ended = False

    @property
    def tcp(self) -> StreamTransport:
        assert self.transport is not None, "connected"
        return cast(StreamTransport, self.transport)

    def connectionMade(self) -> None:
        # Nothing is sent until the client speaks: bytes right after the 101
        # can be lost in the Go client's response buffer.
        self.tcp.registerProducer(self.fanout, True)
        self.valve = Valve(self.tcp)
        self.handler = self.make_handler(self)
        if self.limits.keepalive is not None:
            self.keepalive = Keepalive(self.reactor, self.limits.keepalive, self._ping, self._unanswered)

    def _ping(self) -> None:
        self.core.ping()
        self.flush()

    def _unanswered(self) -> None:
        """The client answered none of our PINGs: it is gone, and what we
        would send it waits for nobody."""
        self.limits.hit(APILimit.KEEPALIVE)
        log.info("SPDY client {peer} answered no PING: dropped", peer=host_port(self.tcp.getPeer()))
        self._end()
        self.tcp.unregisterProducer()
        abort(self.tcp)

    def dataReceived(self, data: bytes) -> None:
        assert self.handler is not None
        if self.keepalive is not None:
            self.keepalive.heard()
        for event in self.core.receive_data(data):
            if isinstance(event, spdy.StreamReset) and event.status == spdy.Status.REFUSED_STREAM:
                self._refused(event)
            if isinstance(event, spdy.SynStream) and event.unidirectional:
                # Every Kubernetes stream is answered on; one we could not answer is refused.
                self.core.reset(event.stream_id, spdy.Status.PROTOCOL_ERROR)
            elif isinstance(event, spdy.SynStream):
                self.handler.streamOpened(event.stream_id, event.headers)
            elif isinstance(event, spdy.Data):
                self.handler.streamData(event.stream_id, event.data, event.fin)
            elif isinstance(event, spdy.StreamReset):
                self.handler.streamReset(event.stream_id)
            elif isinstance(event, spdy.GoAway):
                self._end()
                self.close()
            elif isinstance(event, spdy.ConnectionBroken):
                log.info("SPDY client {peer} broke the protocol: {why}", peer=self.tcp.getPeer(), why=event.reason)
                self._end()
                self.close()
        self.flush()

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        if self.keepalive is not None:
            self.keepalive.stop()
        self._end()

    def _refused(self, event: spdy.StreamReset) -> None:
        """The core refused a stream over C{max_streams} (RST_STREAM says only
        REFUSED_STREAM): counted, and said in the log."""
        if not event.by_peer and not self.core.closed:
            self.limits.hit(APILimit.MAX_STREAMS)
            log.warn(
                "SPDY client {peer}: refused stream {id}: {n} streams open already (api.max_streams)",
                peer=host_port(self.tcp.getPeer()),
                id=event.stream_id,
                n=self.limits.max_streams,
            )

    def _end(self) -> None:
        if not self._ended and self.handler is not None:
            self._ended = True
            self.handler.connectionEnded()

    # For handlers.
    def reply(self, stream_id: int) -> None:
        """Answer a stream, unless the client reset it already: a reset that
        came in the same read as the stream is parsed before we answer."""
        if self.core.is_open(stream_id):
            self.core.reply(stream_id)
            self.flush()

    def send(self, stream_id: int, data: bytes, fin: bool = False) -> None:
        """Send on a stream of ours, unless the client reset it meanwhile
        (then what we had to say is nobody's)."""
        if self.core.is_open(stream_id):
            self.core.send_data(stream_id, data, fin)
            self.flush()

    def reset(self, stream_id: int, status: int = spdy.Status.CANCEL) -> None:
        self.core.reset(stream_id, status)
        self.flush()

    def close_soon(self) -> None:
        """All is said: the client closes now; if it does not, we do."""
        if self._closing is None:
            self._closing = self.reactor.callLater(CLOSE_GRACE, self.close)

    def close(self) -> None:
        """GOAWAY (unless already said), then close once what is queued is sent."""
        self.core.go_away()
        self.flush()
        if self.transport is not None:
            self.tcp.unregisterProducer()  # a transport with a producer would wait for it
            self.tcp.loseConnection()

    def flush(self) -> None:
        out = self.core.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)


class StreamType(StrEnum):
    """A Kubernetes SPDY stream's C{streamtype} header."""

    ERROR = "error"
    STDIN = "stdin"
    STDOUT = "stdout"
    STDERR = "stderr"
    RESIZE = "resize"
    DATA = "data"  # port-forward's bytes


def stream_type(headers: spdy.Headers) -> StreamType | None:
    """The stream's type; None for one we do not know."""
    try:
        return StreamType(headers.get("streamtype", ""))
    except ValueError:
        return None


_STREAM_TYPES = {rc.STDOUT: StreamType.STDOUT, rc.STDERR: StreamType.STDERR, rc.ERROR: StreamType.ERROR}


class Phase(Enum):
    """Where an exec or attach over SPDY is."""

    OPENING = "opening"  # waiting for the client's streams
    RUNNING = "running"
    FINISHED = "finished"  # our streams have their FIN: nothing more is said


class SpdyCommand:
    """exec or attach: one stream per kind (error, stdin, stdout, stderr,
    resize), named by its C{streamtype} header, each answered at once; the
    command starts when the set the query asked for is complete."""

    def __init__(
        self,
        server: SpdyServer,
        protocol: str,
        options: StreamOptions,
        audit: Session,
        command: list[str] | None,
        start: Start,
    ) -> None:
        self.server = server
        self.session = CommandSession(self, protocol, options, audit, command)
        self.start = start
        self.expected = {StreamType.ERROR}
        for name, wanted in (
            (StreamType.STDIN, options.stdin),
            (StreamType.STDOUT, options.stdout),
            (StreamType.STDERR, options.stderr),
        ):
            if wanted:
                self.expected.add(name)
        if options.tty and protocol not in (rc.V1, rc.V2):
            self.expected.add(StreamType.RESIZE)
        self.ids: dict[StreamType, int] = {}
        self.kinds: dict[int, StreamType] = {}
        self.phase = Phase.OPENING
        self.timer = server.reactor.callLater(STREAM_CREATION_TIMEOUT, self._timeout)

    def streamOpened(self, stream_id: int, headers: spdy.Headers) -> None:
        kind = stream_type(headers)
        if kind in self.ids:
            self.server.reset(stream_id, spdy.Status.PROTOCOL_ERROR)
            return
        self.server.reply(stream_id)
        if kind is None or kind not in self.expected:
            log.info("ignoring an exec stream of type {kind!r}", kind=headers.get("streamtype", ""))
            return
        self.ids[kind] = stream_id
        self.kinds[stream_id] = kind
        if self.phase is Phase.OPENING and self.expected <= self.ids.keys():
            self.phase = Phase.RUNNING
            self.timer.cancel()
            assert self.server.valve is not None
            self.session.begin(self.start, self.server.fanout, self.server.valve)

    def streamData(self, stream_id: int, data: bytes, fin: bool) -> None:
        kind = self.kinds.get(stream_id)
        if kind is StreamType.STDIN:
            if data:
                self.session.stdin(data)
            if fin:
                self.session.stdin_closed()
        elif kind is StreamType.RESIZE and data:
            try:
                self.session.resize(data)
            except ValueError as e:
                self.session.fail(f"bad resize message: {e}")

    def streamReset(self, stream_id: int) -> None:
        if self.kinds.get(stream_id) is StreamType.STDIN:
            self.session.stdin_closed()

    def connectionEnded(self) -> None:
        if self.timer.active():
            self.timer.cancel()
        self.session.client_gone()

    def _timeout(self) -> None:
        missing = ", ".join(sorted(self.expected - self.ids.keys()))
        if StreamType.ERROR in self.ids:
            self.session.fail(f"timed out waiting for the client to create streams ({missing})")
        else:
            self.server.close()

    # Output
    def send(self, channel: int, data: bytes) -> None:
        """What the target says after the session ended (it may still be
        writing when a failure ends it) is dropped."""
        stream_id = self.ids.get(_STREAM_TYPES[channel])
        if stream_id is not None and self.phase is not Phase.FINISHED:
            self.server.send(stream_id, data)

    def finish(self) -> None:
        if self.phase is Phase.FINISHED:
            return
        self.phase = Phase.FINISHED
        for name in (StreamType.STDOUT, StreamType.STDERR, StreamType.ERROR):
            if name in self.ids:
                self.server.send(self.ids[name], b"", fin=True)
        self.server.close_soon()


class PairState(Enum):
    """Where one forwarded connection is."""

    OPENING = "opening"  # waiting for its other stream
    CONNECTING = "connecting"  # both streams are here; the pod's port is being connected to
    OPEN = "open"
    ENDED = "ended"  # both streams have our FIN (or are gone): nothing more is sent


@dataclass
class _Pair:
    """One forwarded connection: an error stream and a data stream."""

    request: str
    port: int
    error: int | None = None
    data: int | None = None
    state: PairState = PairState.OPENING
    backend: Backend | None = None  # while OPEN
    pending: list[bytes] = field(default_factory=list)  # from the client while CONNECTING
    client_done: bool = False  # the client's FIN came while CONNECTING
    timer: IDelayedCall | None = None  # while OPENING


_CONNECTED = (PairState.CONNECTING, PairState.OPEN)


class SpdyPortForward:
    """Port-forward: streams come in pairs (error, data) keyed by
    C{requestid}; each pair is one TCP connection to a port in the pod."""

    def __init__(self, server: SpdyServer, connect: Connect, pod: str, audit: Session, report_errors: bool) -> None:
        self.server = server
        self.connect = connect
        self.pod = pod
        self.audit = audit
        # kubectl 1.23+ ends the whole forward on any error text; for it a
        # failed connection is closed silently (and logged here) instead.
        self.report_errors = report_errors
        self.pairs: dict[str, _Pair] = {}
        self.streams: dict[int, _Pair] = {}
        self.moved = [0, 0]

    def streamOpened(self, stream_id: int, headers: spdy.Headers) -> None:
        kind, port = stream_type(headers), headers.get("port", "")
        if kind not in (StreamType.ERROR, StreamType.DATA) or not port.isdigit() or not 0 < int(port) < 65536:
            log.info("refusing a port-forward stream with headers {headers}", headers=headers)
            self.server.reset(stream_id)
            return
        request = headers.get("requestid") or str(stream_id if kind is StreamType.ERROR else stream_id - 2)
        pair = self.pairs.get(request)
        if pair is None:
            pair = self.pairs[request] = _Pair(request, int(port))
            pair.timer = self.server.reactor.callLater(STREAM_CREATION_TIMEOUT, self._incomplete, pair)
        if getattr(pair, kind) is not None or pair.port != int(port):
            self.server.reset(stream_id, spdy.Status.PROTOCOL_ERROR)
            return
        self.server.reply(stream_id)
        setattr(pair, kind, stream_id)
        self.streams[stream_id] = pair
        if pair.error is not None and pair.data is not None:
            assert pair.timer is not None
            pair.timer.cancel()
            self._open(pair)

    def _open(self, pair: _Pair) -> None:
        assert self.server.valve is not None
        cap = self.server.limits.max_forward_connections
        if cap is not None and sum(p.state in _CONNECTED for p in self.pairs.values()) >= cap:
            self._over(pair, cap)
            return
        pair.state = PairState.CONNECTING
        d = open_backend(self.connect, pair.port, _PairRelay(self, pair), self.server.valve, pair.request)
        d.addCallbacks(self._connected, self._failed, callbackArgs=(pair,), errbackArgs=(pair,))

    def _connected(self, backend: Backend, pair: _Pair) -> None:
        if pair.state is PairState.ENDED:  # the client gave up meanwhile
            backend.tcp.loseConnection()
            return
        pair.state = PairState.OPEN
        pair.backend = backend
        self.server.fanout.add(backend.tcp)
        for data in pair.pending:
            backend.write(data)
        pair.pending.clear()
        if pair.client_done:
            backend.halfClose()

    def _failed(self, failure: Failure, pair: _Pair) -> None:
        text = failure_text(pair.port, self.pod, failure)
        log.info("port-forward: {text}", text=text)
        if self.report_errors and pair.error is not None and pair.state is not PairState.ENDED:
            self.server.send(pair.error, text.encode())
        self._end(pair)

    def _over(self, pair: _Pair, cap: int) -> None:
        """One connection more than C{api.max_forward_connections}: refused as a
        failed connection is, the others carry on."""
        self.server.limits.hit(APILimit.MAX_FORWARD_CONNECTIONS)
        text = f"port-forward to {self.pod}:{pair.port}: {cap} connections open already (api.max_forward_connections)"
        log.warn("port-forward: {text}", text=text)
        if self.report_errors and pair.error is not None:
            self.server.send(pair.error, text.encode())
        self._end(pair)

    def _incomplete(self, pair: _Pair) -> None:
        if pair.error is not None:
            self.server.send(pair.error, b"timed out waiting for streams")
        self._end(pair)

    def streamData(self, stream_id: int, data: bytes, fin: bool) -> None:
        pair = self.streams.get(stream_id)
        if pair is None or stream_id != pair.data:
            return  # the client writes nothing on error streams
        if pair.state is PairState.OPEN:
            assert pair.backend is not None
            if data:
                pair.backend.write(data)
            if fin:
                pair.backend.halfClose()
        elif pair.state is not PairState.ENDED:
            pair.pending.append(data)
            pair.client_done = fin

    def streamReset(self, stream_id: int) -> None:
        pair = self.streams.get(stream_id)
        if pair is not None and stream_id == pair.data:
            self._end(pair)

    def connectionEnded(self) -> None:
        for pair in list(self.pairs.values()):
            self._end(pair)
        self.audit.end("closed", *self.moved)

    def backendData(self, pair: _Pair, data: bytes) -> None:
        """What the pod sends; after the pair ended (a node's stream may
        still deliver a little after we closed it) it is nobody's."""
        if pair.state is PairState.OPEN and pair.data is not None:
            self.server.send(pair.data, data)

    def _end(self, pair: _Pair) -> None:
        """FIN both streams (a no-op for streams already gone) and forget the pair."""
        if pair.state is PairState.ENDED:
            return
        pair.state = PairState.ENDED
        del self.pairs[pair.request]
        if pair.timer is not None and pair.timer.active():
            pair.timer.cancel()
        for stream_id in (pair.data, pair.error):
            if stream_id is not None:
                self.server.send(stream_id, b"", fin=True)
                self.streams.pop(stream_id, None)
        if pair.backend is not None:
            self.moved[0] += pair.backend.bytes_in
            self.moved[1] += pair.backend.bytes_out
            self.server.fanout.remove(pair.backend.tcp)
            pair.backend.tcp.loseConnection()


class _PairRelay:
    def __init__(self, forward: SpdyPortForward, pair: _Pair) -> None:
        self.forward = forward
        self.pair = pair

    def backendData(self, data: bytes) -> None:
        self.forward.backendData(self.pair, data)

    def backendEnded(self) -> None:
        self.forward._end(self.pair)


class SpdyTunnel:
    """SPDY carried in binary WebSocket messages (C{SPDY/3.1+portforward.k8s.io}):
    the messages, joined, are the SPDY byte stream; their boundaries mean nothing."""

    def __init__(
        self, reactor, make_handler: Callable[[SpdyServer], StreamHandler], limits: StreamLimits | None = None
    ) -> None:
        # The WebSocket beneath pings the client already.
        inner = replace(limits, keepalive=None) if limits is not None else None
        self.server = SpdyServer(reactor, make_handler, inner)
        self.ws: WebSocketEndpoint | None = None

    def opened(self, ws: WebSocketEndpoint) -> None:
        self.ws = ws
        self.server.makeConnection(MessageTransport(ws))

    def messageReceived(self, payload: bytes, text: bool) -> None:
        if text:
            assert self.ws is not None
            self.ws.close(1003, "the SPDY tunnel carries binary messages only")
            return
        self.server.dataReceived(payload)

    def closed(self) -> None:
        self.server.connectionLost()
