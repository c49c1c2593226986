"""Strict key exchange (OpenSSH's C{kex-strict-s-v00@openssh.com}), the fix
for the Terrapin attack (CVE-2023-48795), which Conch lacks.

Terrapin: a man in the middle adds packets during the initial key exchange
and deletes as many after it; without strict key exchange the sequence
numbers still line up, so nobody notices that, say, the server's EXT_INFO
is gone.  chacha20-poly1305 (whose nonce is the sequence number) and the
EtM MACs are open to it.  Strict, per OpenSSH's PROTOCOL: the server
advertises the marker in its first KEXINIT, the client its own
(C{kex-strict-c-v00@openssh.com}); if both did, the initial key exchange
admits only key-exchange packets, the client's KEXINIT must be its first
packet, and each direction's sequence number restarts at 0 after every
NEWKEYS, so an added or deleted packet breaks the next one's MAC.

A client that negotiates chacha20-poly1305 without strict key exchange
(OpenSSH before 9.6, unless its distribution patched it) is refused with
one line saying what to do rather than served unsafely.
"""

from __future__ import annotations

import struct

from twisted.conch.ssh import transport
from twisted.conch.ssh.common import getNS

from podshell.gateway.ssh.ciphers import CHACHA20

STRICT_SERVER = b"kex-strict-s-v00@openssh.com"
STRICT_CLIENT = b"kex-strict-c-v00@openssh.com"

MSG_DISCONNECT = 1
MSG_KEXINIT = 20
MSG_NEWKEYS = 21
# RFC 4250 4.1.2: 20-29 key exchange in general, 30-49 the method's own.
KEX_MESSAGES = range(MSG_KEXINIT, 50)


def proposes_strict(kexinit: bytes) -> bool:
    """Whether a client's KEXINIT payload (after the message number) lists
    the strict marker among its key exchange methods.  A malformed one does
    not (Conch refuses it itself)."""
    try:
        methods, _ = getNS(kexinit[16:])
    except struct.error:
        return False
    return STRICT_CLIENT in methods.split(b",")


class StrictKexMixin:
    """Strict key exchange for a server transport.  Mixed in before Conch's
    C{SSHServerTransport} (and before anything that frames packets)."""

    supportedKeyExchanges: list[bytes]
    incomingPacketSequence: int
    outgoingPacketSequence: int

    strictKex = False
    _initialKex = True  # until the client's first NEWKEYS

    def _violation(self, why: str) -> None:
        t: transport.SSHTransportBase = self  # type: ignore[assignment]
        t.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, f"strict KEX violation: {why}".encode())

    def sendKexInit(self) -> None:
        # The marker goes only into the first KEXINIT, and never among the
        # methods that negotiation could pick.
        if not self._initialKex:
            super().sendKexInit()  # type: ignore[misc]
            return
        methods = self.supportedKeyExchanges
        self.supportedKeyExchanges = [*methods, STRICT_SERVER]
        try:
            super().sendKexInit()  # type: ignore[misc]
        finally:
            self.supportedKeyExchanges = methods

    def ssh_KEXINIT(self, packet: bytes) -> None:
        t: transport.SSHTransportBase = self  # type: ignore[assignment]
        if self._initialKex and not self.strictKex:
            self.strictKex = proposes_strict(packet)
            if self.strictKex and self.incomingPacketSequence != 1:
                self._violation("KEXINIT was not the first packet")
                return
        super().ssh_KEXINIT(packet)  # type: ignore[misc]
        negotiated = getattr(t, "nextEncryptions", None)
        if (
            not self.strictKex
            and negotiated is not None
            and not getattr(t.transport, "disconnecting", False)
            and CHACHA20 in (negotiated.outCipType, negotiated.inCipType)
        ):
            t.sendDisconnect(
                transport.DISCONNECT_KEY_EXCHANGE_FAILED,
                b"podshell: chacha20-poly1305 needs strict key exchange (OpenSSH 9.6 or later); "
                b"update the client or choose another cipher (ssh -c aes128-gcm@openssh.com)",
            )

    def dispatchMessage(self, messageNum: int, payload: bytes) -> None:
        if self.strictKex and self._initialKex and messageNum not in KEX_MESSAGES and messageNum != MSG_DISCONNECT:
            self._violation(f"unexpected packet type {messageNum} during the initial key exchange")
            return
        super().dispatchMessage(messageNum, payload)  # type: ignore[misc]

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        super().sendPacket(messageType, payload)  # type: ignore[misc]
        if messageType == MSG_NEWKEYS and self.strictKex:
            self.outgoingPacketSequence = 0

    def ssh_NEWKEYS(self, packet: bytes) -> None:
        if self.strictKex:
            self.incomingPacketSequence = 0
        self._initialKex = False
        super().ssh_NEWKEYS(packet)  # type: ignore[misc]
