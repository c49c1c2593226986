"""The Kubernetes WebSocket channel framing (channel.k8s.io and friends):
each message is one channel byte and a payload; the base64 variants write
the channel as an ASCII digit and the payload in base64, in text frames."""

from __future__ import annotations

import base64
import binascii
import struct


def encode(channel: int, data: bytes, b64: bool) -> bytes | str:
    """One message: bytes for a binary frame, str for a text frame."""
    if b64:
        return chr(ord("0") + channel) + base64.b64encode(data).decode()
    return bytes((channel,)) + data


def decode(payload: bytes, b64: bool) -> tuple[int, bytes]:
    """The channel and data of a received message (raises ValueError)."""
    if not payload:
        raise ValueError("empty channel message")
    if not b64:
        return payload[0], payload[1:]
    channel = payload[0] - ord("0")
    if not 0 <= channel <= 9:
        raise ValueError("bad channel digit in a base64 message")
    try:
        return channel, base64.b64decode(payload[1:], validate=True)
    except binascii.Error:
        raise ValueError("bad base64 payload") from None


def port_prefix(port: int) -> bytes:
    """The two bytes (port, little-endian) that open each port-forward channel."""
    return struct.pack("<H", port)


def parse_ports(values: list[str]) -> list[int]:
    """The C{ports} query of a WebSocket port-forward (repeated or comma-separated)."""
    ports: list[int] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if not part.isdigit() or not 0 < int(part) < 65536:
                raise ValueError(f"invalid port {part!r}: ports must be numbers from 1 to 65535")
            ports.append(int(part))
    if not ports:
        raise ValueError("query parameter ports is required: say which ports to forward")
    return ports
