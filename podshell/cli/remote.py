"""exec and attach from the command line: the v5 channel protocol over
WebSocket, the local terminal in raw mode when asked, the remote exit code
as ours."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import selectors
import signal
import ssl
import struct
import sys
import termios
import tty as ttymod
from collections.abc import Iterator
from urllib.parse import urlencode

from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from podshell.cli.api import API, failure, pod_path
from podshell.cli.profile import CLIError
from podshell.protocols import channels
from podshell.protocols import remotecommand as rc


def run(
    api: API, namespace: str, pod: str, container: str | None, command: list[str] | None, stdin: bool, tty: bool
) -> int:
    """Run (or attach to) a command; returns its exit code."""
    if tty and not os.isatty(0):
        print("podshell: unable to use a TTY: input is not a terminal", file=sys.stderr)
        tty = False
    query: list[tuple[str, str]] = [("command", c) for c in command or []]
    if container:
        query.append(("container", container))
    query += [("stdin", str(stdin).lower()), ("stdout", "true"), ("stderr", str(not tty).lower())]
    query.append(("tty", str(tty).lower()))
    target = pod_path(namespace, pod, "exec" if command is not None else "attach") + "?" + urlencode(query)
    sock = api.connect()
    try:
        # Raw before the handshake: what is typed meanwhile is neither echoed twice nor lost.
        with _raw_terminal(tty):
            ws, early = _handshake(api, sock, target)
            return _Session(sock, ws, stdin, tty).loop(early)
    finally:
        sock.close()


def _handshake(api: API, sock: ssl.SSLSocket, target: str) -> tuple[WSConnection, list[Event]]:
    """The upgraded connection, and the events that came with the 101 (a
    short command's whole output and status may)."""
    ws = WSConnection(ConnectionType.CLIENT)
    host, port = api.profile.host_port
    auth = [(b"authorization", f"Bearer {api.profile.token}".encode())]
    sock.sendall(ws.send(Request(host=f"{host}:{port}", target=target, subprotocols=[rc.V5], extra_headers=auth)))
    status, body = 0, b""
    while True:
        data = sock.recv(65536)
        if not data:
            raise CLIError(f"{api.profile.server} closed the connection during the upgrade")
        ws.receive_data(data)
        events = ws.events()
        for event in events:
            if isinstance(event, AcceptConnection):
                if event.subprotocol != rc.V5:
                    raise CLIError("the server does not speak v5.channel.k8s.io; upgrade it")
                return ws, list(events)
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise failure(status, b"")
            elif isinstance(event, RejectData):
                body += event.data
                if event.body_finished:
                    raise failure(status, body)


@contextlib.contextmanager
def _raw_terminal(tty: bool) -> Iterator[None]:
    """The local terminal in raw mode, restored on every way out."""
    if not tty:
        yield
        return
    saved = termios.tcgetattr(0)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        ttymod.setraw(0, termios.TCSADRAIN)  # not TCSAFLUSH: keep what was typed
        yield
    finally:
        termios.tcsetattr(0, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGTERM, previous)


class _Session:
    def __init__(self, sock: ssl.SSLSocket, ws: WSConnection, stdin: bool, tty: bool) -> None:
        self.sock = sock
        self.ws = ws
        self.stdin = stdin
        self.tty = tty
        self.status: bytes | None = None
        self.out = {rc.STDOUT: sys.stdout.buffer, rc.STDERR: sys.stderr.buffer}

    def loop(self, early: list[Event]) -> int:
        if any(self._event(event) for event in early):
            return self._exit_code()
        sel = selectors.DefaultSelector()
        sock = self.sock
        sock.setblocking(True)
        sel.register(sock, selectors.EVENT_READ, "net")
        if self.stdin:
            sel.register(0, selectors.EVENT_READ, "stdin")
        wake_r, wake_w = os.pipe()
        if self.tty:
            os.set_blocking(wake_w, False)
            signal.signal(signal.SIGWINCH, lambda *_: os.write(wake_w, b"w"))
            sel.register(wake_r, selectors.EVENT_READ, "winch")
            self._resize()
        try:
            while True:
                for key, _ in sel.select():
                    if key.data == "stdin":
                        data = os.read(0, 65536)
                        if data:
                            self._send(rc.STDIN, data)
                        else:
                            sel.unregister(0)
                            self._send(rc.CLOSE, bytes((rc.STDIN,)))  # EOF, delivered
                    elif key.data == "winch":
                        os.read(wake_r, 512)
                        self._resize()
                    elif self._receive():
                        return self._exit_code()
        finally:
            if self.tty:
                signal.signal(signal.SIGWINCH, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            sel.close()

    def _receive(self) -> bool:
        """Read what the server sent; True when the session is over."""
        data = self.sock.recv(65536)
        while self.sock.pending():
            data += self.sock.recv(self.sock.pending())
        self.ws.receive_data(data or None)
        return any(self._event(event) for event in self.ws.events()) or not data

    def _event(self, event: Event) -> bool:
        """Act on one event; True when the session is over."""
        if isinstance(event, Message):
            payload = event.data.encode("latin-1") if isinstance(event, TextMessage) else event.data
            self._message(payload)
        elif isinstance(event, Ping):
            self.sock.sendall(self.ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            with contextlib.suppress(Exception):
                self.sock.sendall(self.ws.send(event.response()))
            return True
        return False

    def _message(self, payload: bytes) -> None:
        channel, data = channels.decode(payload, b64=False)
        if channel in self.out and data:
            stream = self.out[channel]
            stream.write(data)
            stream.flush()
        elif channel == rc.ERROR and data:
            self.status = data

    def _send(self, channel: int, data: bytes) -> None:
        message = channels.encode(channel, data, b64=False)
        assert isinstance(message, bytes)
        self.sock.sendall(self.ws.send(BytesMessage(data=message)))

    def _resize(self) -> None:
        rows, cols, _, _ = struct.unpack("4H", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
        self._send(rc.RESIZE, json.dumps({"Width": cols, "Height": rows}).encode())

    def _exit_code(self) -> int:
        if self.status is None:
            raise CLIError("the connection to the server ended before the command did")
        try:
            return rc.exit_code(rc.exit_status(self.status))
        except rc.RemoteFailure as e:
            raise CLIError(str(e)) from None
