"""``podshell port-forward``: local listeners, one SPDY connection to the
server carrying every forwarded connection (the same sans-IO core as the
server), and reconnection with back-off that keeps the listeners: a server
restart costs the connections in flight, not the command."""

from __future__ import annotations

import selectors
import socket
import sys
import time
from dataclasses import dataclass, field

from podshell import __version__
from podshell.cli.api import API, pod_path
from podshell.cli.profile import CLIError
from podshell.protocols import remotecommand as rc
from podshell.protocols import spdy

BACKOFF_MAX = 8.0


@dataclass
class _Forwarded:
    """One accepted local connection and its stream pair."""

    sock: socket.socket
    local: int
    remote: int
    data: int
    error: int
    error_text: bytes = b""
    sent_eof: bool = False
    got_eof: bool = False


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
                    if e.status is not None and e.status in (401, 403, 404):
                        raise
                    print(f"podshell: {e}", file=sys.stderr, flush=True)
            print("Reconnected", file=sys.stderr, flush=True)

    def _listen(self) -> None:
        for local, remote in self.ports:
            family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((self.address, local))
            except OSError as e:
                raise CLIError(f"cannot listen on {self.address}:{local}: {e.strerror}") from None
            sock.listen(128)
            bound = sock.getsockname()[1]
            self.listeners.append(_Listener(sock, bound, remote))
            host = f"[{self.address}]" if family == socket.AF_INET6 else self.address
            print(f"Forwarding from {host}:{bound} -> {remote}", flush=True)

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
            self._events(session, session.core.receive_data(rest))
        return session

    def _serve(self, session: _Session) -> None:
        """Forward until the server connection ends."""
        sel = selectors.DefaultSelector()
        sel.register(session.sock, selectors.EVENT_READ, "server")
        for listener in self.listeners:
            sel.register(listener.sock, selectors.EVENT_READ, listener)
        session.sock.settimeout(None)
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "server":
                        if not self._from_server(session, sel):
                            return
                    elif isinstance(key.data, _Listener):
                        self._accept(session, sel, key.data)
                    else:
                        self._from_local(session, sel, key.data)
                    self._flush(session)
        except OSError:
            return
        finally:
            for forwarded in list(session.streams.values()):
                forwarded.sock.close()
            session.streams.clear()
            session.sock.close()
            sel.close()

    def _accept(self, session: _Session, sel: selectors.BaseSelector, listener: _Listener) -> None:
        try:
            conn, _ = listener.sock.accept()
        except OSError:
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        headers = {"port": str(listener.remote), "requestid": str(self.request)}
        self.request += 1
        error = session.core.open_stream({"streamtype": "error", **headers})
        session.core.send_data(error, b"", fin=True)  # we never write on it
        data = session.core.open_stream({"streamtype": "data", **headers})
        forwarded = _Forwarded(conn, listener.local, listener.remote, data, error)
        session.streams[data] = session.streams[error] = forwarded
        sel.register(conn, selectors.EVENT_READ, forwarded)

    def _from_local(self, session: _Session, sel: selectors.BaseSelector, forwarded: _Forwarded) -> None:
        try:
            data = forwarded.sock.recv(65536)
        except OSError:
            data = b""
        if data:
            session.core.send_data(forwarded.data, data)
            return
        sel.unregister(forwarded.sock)
        forwarded.sent_eof = True
        session.core.send_data(forwarded.data, b"", fin=True)
        if forwarded.got_eof:
            self._close(session, forwarded)

    def _from_server(self, session: _Session, sel: selectors.BaseSelector) -> bool:
        data = session.sock.recv(65536)
        if not data:
            return False
        events = session.core.receive_data(data)
        self._events(session, events, sel)
        return not any(isinstance(e, (spdy.GoAway, spdy.ConnectionBroken)) for e in events)

    def _events(self, session: _Session, events: list, sel: selectors.BaseSelector | None = None) -> None:
        for event in events:
            forwarded = session.streams.get(getattr(event, "stream_id", -1))
            if forwarded is None:
                continue
            if isinstance(event, spdy.Data) and event.stream_id == forwarded.data:
                if event.data:
                    try:
                        forwarded.sock.sendall(event.data)
                    except OSError:
                        session.core.reset(forwarded.data)
                        self._close(session, forwarded, sel)
                        continue
                if event.fin:
                    forwarded.got_eof = True
                    if forwarded.sent_eof:
                        self._close(session, forwarded, sel)
                    else:
                        forwarded.sock.shutdown(socket.SHUT_WR)
            elif isinstance(event, spdy.Data):  # the error stream
                forwarded.error_text += event.data[: 4096 - len(forwarded.error_text)]
                if event.fin and forwarded.error_text:
                    text = forwarded.error_text.decode(errors="replace")
                    print(f"error forwarding {forwarded.local} -> {forwarded.remote}: {text}", file=sys.stderr)
                    self._close(session, forwarded, sel)
            elif isinstance(event, spdy.StreamReset) and event.stream_id == forwarded.data:
                self._close(session, forwarded, sel)

    def _close(self, session: _Session, forwarded: _Forwarded, sel: selectors.BaseSelector | None = None) -> None:
        if session.streams.pop(forwarded.data, None) is None:
            return
        session.streams.pop(forwarded.error, None)
        if sel is not None and not forwarded.sent_eof:
            sel.unregister(forwarded.sock)
        forwarded.sock.close()

    @staticmethod
    def _flush(session: _Session) -> None:
        out = session.core.data_to_send()
        if out:
            session.sock.sendall(out)


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
