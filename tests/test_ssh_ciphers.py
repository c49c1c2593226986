"""The AEAD ciphers as OpenSSH frames them, and the configured cipher list."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from podshell.gateway.ssh.ciphers import AEAD, GCM, ChaCha20Poly1305, Forged

from .conftest import needs_root, pod
from .sshserver import Client, PodshellServer, keygen


def _pair(kind: str) -> tuple[AEAD, AEAD]:
    if kind == "gcm":
        key, iv = os.urandom(16), os.urandom(12)
        return GCM(key, iv), GCM(key, iv)
    key = os.urandom(64)
    return ChaCha20Poly1305(key), ChaCha20Poly1305(key)


@pytest.mark.parametrize("kind", ["gcm", "chacha20"])
def test_aead_packets_round_trip_and_tampering_is_caught(kind):
    sender, receiver = _pair(kind)
    for seq, size in enumerate((0, 1, 2, 3, 7, 11, 12, 27, 32768, 32769)):
        packet = b"".join(sender.seal(seq, b"p" * size))
        header, sealed = packet[:4], packet[4:]
        body_length = receiver.length(seq, header)
        assert len(sealed) == body_length + 16
        assert body_length % sender.block == 0 and body_length - 1 - size >= 4  # the padding rule
        assert receiver.open(seq, header, sealed) == b"p" * size
    for seq, head in enumerate((b"", b"^", b"^^^^^")):  # the message type before the data, unjoined
        sender, receiver = _pair(kind)
        data = os.urandom(32768 + 2 * seq + 1)
        packet = b"".join(sender.seal(seq, data, head))
        assert receiver.open(seq, packet[:4], packet[4:]) == head + data
    packet = b"".join(sender.seal(10, b"secret"))
    with pytest.raises(Forged):  # one bit flipped in the tag
        receiver.open(10, packet[:4], packet[4:-1] + bytes((packet[-1] ^ 1,)))
    packet = b"".join(sender.seal(11, b"secret"))
    with pytest.raises(Forged):  # the length changed: it is authenticated too
        receiver.open(11, bytes((packet[0] ^ 1,)) + packet[1:4], packet[4:])


@pytest.mark.parametrize("kind", ["gcm", "chacha20"])
def test_a_replayed_packet_is_caught(kind):
    sender, receiver = _pair(kind)
    packet = b"".join(sender.seal(0, b"once"))
    assert receiver.open(0, packet[:4], packet[4:]) == b"once"
    with pytest.raises(Forged):  # GCM's counter, chacha20's sequence number has moved on
        receiver.open(1, packet[:4], packet[4:])


def test_chacha20_hides_the_length_and_follows_the_sequence_number():
    sender, receiver = _pair("chacha20")
    first, second = (b"".join(sender.seal(seq, b"same")) for seq in (0, 1))
    assert first[:4] != second[:4] and receiver.length(0, first[:4]) == receiver.length(1, second[:4])
    assert receiver.length(0, first[:4]) != int.from_bytes(first[:4], "big")  # not in clear


def test_chacha20_matches_openssl_chacha20():
    """The keystream is ChaCha20's with the 64-bit nonce (the sequence
    number) and block counter OpenSSH uses, checked against the IETF
    variant's: a zero high counter word, the nonce after it."""
    key = os.urandom(64)
    sealed = b"".join(ChaCha20Poly1305(key).seal(7, b"x" * 100)[1:-1])  # between the header and the tag
    stream = Cipher(algorithms.ChaCha20(key[:32], (1).to_bytes(4, "little") + bytes(4) + (7).to_bytes(8, "big")), None)
    body = stream.decryptor().update(sealed)
    padding = body[0]
    assert body[1:-padding] == b"x" * 100


def test_the_counter_wraps_like_openssh():
    gcm = GCM(os.urandom(16), b"\0" * 4 + b"\xff" * 8)
    gcm.seal(0, b"x")
    assert gcm.counter == 0


@contextlib.contextmanager
def _server(tmp_path, ciphers: list[str] | None = None) -> Iterator[Client]:
    key = keygen(tmp_path / "id")
    server = PodshellServer(
        tmp_path,
        [pod("p", {"name": "main", "command": ["sleep", "3600"]})],
        [{"name": "a", "ssh_keys": [key]}],
        [{"subjects": ["user:a"], "verbs": ["*"], "namespaces": ["*"]}],
        ciphers=ciphers,
    )
    try:
        server.wait_ready(containers=1)
        yield Client(server, tmp_path / "id")
    finally:
        server.stop()


@needs_root
@pytest.mark.parametrize(
    ("ciphers", "client", "negotiated"),
    [
        (None, [], "chacha20-poly1305@openssh.com"),  # OpenSSH's first choice, with strict kex
        (None, ["-c", "aes128-gcm@openssh.com"], "aes128-gcm@openssh.com"),
        (None, ["-c", "aes256-gcm@openssh.com"], "aes256-gcm@openssh.com"),
        (["aes128-ctr"], [], "aes128-ctr"),  # CTR with HMAC, when configured
    ],
)
def test_ciphers_openssh_negotiates(tmp_path, ciphers, client, negotiated):
    data = os.urandom((12 << 20) + 4099)  # both ways, across many packets and window adjusts, an odd size
    with _server(tmp_path, ciphers) as ssh:
        r = ssh.ssh("default.p", "cat", *client, "-vvv", input=data)
    assert f"cipher: {negotiated}".encode() in r.stderr
    # OpenSSH saw our marker: sequence numbers restart after NEWKEYS, which
    # chacha20-poly1305's nonce (the sequence number) would not survive if wrong.
    assert b"will use strict KEX ordering" in r.stderr
    assert hashlib.sha256(r.stdout).hexdigest() == hashlib.sha256(data).hexdigest()


@needs_root
def test_a_client_without_a_common_cipher_is_refused(tmp_path):
    with _server(tmp_path) as ssh:
        r = ssh.ssh("default.p", "true", "-c", "aes128-ctr", "-o", "LogLevel=INFO")
    assert r.returncode == 255 and b"no matching cipher found" in r.stderr
