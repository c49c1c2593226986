"""exec and attach from the command line: the v5 channel protocol over
WebSocket, the local terminal in raw mode when asked, the remote exit code
as ours."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
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

from podshell.cli import pump
from podshell.cli.api import API, failure, pod_path
from podshell.cli.profile import CLIError
from podshell.protocols import channels
from podshell.protocols import remotecommand as rc


def run(
    api: API,
    namespace: str,
    pod: str,
    container: str | None,
    command: list[str] | None,
    stdin: bool,
    tty: bool,
    user: str | None = None,
) -> int:
    """Run (or attach to) a command, as the container's own user or as
    C{user} of the container; returns its exit code."""
    if tty and not os.isatty(0):
        print("podshell: unable to use a TTY: input is not a terminal", file=sys.stderr)
        tty = False
    query: list[tuple[str, str]] = [("command", c) for c in command or []]
    if container:
        query.append(("container", container))
    query += [("stdin", str(stdin).lower()), ("stdout", "true"), ("stderr", str(not tty).lower())]
    query.append(("tty", str(tty).lower()))
    if user is not None:
        query.append(("user", user))
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


STDIN_CHUNK = 64 * 1024  # what one read of our stdin may take
RECEIVE_TURN = 256 * 1024  # what one turn of the loop reads from the server at most
SEND_QUEUE = 256 * 1024  # stdin is not read while this much waits for the server
MAX_STATUS = 64 * 1024  # the final Status is a small JSON object


class Demux:
    """Channel messages out of wsproto's pieces.

    wsproto hands a message over as it arrives: a fragment, or as much of a
    frame as one read brought.  Only a message's first byte is its channel;
    the rest, in every piece, is data, passed on as it comes, so a message of
    any size costs no memory here.
    """

    def __init__(self) -> None:
        self._channel: int | None = None  # of the message in progress, once its first byte came

    def feed(self, data: bytes, finished: bool) -> tuple[int, bytes] | None:
        """The channel and data in one piece of a message (None before the channel byte)."""
        channel = self._channel
        if channel is None and data:
            channel, data = data[0], data[1:]
        self._channel = None if finished else channel
        if channel is None:
            if finished:
                raise CLIError("the server sent an empty channel message")
            return None
        return channel, data


class _OutputClosed(Exception):
    """Whoever reads our stdout or stderr stopped (C{| head})."""


def _write_all(fd: int, data: bytes) -> None:
    """All of C{data}, however the descriptor takes it: in pieces, or, if
    whoever shares it made it non-blocking, when it is ready."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            select.select([], [fd], [])
        except BrokenPipeError:
            raise _OutputClosed from None
        except OSError as e:  # a full disk, say
            raise CLIError(f"cannot write the command's output: {e.strerror or e}") from None


class _Session:
    """A non-blocking socket (L{pump}): a command reading and writing much at
    once cannot deadlock against us.  Stdin is read only while little of it
    waits (a slow server backs a big file up; it is not read into memory)."""

    def __init__(self, sock: ssl.SSLSocket, ws: WSConnection, stdin: bool, tty: bool) -> None:
        self.sock = sock
        self.ws = ws
        self.stdin_open = stdin
        self.tty = tty
        self.demux = Demux()
        self.status: bytes | None = None
        self.outgoing = bytearray()  # framed, waiting for the socket

    def loop(self, early: list[Event]) -> int:
        try:
            return self._loop(early)
        except _OutputClosed:
            return 128 + signal.SIGPIPE  # quietly, as a tool killed by SIGPIPE would

    def _loop(self, early: list[Event]) -> int:
        if any(self._event(event) for event in early):
            return self._exit_code()
        self.sock.setblocking(False)
        sel = selectors.DefaultSelector()
        stdin_polled = self.stdin_open and self._pollable(sel)
        wake_r, wake_w = os.pipe()
        if self.tty:
            os.set_blocking(wake_w, False)
            signal.signal(signal.SIGWINCH, lambda *_: None)  # the wakeup fd is what tells the loop
            signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
            sel.register(wake_r, selectors.EVENT_READ, "winch")
            self._resize()
        try:
            while True:
                want_stdin = self.stdin_open and len(self.outgoing) < SEND_QUEUE
                net = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.outgoing else 0)
                pump.interest(sel, self.sock, net, "net")
                if stdin_polled:
                    pump.interest(sel, 0, selectors.EVENT_READ if want_stdin else 0, "stdin")
                # A file or /dev/null cannot be polled: it is always ready, read between socket turns.
                stdin_ready = want_stdin and not stdin_polled
                for key, events in sel.select(0 if stdin_ready else None):
                    if key.data == "stdin":
                        stdin_ready = True
                    elif key.data == "winch":
                        os.read(wake_r, 512)
                        self._resize()
                    elif events & selectors.EVENT_READ and self._receive():
                        return self._exit_code()
                if stdin_ready:
                    self._read_stdin()
                self._flush()
        finally:
            if self.tty:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGWINCH, signal.SIG_DFL)
            os.close(wake_r)
            os.close(wake_w)
            sel.close()

    @staticmethod
    def _pollable(sel: selectors.BaseSelector) -> bool:
        """Whether stdin can be selected on (epoll refuses regular files and /dev/null)."""
        try:
            sel.register(0, selectors.EVENT_READ, "stdin")
        except PermissionError:
            return False
        sel.unregister(0)
        return True

    def _read_stdin(self) -> None:
        try:
            data = os.read(0, STDIN_CHUNK)
        except BlockingIOError:  # polled, and someone else took what woke us
            return
        except OSError:  # EIO: the terminal hung up; that is the end of input
            data = b""
        if data:
            self._send(rc.STDIN, data)
            return
        self.stdin_open = False
        self._send(rc.CLOSE, bytes((rc.STDIN,)))  # EOF, delivered

    def _receive(self) -> bool:
        """Read what the server sent; True when the session is over."""
        try:
            data, eof = pump.receive(self.sock, RECEIVE_TURN)
        except OSError as e:
            raise CLIError(f"the connection to the server broke: {e}") from None
        self.ws.receive_data(data)
        return any(self._event(event) for event in self.ws.events()) or eof

    def _event(self, event: Event) -> bool:
        """Act on one event; True when the session is over."""
        if isinstance(event, Message):
            data = event.data.encode() if isinstance(event, TextMessage) else event.data
            piece = self.demux.feed(data, event.message_finished)
            if piece is not None:
                self._message(*piece)
        elif isinstance(event, Ping):
            self.outgoing += self.ws.send(event.response())
        elif isinstance(event, CloseConnection):
            with contextlib.suppress(Exception):
                self.outgoing += self.ws.send(event.response())
                self._flush()
            return True
        return False

    def _message(self, channel: int, data: bytes) -> None:
        if not data:
            return
        if channel in (rc.STDOUT, rc.STDERR):
            _write_all(channel, data)  # our descriptors 1 and 2 are the channels' numbers
        elif channel == rc.ERROR:
            self.status = (self.status or b"") + data
            if len(self.status) > MAX_STATUS:
                raise CLIError(f"the server's final status is over {MAX_STATUS} bytes: not a Status")

    def _send(self, channel: int, data: bytes) -> None:
        message = channels.encode(channel, data, b64=False)
        assert isinstance(message, bytes)
        self.outgoing += self.ws.send(BytesMessage(data=message))

    def _flush(self) -> None:
        try:
            pump.send(self.sock, self.outgoing, STDIN_CHUNK)
        except OSError as e:
            raise CLIError(f"the connection to the server broke: {e}") from None

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
