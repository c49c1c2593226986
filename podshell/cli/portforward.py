"""``podshell port-forward``: local listeners, one SPDY connection to the
server carrying every forwarded connection (the same sans-IO core as the
server), and reconnection with back-off that keeps the listeners: a server
restart costs the connections in flight, not the command.

Every socket is non-blocking (L{pump}): a local client slow to read or a
server slow to take must not stop the other direction, or a pod that echoes
what it reads deadlocks against us.  SPDY here has no windows, so a local
client that falls far behind pauses reading the server, for every stream."""

from __future__ import annotations

import selectors
import socket
import sys
import time
from dataclasses import dataclass, field
from enum import Flag, auto

from podshell import __version__
from podshell.cli import pump
from podshell.cli.api import API, pod_path
from podshell.cli.profile import CLIError
from podshell.core.denial import answer, kind_of_status
from podshell.protocols import remotecommand as rc
from podshell.protocols import spdy

BACKOFF_MAX = 8.0
RECEIVE_TURN = 256 * 1024  # what one turn reads from the server at most
SEND_QUEUE = 256 * 1024  # local sockets are not read while this much waits for the server
LOCAL_QUEUE = 1024 * 1024  # the server is not read while a local client has this much to take


class Ended(Flag):
    """Which halves of a forwarded connection have ended; both: it is closed."""

    NEITHER = 0
    LOCAL = auto()  # the local client's EOF, passed on as our FIN
    POD = auto()  # the pod's FIN, passed on as a shutdown of the local socket


@dataclass
class _Forwarded:
    """One accepted local connection and its stream pair."""

    sock: socket.socket
    local: int
    remote: int
    data: int
    error: int
    error_text: bytes = b""
    ended: Ended = Ended.NEITHER
    to_local: bytearray = field(default_factory=bytearray)  # from the pod, waiting for the local socket


@dataclass
class _Listener:
    sock: socket.socket
    local: int
    remote: int


@dataclass
class _Session:
    sock: socket.socket
    core: spdy.SpdyConnection
    streams: dict[int, _Forwarded] = field(default_factory=dict)
    sel: selectors.BaseSelector = field(default_factory=selectors.DefaultSelector)
    outgoing: bytearray = field(default_factory=bytearray)  # framed, waiting for the server socket


class Forwarder:
    def __init__(self, api: API, namespace: str, pod: str, ports: list[tuple[int, int]], address: str) -> None:
        self.api = api
        self.namespace = namespace
        self.pod = pod
        self.ports = ports
        self.address = address
        self.listeners: list[_Listener] = []
        self.request = 0

    def run(self) -> int:
        session = self._upgrade()  # the first failure is an answer, not something to retry
        self._listen()
        delay = 0.5
        while True:
            started = time.monotonic()
            self._serve(session)
            if time.monotonic() - started > 10:
                delay = 0.5
            while True:
                print(f"Lost connection to the server; reconnecting in {delay:g}s", file=sys.stderr, flush=True)
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                try:
                    session = self._upgrade()
                    break
                except CLIError as e:
                    if e.status is not None and _lasting(e.status):
                        raise
                    print(f"podshell: {e}", file=sys.stderr, flush=True)
            print("Reconnected", file=sys.stderr, flush=True)

    def _listen(self) -> None:
        """kubectl's --address: a comma-separated list; "localhost" is
        127.0.0.1 and ::1 on the same port, the second only where IPv6 is."""
        named = [a.strip() for a in self.address.split(",") if a.strip()]
        for local, remote in self.ports:
            port = local
            for address in named:
                optional = address == "localhost"
                for host in ("127.0.0.1", "::1") if optional else (address,):
                    sock = self._bind(host, port, required=not (optional and host == "::1"))
                    if sock is None:
                        continue
                    port = sock.getsockname()[1]  # port 0: the same random port for every address
                    self.listeners.append(_Listener(sock, port, remote))
                    shown = f"[{host}]" if ":" in host else host
                    print(f"Forwarding from {shown}:{port} -> {remote}", flush=True)

    @staticmethod
    def _bind(host: str, port: int, required: bool) -> socket.socket | None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            if not required:
                return None
            raise CLIError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            sock.close()
            if not required:
                return None
            raise CLIError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        sock.listen(128)
        return sock

    def _upgrade(self) -> _Session:
        sock = self.api.connect()
        try:
            rest = self.api.upgrade(
                sock,
                pod_path(self.namespace, self.pod, "portforward"),
                ("User-Agent", f"podshell/{__version__}"),
                ("Upgrade", "SPDY/3.1"),
                ("X-Stream-Protocol-Version", rc.PORT_FORWARD),
            )
        except BaseException:
            sock.close()
            raise
        session = _Session(sock, spdy.SpdyConnection(client=True))
        if rest:
            self._events(session, session.core.receive_data(rest))  # no streams yet: a PING, at most
        return session

    def _serve(self, session: _Session) -> None:
        """Forward until the server connection ends."""
        sel = session.sel
        for listener in self.listeners:
            sel.register(listener.sock, selectors.EVENT_READ, listener)
        session.sock.setblocking(False)
        self._flush(session)  # what answered the upgrade's leftovers
        try:
            while not session.core.closed:  # a GOAWAY in the leftovers: no stream may be opened
                self._interests(session)
                for key, events in sel.select():
                    if key.data == "server":
                        if events & selectors.EVENT_READ and not self._from_server(session):
                            return
                    elif isinstance(key.data, _Listener):
                        self._accept(session, key.data)
                    else:
                        self._local(session, key.data, events)
                    self._flush(session)
        except OSError:
            return
        finally:
            for forwarded in list(session.streams.values()):
                forwarded.sock.close()
            session.streams.clear()
            session.sock.close()
            sel.close()

    def _local(self, session: _Session, forwarded: _Forwarded, events: int) -> None:
        """A local socket is ready (if it was not closed earlier in this turn)."""
        if events & selectors.EVENT_WRITE and session.streams.get(forwarded.data) is forwarded:
            self._to_local(session, forwarded)
        if events & selectors.EVENT_READ and session.streams.get(forwarded.data) is forwarded:
            self._from_local(session, forwarded)

    @staticmethod
    def _interests(session: _Session) -> None:
        """Read from a side only while the other side keeps up; write where something waits."""
        behind = False
        take_local = len(session.outgoing) < SEND_QUEUE
        for stream_id, forwarded in session.streams.items():
            if stream_id != forwarded.data:
                continue  # its error stream
            behind = behind or len(forwarded.to_local) >= LOCAL_QUEUE
            events = selectors.EVENT_READ if take_local and Ended.LOCAL not in forwarded.ended else 0
            writable = selectors.EVENT_WRITE if forwarded.to_local else 0
            pump.interest(session.sel, forwarded.sock, events | writable, forwarded)
        events = 0 if behind else selectors.EVENT_READ
        pump.interest(session.sel, session.sock, events | (selectors.EVENT_WRITE if session.outgoing else 0), "server")

    def _accept(self, session: _Session, listener: _Listener) -> None:
        try:
            conn, _ = listener.sock.accept()
        except OSError:
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        headers = {"port": str(listener.remote), "requestid": str(self.request)}
        self.request += 1
        error = session.core.open_stream({"streamtype": "error", **headers})
        session.core.send_data(error, b"", fin=True)  # we never write on it
        data = session.core.open_stream({"streamtype": "data", **headers})
        forwarded = _Forwarded(conn, listener.local, listener.remote, data, error)
        session.streams[data] = session.streams[error] = forwarded

    def _from_local(self, session: _Session, forwarded: _Forwarded) -> None:
        try:
            data = forwarded.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            session.core.send_data(forwarded.data, data)
            return
        forwarded.ended |= Ended.LOCAL
        session.core.send_data(forwarded.data, b"", fin=True)
        if Ended.POD in forwarded.ended and not forwarded.to_local:
            self._close(session, forwarded)

    def _to_local(self, session: _Session, forwarded: _Forwarded) -> None:
        """Give the local client what it takes now; after the pod's EOF and the last byte, pass the EOF on."""
        try:
            del forwarded.to_local[: forwarded.sock.send(forwarded.to_local)]
            if forwarded.ended is Ended.POD and not forwarded.to_local:
                forwarded.sock.shutdown(socket.SHUT_WR)
        except BlockingIOError:
            return
        except OSError:  # the local client is gone
            session.core.reset(forwarded.data)
            self._close(session, forwarded)
            return
        if forwarded.ended is Ended.LOCAL | Ended.POD and not forwarded.to_local:
            self._close(session, forwarded)

    def _from_server(self, session: _Session) -> bool:
        data, eof = pump.receive(session.sock, RECEIVE_TURN)
        events = session.core.receive_data(data) if data else []
        self._events(session, events)
        return not eof and not any(isinstance(e, (spdy.GoAway, spdy.ConnectionBroken)) for e in events)

    def _events(self, session: _Session, events: list) -> None:
        for event in events:
            forwarded = session.streams.get(getattr(event, "stream_id", -1))
            if forwarded is None:
                continue
            if isinstance(event, spdy.Data) and event.stream_id == forwarded.data:
                forwarded.to_local += event.data
                if event.fin:
                    forwarded.ended |= Ended.POD
                self._to_local(session, forwarded)
            elif isinstance(event, spdy.Data):  # the error stream
                forwarded.error_text += event.data[: 4096 - len(forwarded.error_text)]
                if event.fin and forwarded.error_text:
                    text = forwarded.error_text.decode(errors="replace")
                    print(f"error forwarding {forwarded.local} -> {forwarded.remote}: {text}", file=sys.stderr)
                    self._close(session, forwarded)
            elif isinstance(event, spdy.StreamReset) and event.stream_id == forwarded.data:
                self._close(session, forwarded)

    def _close(self, session: _Session, forwarded: _Forwarded) -> None:
        if session.streams.pop(forwarded.data, None) is None:
            return
        session.streams.pop(forwarded.error, None)
        pump.interest(session.sel, forwarded.sock, 0, forwarded)
        forwarded.sock.close()

    @staticmethod
    def _flush(session: _Session) -> None:
        session.outgoing += session.core.data_to_send()
        pump.send(session.sock, session.outgoing)


def _lasting(status: int) -> bool:
    """A refusal that the same request, tried again, cannot overcome."""
    kind = kind_of_status(status)
    return status == 401 or (kind is not None and answer(kind).lasting)


def parse_ports(specs: list[str]) -> list[tuple[int, int]]:
    """[LOCAL:]REMOTE, as kubectl writes them (LOCAL 0 or empty: any free port)."""
    ports = []
    for spec in specs:
        local, _, remote = spec.rpartition(":")
        try:
            pair = (int(local or (remote if not _ else 0)), int(remote))
        except ValueError:
            raise CLIError(f"{spec!r} is not [LOCAL:]REMOTE with port numbers") from None
        if not (0 <= pair[0] < 65536 and 0 < pair[1] < 65536):
            raise CLIError(f"{spec!r}: ports are 1 to 65535 (LOCAL may be 0 for any)")
        ports.append(pair)
    return ports
