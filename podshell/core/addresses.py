"""How peers are written in logs, audit records and policy checks."""

from __future__ import annotations

import ipaddress
import socket

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress, ISystemHandle


def host_port(address: IAddress) -> str:
    """C{1.2.3.4:56} or C{[::1]:56}; other kinds of address as Twisted shows them."""
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    return str(address)


def join(host: str, port: int) -> str:
    """C{host:port}, with an IPv6 address in brackets as OpenSSH writes it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ip_of(peer: str) -> str:
    """The IP address in C{host:port} or C{[v6]:port}."""
    return peer.rsplit(":", 1)[0].strip("[]") if ":" in peer else peer


def pod_loopback(host: str) -> bool:
    """Whether C{host} is on a pod's own loopback, the only interface a pod
    has: C{localhost}, 127.0.0.0/8, C{::1} (or 127.x as C{::ffff:127.x}).
    Other names are not resolved (the gateway's resolver knows nothing of the
    pod), and any other address is outside the pod: forwarding there would
    make podshell an open proxy from wherever it runs."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def port_of(address: IAddress) -> int:
    """The port of a TCP address."""
    assert isinstance(address, IPv4Address | IPv6Address), address
    return address.port


def set_no_delay(transport: object) -> None:
    """TCP_NODELAY on a TCP (or TLS-over-TCP) transport; others are left alone."""
    sock = _tcp_socket(transport)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _tcp_socket(transport: object) -> socket.socket | None:
    """The TCP socket under a transport (through TLS and wrappers), if any."""
    while transport is not None:
        # TCP's handle is its socket; TLS's is its OpenSSL connection, and the
        # TCP transport it wraps is its .transport.
        sock = transport.getHandle() if ISystemHandle.providedBy(transport) else None
        if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
            return sock
        transport = getattr(transport, "transport", None)
    return None


def set_keepalive(transport: object, idle: int = 5, interval: int = 2, count: int = 3) -> None:
    """TCP keepalive probes after C{idle} seconds of silence, so a peer that
    vanished without a FIN is noticed in about C{idle + interval * count}
    seconds, not the kernel's two hours."""
    sock = _tcp_socket(transport)
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, idle)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, interval)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)


def ack_now(transport: object) -> None:
    """Acknowledge what was just read at once instead of after the delayed-ACK
    timer (up to 40 ms), for a peer whose next small segment Nagle's algorithm
    holds until then: an SSH client during key exchange and authentication."""
    sock = _tcp_socket(transport)
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)


class PortRefused(ConnectionRefusedError):
    """Nothing listens on the port inside the pod."""
