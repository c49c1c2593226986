"""SSH packet protection beyond what Conch ships: the AEAD ciphers OpenSSH
prefers, AES-GCM (aes128-gcm@openssh.com, aes256-gcm@openssh.com, RFC 5647
as OpenSSH frames it) and chacha20-poly1305@openssh.com, and one-shot HMACs
for the CTR ciphers.

Why: in a bulk download the server's CPU went a quarter to building an
C{hmac.HMAC} object per packet and a third to HMAC-SHA2 itself; an AEAD in
OpenSSL seals a 32 KiB packet several times faster than CTR plus HMAC, in
one call.  chacha20-poly1305 is every OpenSSH client's first choice; it is
open to the Terrapin attack unless the key exchange is strict, so the
transport (L{podshell.gateway.ssh.strictkex}) refuses it without.

Both keep the 4-byte packet length apart from the sealed body (padding
length, payload, padding) and its 16-byte tag; the MAC negotiated alongside
is not used.  AES-GCM sends the length in clear as the additional
authenticated data; its nonce is the first 12 bytes of the derived IV, the
last 8 a counter incremented per packet.  chacha20-poly1305 encrypts the
length with a key of its own; its nonce is the packet's sequence number.
"""

from __future__ import annotations

import hmac
import struct
from typing import Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.poly1305 import Poly1305
from twisted.conch.ssh import transport

from podshell.core.twisted_private import held_for_key_exchange

CHACHA20 = b"chacha20-poly1305@openssh.com"
GCM_KEY_SIZES = {b"aes128-gcm@openssh.com": 16, b"aes256-gcm@openssh.com": 32}
AEAD_CIPHERS = [CHACHA20, *GCM_KEY_SIZES]
CTR = [b"aes128-ctr", b"aes192-ctr", b"aes256-ctr"]
TAG = 16
MAX_PACKET = 1 << 20  # what Conch allows too


class Forged(Exception):
    """A packet whose tag does not match: altered, replayed or misframed."""


class BadPadding(ValueError):
    """An authentic packet whose padding length makes no sense."""


def _padding(length: int, block: int) -> int:
    """How much padding a payload of C{length} bytes takes, as RFC 4253 6
    pads it when the packet length is not counted in the blocks (OpenSSH's
    AEAD framing).  Encrypted and authenticated, the padding need not be
    random."""
    padding = block - (1 + length) % block
    return padding + block if padding < 4 else padding


def _payload(body: bytes) -> bytes:
    padding = body[0]
    if padding < 4 or padding >= len(body):
        raise BadPadding(f"bad padding length {padding}")
    return body[1:-padding]


class AEAD(Protocol):
    """One direction of an AEAD cipher.  C{seq} is the packet's sequence
    number, which one cipher uses as its nonce and the other ignores."""

    block: int

    def seal(self, seq: int, payload: bytes, head: bytes = b"") -> tuple[bytes, ...]:
        """A whole packet for the payload C{head + payload}, in pieces (so
        the 32 KiB of channel data is not copied to put the message type
        before it): the 4-byte length header first."""

    def length(self, seq: int, header: bytes) -> int:
        """The packet length its 4-byte header says."""

    def open(self, seq: int, header: bytes, sealed: bytes) -> bytes:
        """The payload of a packet, from its header and the sealed body and
        tag (raises L{Forged} or L{BadPadding})."""


class GCM:
    """One direction of AES-GCM: the key and the per-packet nonce."""

    block = 16

    def __init__(self, key: bytes, iv: bytes) -> None:
        self.aead = AESGCM(key)
        self.fixed = iv[:4]
        self.counter = int.from_bytes(iv[4:12], "big")

    def _nonce(self) -> bytes:
        nonce = self.fixed + self.counter.to_bytes(8, "big")
        self.counter = (self.counter + 1) & 0xFFFFFFFFFFFFFFFF
        return nonce

    def seal(self, seq: int, payload: bytes, head: bytes = b"") -> tuple[bytes, ...]:
        padding = _padding(len(head) + len(payload), self.block)
        body = b"".join((bytes((padding,)), head, payload, bytes(padding)))
        header = struct.pack(">L", len(body))
        return header, self.aead.encrypt(self._nonce(), body, header)

    def length(self, seq: int, header: bytes) -> int:
        return int.from_bytes(header, "big")

    def open(self, seq: int, header: bytes, sealed: bytes) -> bytes:
        try:
            body = self.aead.decrypt(self._nonce(), sealed, header)
        except InvalidTag:
            raise Forged() from None
        return _payload(body)


class ChaCha20Poly1305:
    """One direction of chacha20-poly1305@openssh.com (OpenSSH's
    PROTOCOL.chacha20poly1305): of the 64-byte key, the first half encrypts
    the body and makes the one-time Poly1305 key (keystream block 0, the
    body from block 1), the second half encrypts the length."""

    block = 8

    def __init__(self, key: bytes) -> None:
        self.main, self.header = key[:32], key[32:64]

    @staticmethod
    def _stream(key: bytes, seq: int):  # a CipherContext
        # OpenSSL's 16-byte ChaCha20 IV: the 64-bit little-endian block
        # counter, then OpenSSH's 64-bit nonce, the big-endian sequence number.
        return Cipher(algorithms.ChaCha20(key, bytes(8) + seq.to_bytes(8, "big")), mode=None).encryptor()

    def seal(self, seq: int, payload: bytes, head: bytes = b"") -> tuple[bytes, ...]:
        padding = _padding(len(head) + len(payload), self.block)
        header = self._stream(self.header, seq).update(struct.pack(">L", 1 + len(head) + len(payload) + padding))
        stream = self._stream(self.main, seq)
        mac = Poly1305(stream.update(bytes(64))[:32])
        # A stream cipher: the body sealed in pieces is the body sealed whole.
        first = stream.update(bytes((padding,)) + head)
        pieces = (header, first, stream.update(payload), stream.update(bytes(padding)))
        for piece in pieces:
            mac.update(piece)
        return *pieces, mac.finalize()

    def length(self, seq: int, header: bytes) -> int:
        return int.from_bytes(self._stream(self.header, seq).update(header), "big")

    def open(self, seq: int, header: bytes, sealed: bytes) -> bytes:
        stream = self._stream(self.main, seq)  # XOR: decrypting is encrypting
        mac = Poly1305(stream.update(bytes(64))[:32])
        mac.update(header)
        mac.update(sealed[:-TAG])
        try:
            mac.verify(sealed[-TAG:])
        except InvalidSignature:
            raise Forged() from None
        return _payload(stream.update(sealed[:-TAG]))


def _aead(name: bytes, key: bytes, iv: bytes) -> AEAD | None:
    if name == CHACHA20:
        return ChaCha20Poly1305(key)
    if name in GCM_KEY_SIZES:
        return GCM(key[: GCM_KEY_SIZES[name]], iv)
    return None


class Ciphers(transport.SSHCiphers):
    """Conch's cipher state, plus the AEADs and faster MACs."""

    outAEAD: AEAD | None = None
    inAEAD: AEAD | None = None

    def setKeys(self, outIV: bytes, outKey: bytes, inIV: bytes, inKey: bytes, outInteg: bytes, inInteg: bytes) -> None:
        names = (self.outCipType, self.inCipType, self.outMACType, self.inMACType)
        # Conch sets up whatever is not an AEAD; an AEAD direction has no cipher or MAC of Conch's.
        if self.outCipType in AEAD_CIPHERS:
            self.outCipType = self.outMACType = b"none"
        if self.inCipType in AEAD_CIPHERS:
            self.inCipType = self.inMACType = b"none"
        super().setKeys(outIV, outKey, inIV, inKey, outInteg, inInteg)
        self.outCipType, self.inCipType, self.outMACType, self.inMACType = names
        self.outAEAD = _aead(self.outCipType, outKey, outIV)
        self.inAEAD = _aead(self.inCipType, inKey, inIV)

    def makeMAC(self, seqid: int, data: bytes) -> bytes:
        if not self.outMAC[0]:
            return b""
        return hmac.digest(self.outMAC.key, struct.pack(">L", seqid) + data, self.outMAC[0])

    def verify(self, seqid: int, data: bytes, mac: bytes) -> bool:
        if not self.inMAC[0]:
            return mac == b""
        expected = hmac.digest(self.inMAC.key, struct.pack(">L", seqid) + data, self.inMAC[0])
        return hmac.compare_digest(mac, expected)


class AEADTransportMixin:
    """Packet framing for AEAD directions; Conch's own for the rest.  Mixed
    into an C{SSHTransportBase} subclass."""

    currentEncryptions: transport.SSHCiphers
    buf: bytes
    # The length of the packet at the head of C{buf}, once its header is in:
    # chacha20-poly1305 would decrypt it again on every read until the rest is.
    _aeadLength: int | None = None

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        aead: AEAD | None = getattr(self.currentEncryptions, "outAEAD", None)
        if aead is None:
            super().sendPacket(messageType, payload)  # type: ignore[misc]
            return
        t: transport.SSHTransportBase = self  # type: ignore[assignment]
        if held_for_key_exchange(t, messageType, payload):
            return
        head = bytes((messageType,))
        if t.outgoingCompression:
            head, payload = b"", t.outgoingCompression.compress(head + payload) + t.outgoingCompression.flush(2)
        assert t.transport is not None
        t.transport.writeSequence(aead.seal(t.outgoingPacketSequence, payload, head))
        t.outgoingPacketSequence = (t.outgoingPacketSequence + 1) & 0xFFFFFFFF

    def getPacket(self) -> bytes | None:
        aead: AEAD | None = getattr(self.currentEncryptions, "inAEAD", None)
        if aead is None:
            return super().getPacket()  # type: ignore[misc]
        t: transport.SSHTransportBase = self  # type: ignore[assignment]
        if len(self.buf) < 4:
            return None
        length = self._aeadLength
        if length is None:
            length = aead.length(t.incomingPacketSequence, self.buf[:4])
            if length > MAX_PACKET or length % aead.block or not length:
                t.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, b"bad packet length %d" % length)
                return None
        end = 4 + length + TAG
        if len(self.buf) < end:
            self._aeadLength = length
            return None
        self._aeadLength = None
        header, sealed, self.buf = self.buf[:4], self.buf[4:end], self.buf[end:]
        try:
            payload = aead.open(t.incomingPacketSequence, header, sealed)
        except Forged:
            t.sendDisconnect(transport.DISCONNECT_MAC_ERROR, b"bad MAC")
            return None
        except BadPadding as e:
            t.sendDisconnect(transport.DISCONNECT_PROTOCOL_ERROR, str(e).encode())
            return None
        if t.incomingCompression:
            try:
                payload = t.incomingCompression.decompress(payload)
            except Exception:
                t.sendDisconnect(transport.DISCONNECT_COMPRESSION_ERROR, b"compression error")
                return None
        t.incomingPacketSequence = (t.incomingPacketSequence + 1) & 0xFFFFFFFF
        return payload
