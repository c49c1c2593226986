"""How peers are written in logs, audit records and policy checks."""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress


def host_port(address: IAddress) -> str:
    """C{1.2.3.4:56} or C{[::1]:56}; other kinds of address as Twisted shows them."""
    if isinstance(address, IPv6Address):
        return f"[{address.host}]:{address.port}"
    if isinstance(address, IPv4Address):
        return f"{address.host}:{address.port}"
    return str(address)


def ip_of(peer: str) -> str:
    """The IP address in C{host:port} or C{[v6]:port}."""
    return peer.rsplit(":", 1)[0].strip("[]") if ":" in peer else peer


def port_of(address: IAddress) -> int:
    """The port of a TCP address."""
    assert isinstance(address, IPv4Address | IPv6Address), address
    return address.port


def set_no_delay(transport: object) -> None:
    """TCP_NODELAY on a TCP (or TLS-over-TCP) transport; others are left alone."""
    while transport is not None:
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
            return
        transport = getattr(transport, "transport", None)
