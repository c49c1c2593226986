"""The header of a server's binary WebSocket frame (RFC 6455, section 5.2).

wsproto parses everything and sends control frames; bulk data the server
sends goes out as this header followed by the payload itself, because
wsproto's frame builder copies a payload three times, which made it the
largest cost of a port-forward through the gateway.  A server's frames are
unmasked and podshell negotiates no extensions, so the header is all there is.
"""

from __future__ import annotations

import struct

_FIN_BINARY = 0x82


def binary_header(length: int) -> bytes:
    """The header of one final, unmasked binary frame of C{length} bytes."""
    if length < 126:
        return bytes((_FIN_BINARY, length))
    if length < 1 << 16:
        return struct.pack("!BBH", _FIN_BINARY, 126, length)
    return struct.pack("!BBQ", _FIN_BINARY, 127, length)
