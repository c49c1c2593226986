"""Strict key exchange (the Terrapin fix) on a fake connection: what the
server advertises, and how it treats a client that breaks the rules."""

from __future__ import annotations

import os
import struct

from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.conch.ssh import transport
from twisted.conch.ssh.common import NS
from twisted.conch.ssh.keys import Key
from twisted.cred.portal import Portal
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from podshell.gateway.ssh.server import PodSSHFactory
from podshell.gateway.ssh.strictkex import STRICT_CLIENT, STRICT_SERVER, proposes_strict

MSG_IGNORE = 2


def _server() -> tuple[transport.SSHServerTransport, StringTransport]:
    key = Key(ed25519.Ed25519PrivateKey.generate())
    factory = PodSSHFactory(Portal(None), [key])  # type: ignore[arg-type]
    factory.startFactory()
    t = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    wire = StringTransport()
    t.makeConnection(wire)
    t.dataReceived(b"SSH-2.0-OpenSSH_9.9\r\n")
    return t, wire


def _packet(message: int, payload: bytes) -> bytes:
    """An unencrypted packet, as before the first NEWKEYS."""
    data = bytes((message,)) + payload
    padding = 8 - (5 + len(data)) % 8
    if padding < 4:
        padding += 8
    return struct.pack(">LB", 1 + len(data) + padding, padding) + data + bytes(padding)


def _kexinit(kex: list[bytes], cipher: bytes = b"aes128-gcm@openssh.com") -> bytes:
    lists = [kex, [b"ssh-ed25519"], [cipher], [cipher], [b"hmac-sha2-256"], [b"hmac-sha2-256"], [b"none"], [b"none"]]
    return _packet(20, os.urandom(16) + b"".join(NS(b",".join(x)) for x in lists) + NS(b"") * 2 + b"\0" + bytes(4))


def test_the_first_kexinit_advertises_strict_kex_but_it_is_no_method():
    t, wire = _server()
    sent = wire.value().split(b"\r\n", 1)[1]
    assert proposes_strict(sent[6:].replace(STRICT_SERVER, STRICT_CLIENT))
    assert STRICT_SERVER not in t.supportedKeyExchanges
    t.dataReceived(_kexinit([STRICT_SERVER]))  # a client that tries to negotiate the marker
    assert wire.disconnecting


def test_a_strict_client_whose_first_packet_is_not_kexinit_is_refused():
    t, wire = _server()
    t.dataReceived(_packet(MSG_IGNORE, NS(b"")) + _kexinit([b"curve25519-sha256", STRICT_CLIENT]))
    assert wire.disconnecting
    assert b"strict KEX violation: KEXINIT was not the first packet" in wire.value()


def test_a_strict_client_may_send_nothing_but_key_exchange_until_newkeys():
    t, wire = _server()
    t.dataReceived(_kexinit([b"curve25519-sha256", STRICT_CLIENT]))
    assert t.strictKex and not wire.disconnecting
    t.dataReceived(_packet(MSG_IGNORE, NS(b"injected")))
    assert wire.disconnecting
    assert b"strict KEX violation: unexpected packet type 2" in wire.value()


def test_a_client_without_strict_kex_keeps_the_old_rules_for_aes_gcm():
    t, wire = _server()
    t.dataReceived(_packet(MSG_IGNORE, NS(b"")) + _kexinit([b"curve25519-sha256"]))
    assert not t.strictKex and not wire.disconnecting


def test_chacha20_without_strict_kex_is_refused_with_what_to_do():
    t, wire = _server()
    t.dataReceived(_kexinit([b"curve25519-sha256"], b"chacha20-poly1305@openssh.com"))
    assert wire.disconnecting
    assert b"chacha20-poly1305 needs strict key exchange" in wire.value()
    assert b"ssh -c aes128-gcm@openssh.com" in wire.value()


def test_chacha20_with_strict_kex_goes_on():
    t, wire = _server()
    t.dataReceived(_kexinit([b"curve25519-sha256", STRICT_CLIENT], b"chacha20-poly1305@openssh.com"))
    assert not wire.disconnecting
