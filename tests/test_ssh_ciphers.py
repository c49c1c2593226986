"""AES-GCM as OpenSSH frames it, and the configured cipher list."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator

import pytest
from cryptography.exceptions import InvalidTag

from podshell.gateway.ssh.ciphers import GCM

from .conftest import needs_root, pod
from .sshserver import Client, PodshellServer, keygen


def test_gcm_packets_round_trip_and_tampering_is_caught():
    key, iv = os.urandom(16), os.urandom(12)
    sender, receiver = GCM(key, iv), GCM(key, iv)
    for size in (0, 1, 11, 12, 27, 32768):
        packet = b"".join(sender.seal(b"p" * size))
        length, sealed = packet[:4], packet[4:]
        body_length = int.from_bytes(length, "big")
        assert body_length % 16 == 0 and body_length - 1 - size >= 4  # the padding rule
        assert receiver.open(length, sealed) == b"p" * size
    packet = b"".join(sender.seal(b"secret"))
    with pytest.raises(InvalidTag):
        receiver.open(packet[:4], packet[4:-1] + bytes((packet[-1] ^ 1,)))
    with pytest.raises(InvalidTag):  # a replayed packet: the nonce has moved on
        GCM(key, iv).open(packet[:4], packet[4:])


def test_the_counter_wraps_like_openssh():
    gcm = GCM(os.urandom(16), b"\0" * 4 + b"\xff" * 8)
    gcm.seal(b"x")
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
        (None, [], "aes128-gcm@openssh.com"),  # OpenSSH's default list meets ours
        (None, ["-c", "aes256-gcm@openssh.com"], "aes256-gcm@openssh.com"),
        (["aes128-ctr"], [], "aes128-ctr"),  # CTR with HMAC, when configured
    ],
)
def test_ciphers_openssh_negotiates(tmp_path, ciphers, client, negotiated):
    data = os.urandom(1 << 20)
    with _server(tmp_path, ciphers) as ssh:
        r = ssh.ssh("default.p", "sha256sum", *client, "-v", input=data)
    assert f"cipher: {negotiated}".encode() in r.stderr
    assert r.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()


@needs_root
def test_a_client_without_a_common_cipher_is_refused(tmp_path):
    with _server(tmp_path) as ssh:
        r = ssh.ssh("default.p", "true", "-c", "aes128-ctr", "-o", "LogLevel=INFO")
    assert r.returncode == 255 and b"no matching cipher found" in r.stderr
