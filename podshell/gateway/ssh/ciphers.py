"""SSH packet protection beyond what Conch ships: AES-GCM
(aes128-gcm@openssh.com, aes256-gcm@openssh.com, RFC 5647 as OpenSSH
frames it) and one-shot HMACs for the CTR ciphers.

Why: in a bulk download the server's CPU went a quarter to building an
C{hmac.HMAC} object per packet and a third to HMAC-SHA2 itself; AES-GCM in
OpenSSL (AES-NI, PCLMUL) seals a 32 KiB packet several times faster than
CTR plus HMAC, in one call.  GCM is also untouched by the Terrapin attack,
unlike chacha20-poly1305 without strict key exchange (which Conch lacks).

OpenSSH's GCM framing: the 4-byte packet length travels in clear as the
additional authenticated data; padding length, payload and padding are
sealed with a 16-byte tag; the nonce is the first 12 bytes of the derived
IV, its last 8 bytes a counter incremented per packet.  The MAC negotiated
alongside is not used.
"""

from __future__ import annotations

import hmac
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from twisted.conch.ssh import transport

from podshell.core.twisted_private import held_for_key_exchange

GCM_KEY_SIZES = {b"aes128-gcm@openssh.com": 16, b"aes256-gcm@openssh.com": 32}
CTR = [b"aes128-ctr", b"aes192-ctr", b"aes256-ctr"]
TAG = 16
MAX_PACKET = 1 << 20  # what Conch allows too


class GCM:
    """One direction of AES-GCM: the key and the per-packet nonce."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        self.aead = AESGCM(key)
        self.fixed = iv[:4]
        self.counter = int.from_bytes(iv[4:12], "big")

    def _nonce(self) -> bytes:
        nonce = self.fixed + self.counter.to_bytes(8, "big")
        self.counter = (self.counter + 1) & 0xFFFFFFFFFFFFFFFF
        return nonce

    def seal(self, payload: bytes) -> tuple[bytes, bytes]:
        """A whole packet for C{payload}: its length, then the sealed body and
        tag (two pieces, so the transport need not copy them together)."""
        padding = 16 - (1 + len(payload)) % 16
        if padding < 4:
            padding += 16
        # Encrypted and authenticated, the padding need not be random.
        body = bytes((padding,)) + payload + bytes(padding)
        length = struct.pack(">L", len(body))
        return length, self.aead.encrypt(self._nonce(), body, length)

    def open(self, length: bytes, sealed: bytes) -> bytes:
        """The payload of a packet (raises L{InvalidTag} or ValueError)."""
        body = self.aead.decrypt(self._nonce(), sealed, length)
        padding = body[0]
        if padding < 4 or padding >= len(body):
            raise ValueError(f"bad padding length {padding}")
        return body[1:-padding]


class Ciphers(transport.SSHCiphers):
    """Conch's cipher state, plus GCM and faster MACs."""

    outGCM: GCM | None = None
    inGCM: GCM | None = None

    def setKeys(self, outIV: bytes, outKey: bytes, inIV: bytes, inKey: bytes, outInteg: bytes, inInteg: bytes) -> None:
        names = (self.outCipType, self.inCipType, self.outMACType, self.inMACType)
        # Conch sets up whatever is not GCM; a GCM direction has no cipher or MAC of Conch's.
        if self.outCipType in GCM_KEY_SIZES:
            self.outCipType = self.outMACType = b"none"
        if self.inCipType in GCM_KEY_SIZES:
            self.inCipType = self.inMACType = b"none"
        super().setKeys(outIV, outKey, inIV, inKey, outInteg, inInteg)
        self.outCipType, self.inCipType, self.outMACType, self.inMACType = names
        if self.outCipType in GCM_KEY_SIZES:
            self.outGCM = GCM(outKey[: GCM_KEY_SIZES[self.outCipType]], outIV)
        if self.inCipType in GCM_KEY_SIZES:
            self.inGCM = GCM(inKey[: GCM_KEY_SIZES[self.inCipType]], inIV)

    def makeMAC(self, seqid: int, data: bytes) -> bytes:
        if not self.outMAC[0]:
            return b""
        return hmac.digest(self.outMAC.key, struct.pack(">L", seqid) + data, self.outMAC[0])

    def verify(self, seqid: int, data: bytes, mac: bytes) -> bool:
        if not self.inMAC[0]:
            return mac == b""
        expected = hmac.digest(self.inMAC.key, struct.pack(">L", seqid) + data, self.inMAC[0])
        return hmac.compare_digest(mac, expected)


class GCMTransportMixin:
    """Packet framing for GCM directions; Conch's own for the rest.  Mixed
    into an C{SSHTransportBase} subclass."""

    currentEncryptions: transport.SSHCiphers
    buf: bytes

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        gcm: GCM | None = getattr(self.currentEncryptions, "outGCM", None)
        if gcm is None:
            super().sendPacket(messageType, payload)  # type: ignore[misc]
            return
        t: transport.SSHTransportBase = self  # type: ignore[assignment]
        if held_for_key_exchange(t, messageType, payload):
            return
        data = bytes((messageType,)) + payload
        if t.outgoingCompression:
            data = t.outgoingCompression.compress(data) + t.outgoingCompression.flush(2)
        assert t.transport is not None
        t.transport.writeSequence(gcm.seal(data))
        t.outgoingPacketSequence += 1

    def getPacket(self) -> bytes | None:
        gcm: GCM | None = getattr(self.currentEncryptions, "inGCM", None)
        if gcm is None:
            return super().getPacket()  # type: ignore[misc]
        t: transport.SSHTransportBase = self  # type: ignore[assignment]
        if len(self.buf) < 4:
            return None
        (length,) = struct.unpack(">L", self.buf[:4])
        if length > MAX_PACKET or length % 16 or not length:
            t.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"bad packet length %d" % length)
            return None
        end = 4 + length + TAG
        if len(self.buf) < end:
            return None
        header, sealed, self.buf = self.buf[:4], self.buf[4:end], self.buf[end:]
        try:
            payload = gcm.open(header, sealed)
        except InvalidTag:
            t.sendDisconnect(transport.DISCONNECT_MAC_ERROR, b"bad MAC")
            return None
        except ValueError as e:
            t.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, str(e).encode())
            return None
        if t.incomingCompression:
            try:
                payload = t.incomingCompression.decompress(payload)
            except Exception:
                t.sendDisconnect(transport.DISCONNECT_COMPRESSION_ERROR, b"compression error")
                return None
        t.incomingPacketSequence += 1
        return payload
