"""The sans-IO SFTP core on raw bytes, and the server's answers to them
(run here in-process on a temporary directory, as its child would run it)."""

from __future__ import annotations

import errno
import os
import random
import shlex
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from podshell.node import sftpserver
from podshell.node.confine import Capabilities
from podshell.protocols import scp, sftp
from podshell.protocols.scp import ScpCommand
from podshell.protocols.sftp import Attrs, Decoder, Init, Malformed, ProtocolError, Request, Unknown


def packet(kind: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, kind) + body


def request(kind: int, request_id: int, body: bytes = b"") -> bytes:
    return packet(kind, struct.pack(">I", request_id) + body)


def s(data: bytes) -> bytes:
    return sftp.string(data)


INIT = packet(sftp.INIT, struct.pack(">I", 3))


def started() -> Decoder:
    d = Decoder()
    assert d.feed(INIT) == [Init(3, [])]
    return d


def test_init_with_extensions_and_a_request_byte_by_byte():
    d = Decoder()
    stream = packet(sftp.INIT, struct.pack(">I", 3) + s(b"a@b") + s(b"1")) + request(sftp.STAT, 7, s(b"/etc"))
    events = []
    for i in range(len(stream)):
        events += d.feed(stream[i : i + 1])
    assert events == [Init(3, [(b"a@b", b"1")]), Request(7, sftp.STAT, (b"/etc",))]


def test_requests_with_attrs_and_extensions():
    d = started()
    attrs = Attrs(size=5, uid=1, gid=2, permissions=0o644, atime=3, mtime=4)
    stream = request(sftp.OPEN, 1, s(b"f") + struct.pack(">I", sftp.FXF_WRITE) + attrs.encode())
    stream += request(sftp.EXTENDED, 2, s(b"posix-rename@openssh.com") + s(b"a") + s(b"b"))
    stream += request(sftp.EXTENDED, 3, s(b"limits@openssh.com"))
    assert d.feed(stream) == [
        Request(1, sftp.OPEN, (b"f", sftp.FXF_WRITE, attrs)),
        Request(2, "posix-rename@openssh.com", (b"a", b"b")),
        Request(3, "limits@openssh.com", ()),
    ]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (s(b"/etc")[:-1], "stat: truncated string"),
        (s(b"/etc") + b"x", "stat: 1 bytes too many"),
        (b"\xff\xff\xff\xff", "stat: truncated string"),
        (b"", "stat: truncated uint32"),
    ],
)
def test_malformed_requests_are_bad_messages(body, reason):
    assert started().feed(request(sftp.STAT, 9, body)) == [Malformed(9, reason)]


def test_unknown_types_and_extensions():
    d = started()
    got = d.feed(request(77, 1) + request(sftp.EXTENDED, 2, s(b"nope@example.com")) + request(sftp.EXTENDED, 3))
    assert got == [
        Unknown(1, "packet type 77"),
        Unknown(2, "extension 'nope@example.com'"),
        Malformed(3, "200: truncated uint32"),
    ]


@pytest.mark.parametrize(
    "stream",
    [
        struct.pack(">I", 0),  # no type
        struct.pack(">I", sftp.MAX_PACKET + 1),
        request(sftp.STAT, 1, s(b"x")),  # before INIT
        packet(sftp.INIT, b"\0\0"),  # truncated version
    ],
)
def test_what_cannot_be_a_stream_is_a_protocol_error(stream):
    with pytest.raises(ProtocolError):
        Decoder().feed(stream)


def test_a_packet_too_short_for_an_id():
    with pytest.raises(ProtocolError):
        started().feed(packet(sftp.STAT, b"\0\0"))


WRITES = {
    sftp.REMOVE,
    sftp.RMDIR,
    sftp.SYMLINK,
    sftp.RENAME,
    sftp.SETSTAT,
    sftp.OPEN,
    sftp.MKDIR,
    "posix-rename@openssh.com",
    "hardlink@openssh.com",
    "lsetstat@openssh.com",
}


def test_fuzz_random_bytes_never_crash(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # random relative paths land here
    rng = random.Random(1234)
    server = sftpserver.Server(os.fsencode(tmp_path))
    kinds = [*range(1, 21), 200, 101, 255]
    for _ in range(3000):
        d = started()
        if rng.random() < 0.5:
            stream = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        else:  # well-framed packets of random bodies: every parser path
            body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 40)))
            if rng.random() < 0.3:
                body = body[:4] + s(rng.choice(list(sftp.EXTENSIONS)).encode()) + body[4:]
            stream = packet(rng.choice(kinds), body)
        try:
            events = d.feed(stream)
        except ProtocolError:
            continue
        for event in events:
            if isinstance(event, Request) and event.kind in WRITES:
                continue  # a random path may be absolute: nothing that changes what is there
            for reply in server.handle(event):
                assert isinstance(reply, bytes)


def replies(server, *events) -> bytes:
    return b"".join(part for e in events for part in server.handle(e))


def status_of(reply: bytes) -> tuple[int, int, str]:
    length, kind, rid, code = struct.unpack_from(">IBII", reply)
    assert kind == sftp.STATUS and length == len(reply) - 4
    n = struct.unpack_from(">I", reply, 13)[0]
    return rid, code, reply[17 : 17 + n].decode()


def test_server_errors_keep_their_codes_and_errno_texts(tmp_path):
    server = sftpserver.Server(os.fsencode(tmp_path))
    missing = os.fsencode(tmp_path / "missing")
    assert status_of(replies(server, Request(1, sftp.STAT, (missing,)))) == (
        1,
        sftp.FX_NO_SUCH_FILE,
        os.strerror(errno.ENOENT),
    )
    assert status_of(replies(server, Malformed(2, "x"))) == (2, sftp.FX_BAD_MESSAGE, "bad message: x")
    assert status_of(replies(server, Unknown(3, "y")))[1] == sftp.FX_OP_UNSUPPORTED
    assert status_of(replies(server, Request(4, sftp.CLOSE, (b"nope",))))[1] == sftp.FX_FAILURE
    assert status_of(replies(server, Request(5, sftp.STAT, (b"a\0b",))))[1] == sftp.FX_BAD_MESSAGE
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    rmdir = Request(6, sftp.RMDIR, (os.fsencode(tmp_path / "d"),))
    assert status_of(replies(server, rmdir)) == (6, sftp.FX_FAILURE, os.strerror(errno.ENOTEMPTY))


def test_server_reads_writes_and_copies(tmp_path):
    server = sftpserver.Server(os.fsencode(tmp_path))
    path = os.fsencode(tmp_path / "f")
    flags = sftp.FXF_READ | sftp.FXF_WRITE | sftp.FXF_CREAT
    reply = replies(server, Request(1, sftp.OPEN, (path, flags, Attrs(permissions=0o600))))
    handle = reply[13:]
    assert reply[4] == sftp.HANDLE
    assert status_of(replies(server, Request(2, sftp.WRITE, (handle, 3, b"abc"))))[1] == sftp.FX_OK
    data = replies(server, Request(3, sftp.READ, (handle, 0, 100)))
    assert data == sftp.data(3, b"\0\0\0abc")
    assert status_of(replies(server, Request(4, sftp.READ, (handle, 6, 100))))[1] == sftp.FX_EOF
    copy = Request(5, "copy-data", (handle, 3, 3, handle, 6))
    assert status_of(replies(server, copy))[1] == sftp.FX_OK
    assert (tmp_path / "f").read_bytes() == b"\0\0\0abcabc"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert status_of(replies(server, Request(7, "copy-data", (handle, 0, 0, handle, 3))))[1] == sftp.FX_FAILURE
    other = replies(server, Request(8, sftp.OPEN, (path + b"2", sftp.FXF_WRITE | sftp.FXF_CREAT, Attrs())))[13:]
    assert status_of(replies(server, Request(9, "copy-data", (handle, 6, 100, other, 1))))[1] == sftp.FX_OK
    assert (tmp_path / "f2").read_bytes() == b"\0abc"  # what there was, to the source's end
    assert status_of(replies(server, Request(6, sftp.CLOSE, (handle,))))[1] == sftp.FX_OK


def test_bulk_reads_and_writes_parse_and_refuse_like_the_rest():
    d = started()
    write = s(b"h") + struct.pack(">Q", 7) + s(b"data")
    read = s(b"h") + struct.pack(">QI", 9, 100)
    assert d.feed(request(sftp.WRITE, 1, write) + request(sftp.READ, 2, read)) == [
        Request(1, sftp.WRITE, (b"h", 7, b"data")),
        Request(2, sftp.READ, (b"h", 9, 100)),
    ]
    assert d.feed(request(sftp.WRITE, 3, write[:-1])) == [Malformed(3, "write: truncated string")]
    assert d.feed(request(sftp.WRITE, 4, write + b"!")) == [Malformed(4, "write: 1 bytes too many")]
    assert d.feed(request(sftp.READ, 5, read[:-2])) == [Malformed(5, "read: truncated uint32")]
    assert d.feed(request(sftp.READ, 6, b"\xff\xff\xff\xff")) == [Malformed(6, "read: truncated string")]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("scp -t /tmp/x", ScpCommand(True, False, False, False, ("/tmp/x",))),
        ("scp -v -r -p -d -t -- '/tmp/a b/'", ScpCommand(True, True, True, True, ("/tmp/a b/",))),
        ("scp -f /tmp/a /tmp/b*", ScpCommand(False, False, False, False, ("/tmp/a", "/tmp/b*"))),
        ("scp -rf x", ScpCommand(False, True, False, False, ("x",))),
        ("scp -t a b", None),
        ("scp -t -f a", None),
        ("scp -x -t a", None),
        ("scp -t /tmp/x; rm -rf /", None),
        ("scp -f $(id)", None),
        ("rsync --server -t x", None),
        ("scp -t 'unterminated", None),
        ("", None),
    ],
)
def test_legacy_scp_commands(command, expected):
    assert scp.server_args(command) == expected


def name_of(reply: bytes) -> bytes:
    assert reply[4] == sftp.NAME and struct.unpack_from(">I", reply, 9)[0] == 1
    n = struct.unpack_from(">I", reply, 13)[0]
    return reply[17 : 17 + n]


def test_expand_path_and_home_directory(tmp_path):
    home = os.fsencode(tmp_path)
    server = sftpserver.Server(home)
    (tmp_path / "x").mkdir()
    assert name_of(replies(server, Request(1, "expand-path@openssh.com", (b"~/x",)))) == home + b"/x"
    assert name_of(replies(server, Request(2, "expand-path@openssh.com", (b"~",)))) == home
    assert name_of(replies(server, Request(3, "home-directory", (b"",)))) == home
    assert name_of(replies(server, Request(4, "home-directory", (b"root",)))) == b"/root"
    assert status_of(replies(server, Request(5, "home-directory", (b"no-such-user",))))[1] == sftp.FX_NO_SUCH_FILE
    limits = replies(server, Request(6, "limits@openssh.com", ()))
    assert limits[4] == sftp.EXTENDED_REPLY and struct.unpack_from(">3Q", limits, 9) == (
        sftp.MAX_PACKET,
        sftp.MAX_READ,
        sftp.MAX_READ,
    )


def test_a_builtin_takes_the_capabilities_an_exec_would_leave():
    """podshell's servers run on in the child instead of an exec: the
    kernel's exec rules are applied to the spec's sets by hand."""
    spec = Capabilities(bounding=0b1111, effective=0b0111, permitted=0b0111, inheritable=0b10000, ambient=0)
    assert spec.after_exec(1000) == Capabilities(0b1111, 0, 0, 0b10000, 0)  # a user keeps nothing
    assert spec.after_exec(0) == Capabilities(0b1111, 0b11111, 0b11111, 0b10000, 0)  # root: bounding | inheritable
    ambient = Capabilities(bounding=0b1111, effective=0b11, permitted=0b11, inheritable=0b10, ambient=0b10)
    assert ambient.after_exec(1000) == Capabilities(0b1111, 0b10, 0b10, 0b10, 0b10)


def test_openssh_sftp_against_the_server_directly(tmp_path):
    """OpenSSH's client talking to L{sftpserver.serve} over pipes (sftp -D),
    no SSH, no pod: the server alone, with the client's own expectations."""
    if shutil.which("sftp") is None:
        pytest.fail("no OpenSSH sftp: run scripts/test-deps.sh as root, which installs openssh-client")
    server = tmp_path / "server.sh"
    code = "import os, sys; from podshell.node import sftpserver; sys.exit(sftpserver.serve(home=os.getcwdb()))"
    server.write_text(
        f"#!/bin/sh\ncd {shlex.quote(str(tmp_path))} && exec {shlex.quote(sys.executable)} -c {shlex.quote(code)}\n"
    )
    server.chmod(0o755)
    up, down = tmp_path / "up.bin", tmp_path / "down.bin"
    up.write_bytes(os.urandom(1 << 20))
    batch = f"put {up} a.bin\nrename a.bin b.bin\nln -s b.bin c.bin\nget c.bin {down}\nls -l\ndf\nrm c.bin\n"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)}
    r = subprocess.run(
        ["sftp", "-b", "-", "-D", str(server)], input=batch.encode(), capture_output=True, env=env, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert down.read_bytes() == up.read_bytes()
    assert (tmp_path / "b.bin").read_bytes() == up.read_bytes() and not (tmp_path / "c.bin").exists()
