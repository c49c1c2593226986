"""The client of the pod's Sink server (tests/podserver.py) through a forwarded port."""

from __future__ import annotations

import socket


def upload(port: int, data: bytes) -> bytes:
    """Send C{data}, half-close, and return the sink's answer ("<bytes> <sha256>")."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)  # the pod's sink answers after EOF
        return b"".join(iter(lambda: s.recv(1 << 16), b""))
