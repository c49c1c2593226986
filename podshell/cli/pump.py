"""Non-blocking socket plumbing shared by exec/attach and port-forward: one
thread, one selector, and nothing ever blocks on a peer that is waiting for
us (the server's output is read while our input waits to be sent)."""

from __future__ import annotations

import selectors
import socket
import ssl


def interest(sel: selectors.BaseSelector, fileobj: int | socket.socket, events: int, data: object) -> None:
    """Watch C{fileobj} for C{events} (none: not at all), touching the selector only on a change."""
    key = sel.get_map().get(fileobj)
    if not events:
        if key is not None:
            sel.unregister(fileobj)
    elif key is None:
        sel.register(fileobj, events, data)
    elif key.events != events:
        sel.modify(fileobj, events, data)


def receive(sock: socket.socket, limit: int) -> tuple[bytes, bool]:
    """What has arrived (up to about C{limit}), and whether the peer closed.

    Read until the socket (or TLS) has no more: after select, TLS may hold
    decrypted bytes the kernel no longer shows as readable."""
    chunks: list[bytes] = []
    received = 0
    while received < limit:
        try:
            chunk = sock.recv(65536)  # one TLS record at most
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            break  # all there is for now (or part of a record, the rest on its way)
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks), False


def send(sock: socket.socket, outgoing: bytearray, piece: int = 64 * 1024) -> None:
    """Send from the head of C{outgoing} what the socket takes now.  After a
    want-write, TLS needs the same bytes again (or more): the head stays
    until it is sent, and each try is never shorter than the last."""
    while outgoing:
        try:
            sent = sock.send(outgoing[:piece])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            return
        del outgoing[:sent]
