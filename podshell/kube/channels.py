"""exec, attach and port-forward over the WebSocket channel protocol."""

from __future__ import annotations

from twisted.logger import Logger
from twisted.python.failure import Failure

from podshell.core.contracts import Session
from podshell.core.flow import FanOut, Valve
from podshell.kube.command import CommandSession, Start
from podshell.kube.portforward import Backend, Connect, failure_text, open_backend
from podshell.kube.websocket import WebSocketEndpoint
from podshell.protocols import channels
from podshell.protocols import remotecommand as rc
from podshell.protocols.remotecommand import StreamOptions

log = Logger()


class ChannelCommand:
    """exec or attach: channel 0 stdin, 1 stdout, 2 stderr, 3 status,
    4 resize, (v5) 255 to close a stream, and (gateway to node) 6 to signal."""

    def __init__(
        self, protocol: str, options: StreamOptions, audit: Session, command: list[str] | None, start: Start
    ) -> None:
        self.protocol = protocol
        self.b64 = protocol in (rc.B64, rc.V4_B64)
        self.session = CommandSession(self, protocol, options, audit, command)
        self.start = start
        self.ws: WebSocketEndpoint | None = None

    def opened(self, ws: WebSocketEndpoint) -> None:
        self.ws = ws
        options = self.session.options
        first = rc.STDOUT if options.stdout else rc.STDERR if options.stderr else rc.ERROR
        self.send(first, b"")  # the "ready" marker real servers send
        self.session.begin(self.start, ws.tcp, Valve(ws.tcp))

    def messageReceived(self, payload: bytes, text: bool) -> None:
        if not payload:
            return
        try:
            channel, data = channels.decode(payload, self.b64)
            if channel == rc.STDIN:
                self.session.stdin(data)
            elif channel == rc.RESIZE:
                self.session.resize(data)
            elif channel == rc.SIGNAL and self.protocol == rc.PROCESS:
                self.session.signal(data.decode("ascii", errors="replace"))
            elif channel == rc.CLOSE and self.protocol in (rc.V5, rc.PROCESS):
                if len(data) != 1 or data[0] > rc.RESIZE:
                    raise ValueError("bad close message")
                if data[0] == rc.STDIN:
                    self.session.stdin_closed()
        except ValueError as e:
            assert self.ws is not None
            self.ws.close(1007, str(e))

    def closed(self) -> None:
        self.session.client_gone()

    # Output
    def send(self, channel: int, data: bytes) -> None:
        assert self.ws is not None
        self.ws.send(channels.encode(channel, data, self.b64))

    def finish(self) -> None:
        assert self.ws is not None
        self.ws.close(1000)


class ChannelPortForward:
    """Port-forward as the Python client speaks it: one backend connection
    per port, data on channel 2i, errors on 2i+1, each opened by the port
    number; when every port is done, Close 1000."""

    def __init__(self, ports: list[int], b64: bool, connect: Connect, pod: str, audit: Session) -> None:
        self.ports = ports
        self.b64 = b64
        self.connect = connect
        self.pod = pod
        self.audit = audit
        self.backends: dict[int, Backend] = {}
        self.pending: dict[int, list[bytes]] = {}
        self.done: set[int] = set()
        self.ws: WebSocketEndpoint | None = None
        self.fanout = FanOut()

    def opened(self, ws: WebSocketEndpoint) -> None:
        self.ws = ws
        self.valve = Valve(ws.tcp)
        ws.tcp.registerProducer(self.fanout, True)
        self.audit.serve(self)
        for i, port in enumerate(self.ports):
            for channel in (2 * i, 2 * i + 1):
                ws.send(channels.encode(channel, channels.port_prefix(port), self.b64))
        for i, port in enumerate(self.ports):
            self.pending[i] = []
            d = open_backend(self.connect, port, _PortRelay(self, i), self.valve, i)
            d.addCallbacks(self._connected, self._failed, callbackArgs=(i,), errbackArgs=(i, port))

    def _connected(self, backend: Backend, i: int) -> None:
        if self.ws is None or i in self.done:
            backend.tcp.loseConnection()
            return
        self.backends[i] = backend
        self.fanout.add(backend.tcp)
        for data in self.pending.pop(i, []):
            backend.write(data)

    def _failed(self, failure: Failure, i: int, port: int) -> None:
        self.pending.pop(i, None)
        self.send(2 * i + 1, failure_text(port, self.pod, failure).encode())
        self.port_done(i)

    def messageReceived(self, payload: bytes, text: bool) -> None:
        if not payload:
            return
        try:
            channel, data = channels.decode(payload, self.b64)
        except ValueError as e:
            assert self.ws is not None
            self.ws.close(1007, str(e))
            return
        i = channel // 2
        if channel % 2 or i >= len(self.ports) or i in self.done:
            return  # error channels are ours to write; unknown ones are ignored
        if i in self.pending:
            self.pending[i].append(data)
        else:
            self.backends[i].write(data)

    def closed(self) -> None:
        for backend in self.backends.values():
            backend.tcp.loseConnection()
        self.audit.end("closed", *self.moved())

    # Door: ending a forward closes its WebSocket and connections.
    def moved(self) -> tuple[int, int]:
        return sum(b.bytes_in for b in self.backends.values()), sum(b.bytes_out for b in self.backends.values())

    def tell(self, line: str) -> None:
        """A forward has no terminal."""

    def stop(self, line: str, status: str) -> None:
        self.audit.end(status, *self.moved())
        if self.ws is not None:
            self.ws.close(1000, line)

    def send(self, channel: int, data: bytes) -> None:
        if self.ws is not None:
            self.ws.send(channels.encode(channel, data, self.b64))

    def port_done(self, i: int) -> None:
        self.done.add(i)
        backend = self.backends.get(i)
        if backend is not None:
            self.fanout.remove(backend.tcp)
        if len(self.done) == len(self.ports) and self.ws is not None:
            self.ws.close(1000)


class _PortRelay:
    def __init__(self, forward: ChannelPortForward, index: int) -> None:
        self.forward = forward
        self.index = index

    def backendData(self, data: bytes) -> None:
        self.forward.send(2 * self.index, data)

    def backendEnded(self) -> None:
        self.forward.port_done(self.index)


class ChannelPort:
    """One port for a gateway (L{rc.PORT}): an empty error message once
    connected, or the error; then data both ways, and C{CLOSE} with the data
    channel when a side will send no more (TCP half-close, carried)."""

    def __init__(self, port: int, connect: Connect, audit: Session) -> None:
        self.port = port
        self.connect = connect
        self.audit = audit
        self.backend: Backend | None = None
        self.pending: list[bytes] | None = []
        self.client_done = False
        self.ws: WebSocketEndpoint | None = None

    def opened(self, ws: WebSocketEndpoint) -> None:
        self.ws = ws
        d = open_backend(self.connect, self.port, self, Valve(ws.tcp), "port")
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, backend: Backend) -> None:
        if self.ws is None:
            backend.tcp.loseConnection()
            return
        self.backend = backend
        backend.on_closed = lambda: self.ws.close(1000) if self.ws is not None else None
        self.ws.tcp.registerProducer(backend.tcp, True)
        self.send(rc.PORT_ERROR, b"")
        for data in self.pending or ():
            backend.write(data)
        self.pending = None
        if self.client_done:
            backend.halfClose()

    def _failed(self, failure: Failure) -> None:
        self.audit.end(f"failed: {failure.getErrorMessage()}")
        self.send(rc.PORT_ERROR, failure.getErrorMessage().encode())  # the gateway words it
        if self.ws is not None:
            self.ws.close(1000)

    def messageReceived(self, payload: bytes, text: bool) -> None:
        try:
            channel, data = channels.decode(payload, False)
        except ValueError as e:
            assert self.ws is not None
            self.ws.close(1007, str(e))
            return
        if channel == rc.PORT_DATA and not self.client_done:
            if self.pending is not None:
                self.pending.append(data)
            elif self.backend is not None:
                self.backend.write(data)
        elif channel == rc.CLOSE and data == bytes((rc.PORT_DATA,)):
            self.client_done = True
            if self.backend is not None and self.pending is None:
                self.backend.halfClose()

    def closed(self) -> None:
        self.ws = None
        if self.backend is not None:
            self.backend.tcp.loseConnection()
            self.audit.end("closed", self.backend.bytes_in, self.backend.bytes_out)

    def send(self, channel: int, data: bytes) -> None:
        if self.ws is not None:
            self.ws.send(channels.encode(channel, data, False))

    # Relay: from the pod.
    def backendData(self, data: bytes) -> None:
        self.send(rc.PORT_DATA, data)

    def backendEnded(self) -> None:
        self.send(rc.CLOSE, bytes((rc.PORT_DATA,)))
