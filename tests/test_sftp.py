"""podshell's own SFTP server, driven by OpenSSH's sftp and scp: in
local-runtime pods and in containerd containers, including an image with
no shell and no sftp-server, and a container of a non-root user."""

from __future__ import annotations

import os
import struct
import time

import pytest

from podshell.protocols import sftp

from .conftest import needs_root, pod
from .containerd import SHELLLESS_IMAGE, ContainerSpec
from .sshserver import Client, PodshellServer, keygen

pytestmark = needs_root
TARGET = "team-a.files"
# Sizes either side of SFTP's 16 KiB, 64 KiB and 256 KiB boundaries, a few MiB and tens of MiB (odd).
SIZES = [0, 1, 16383, 16384, 16385, 65535, 65536, 65537, 262143, 262144, 262145, 7 << 20, (37 << 20) + 11]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("sftp")
    key = keygen(root / "id_alice")
    pods = [pod("files", {"name": "main", "command": ["sleep", "3600"]}, namespace="team-a")]
    users = [{"name": "alice", "ssh_keys": [key]}]
    policy = [{"subjects": ["user:alice"], "verbs": ["*"], "namespaces": ["*"]}]
    srv = PodshellServer(root, pods, users, policy)
    try:
        srv.wait_ready(containers=1)
        srv.client = Client(srv, root / "id_alice")
        yield srv
    finally:
        srv.stop()


def check(r) -> str:
    assert r.returncode == 0, (r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace"))
    return r.stdout.decode(errors="replace")


def batch_script(up, down, remote: str) -> str:
    """Every command of OpenSSH's sftp that podshell's server answers."""
    half = up.parent / "half.bin"
    half.write_bytes(up.read_bytes()[: len(up.read_bytes()) // 2])
    return f"""\
mkdir {remote}
cd {remote}
put {half} f.bin
reput {up} f.bin
get f.bin {down}.partial
get f.bin {down}
ls -l
rename f.bin g.bin
ln g.bin hard.bin
ln -s g.bin soft.bin
put -f {half} fsynced.bin
chmod -h 640 g.bin
chmod 600 g.bin
rm fsynced.bin
ls -l
df -h
df -i .
-mkdir {remote}
rm hard.bin
rm soft.bin
mkdir sub
rmdir sub
"""


def raw_sftp(client: Client, target: str, stream: bytes):
    """The SFTP subsystem fed C{stream} as it is (after SSH_FXP_INIT): its raw replies."""
    init = struct.pack(">IBI", 5, sftp.INIT, 3)
    return client.ssh(target, "sftp", "-s", input=init + stream)


def open_request(request_id: int, path: bytes) -> bytes:
    body = struct.pack(">BI", sftp.OPEN, request_id) + sftp.string(path)
    body += struct.pack(">I", sftp.FXF_WRITE | sftp.FXF_CREAT) + sftp.Attrs().encode()
    return struct.pack(">I", len(body)) + body


def replies(stream: bytes) -> list[tuple]:
    """(type, id, code, message) of status replies, (type,) of others; VERSION first."""
    out: list[tuple] = []
    while stream:
        length, kind = struct.unpack_from(">IB", stream)
        body, stream = stream[5 : 4 + length], stream[4 + length :]
        if kind == sftp.STATUS:
            rid, code, n = struct.unpack_from(">III", body)
            out.append((kind, rid, code, body[12 : 12 + n].decode()))
        else:
            out.append((kind,))
    return out


def test_raw_stream_errors_and_exit_status(server):
    stream = open_request(1, b"/nonexistent/dir/file")
    stream += struct.pack(">IBI", 6, sftp.STAT, 2) + b"\xff"  # truncated path length
    stream += struct.pack(">IBI", 5, 99, 3)  # an unknown type
    got = raw_sftp(server.client, TARGET, stream)
    assert got.returncode == 0
    assert replies(got.stdout) == [
        (sftp.VERSION_PACKET,),
        (sftp.STATUS, 1, sftp.FX_NO_SUCH_FILE, "No such file or directory"),
        (sftp.STATUS, 2, sftp.FX_BAD_MESSAGE, "bad message: stat: truncated uint32"),
        (sftp.STATUS, 3, sftp.FX_OP_UNSUPPORTED, "unsupported packet type 99"),
    ]
    # Not a stream at all: said on stderr, exit status 1.
    got = raw_sftp(server.client, TARGET, struct.pack(">I", 1 << 30))
    assert got.returncode == 1 and b"bad packet length" in got.stderr


def test_sftp_batch(server, tmp_path):
    ssh = server.client
    up, down = tmp_path / "up.bin", tmp_path / "down.bin"
    up.write_bytes(os.urandom(300_000))
    remote = f"/tmp/sftp-batch-{os.getpid()}"
    out = check(ssh.sftp(TARGET, batch_script(up, down, remote)))
    assert down.read_bytes() == up.read_bytes()
    assert "g.bin" in out and "Avail" in out and "Inodes" in out
    assert any(line.startswith("-rw-------") and line.endswith("g.bin") for line in out.splitlines())
    listing = check(ssh.ssh(TARGET, f"ls -l {remote}; stat -c '%a %h' {remote}/g.bin"))
    assert listing.split("\n")[-2] == "600 1"  # the hard link is gone again
    # reget: an interrupted download resumed.
    partial = tmp_path / "partial.bin"
    partial.write_bytes(up.read_bytes()[:1000])
    check(ssh.sftp(TARGET, f"reget {remote}/g.bin {partial}\n"))
    assert partial.read_bytes() == up.read_bytes()
    check(ssh.sftp(TARGET, f"rm {remote}/g.bin\nrmdir {remote}\n"))
    assert ssh.ssh(TARGET, f"test -e {remote}").returncode == 1


def test_sftp_errors_say_what_failed(server):
    r = server.client.sftp(TARGET, "get /nonexistent/file /dev/null\n")
    assert r.returncode != 0
    assert b"not found" in r.stderr
    r = server.client.sftp(TARGET, "rmdir /proc\n")
    assert r.returncode != 0


def test_scp_both_ways_across_boundaries(server, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    files = {}
    for n in SIZES:
        (src / f"f{n}").write_bytes(data := os.urandom(n))
        files[f"f{n}"] = data
    remote = f"/tmp/scp-{os.getpid()}"
    check(server.client.ssh(TARGET, f"mkdir -p {remote}"))
    r = server.client.scp(*[str(src / name) for name in files], f"{TARGET}@127.0.0.1:{remote}/")
    check(r)
    back = tmp_path / "back"
    back.mkdir()
    check(server.client.scp(f"{TARGET}@127.0.0.1:{remote}/*", f"{back}/"))
    for name, data in files.items():
        assert (back / name).read_bytes() == data, name
    check(server.client.ssh(TARGET, f"rm -r {remote}"))


def test_the_home_directory_is_where_it_starts(server):
    out = check(server.client.sftp(TARGET, "pwd\ncd /tmp\npwd\n"))
    assert "Remote working directory: /root" in out and "Remote working directory: /tmp" in out


def test_the_audit_log_says_sftp(server):
    check(server.client.sftp(TARGET, "pwd\n"))
    time.sleep(0.2)
    assert '"sftp"' in server.audit.read_text()


# Against containerd: images with nothing of OpenSSH in them.


@pytest.fixture(scope="module")
def cri_server(tmp_path_factory, containerd):
    root = tmp_path_factory.mktemp("sftp-cri")
    key = keygen(root / "id_carol")
    users = [{"name": "carol", "ssh_keys": [key]}]
    policy = [{"subjects": ["user:carol"], "verbs": ["*"], "namespaces": ["*"]}]
    runtime = {"kind": "cri", "endpoint": containerd.endpoint}
    srv = PodshellServer(root, [], users, policy, runtime=runtime)
    try:
        srv.wait_ready(containers=0)
        srv.client = Client(srv, root / "id_carol")
        yield srv
    finally:
        srv.stop()


def wait_for_target(client: Client, target: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = client.sftp(target, "pwd\n")
        if r.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(r.stderr.decode(errors="replace"))
        time.sleep(0.2)


def test_a_shell_less_image(cri_server, kubelet, tmp_path):
    kubelet.run_pod("team-s", "bare", ContainerSpec("app", image=SHELLLESS_IMAGE))
    ssh = cri_server.client
    wait_for_target(ssh, "team-s.bare")
    assert ssh.ssh("team-s.bare", "true").returncode == 127  # no /bin/sh in there
    up, down = tmp_path / "up.bin", tmp_path / "down.bin"
    up.write_bytes(os.urandom(1 << 20))
    out = check(ssh.sftp("team-s.bare", batch_script(up, down, "/tmp/b")))
    assert down.read_bytes() == up.read_bytes()
    assert "g.bin" in out
    check(ssh.scp(str(up), "team-s.bare@127.0.0.1:/tmp/scp.bin"))
    check(ssh.scp("team-s.bare@127.0.0.1:/tmp/scp.bin", str(tmp_path / "scp.bin")))
    assert (tmp_path / "scp.bin").read_bytes() == up.read_bytes()
    # Legacy scp (-O) too, with no scp and no shell in the image: podshell's.
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (tree / "a.txt").write_text("a")
    os.chmod(tree / "a.txt", 0o640)
    check(ssh.scp("-O", str(up), "team-s.bare@127.0.0.1:/tmp/legacy.bin"))
    check(ssh.scp("-O", "-r", "-p", str(tree), "team-s.bare@127.0.0.1:/tmp/"))
    back = tmp_path / "back"
    check(ssh.scp("-O", "-r", "-p", "team-s.bare@127.0.0.1:/tmp/tree", str(back)))
    assert (back / "sub" / "b.bin").read_bytes() == (tree / "sub" / "b.bin").read_bytes()
    assert (back / "a.txt").stat().st_mode & 0o777 == 0o640
    check(ssh.scp("-O", "team-s.bare@127.0.0.1:/tmp/legacy.bin", "team-s.bare@127.0.0.1:/tmp/l*", str(tmp_path)))
    assert (tmp_path / "legacy.bin").read_bytes() == up.read_bytes()
    r = ssh.scp("-O", "team-s.bare@127.0.0.1:/tmp/missing", str(tmp_path))
    assert r.returncode == 1 and b"/tmp/missing: No such file or directory" in r.stderr, r.stderr
    # The container's files: its /etc/passwd, not the host's.
    check(ssh.scp("team-s.bare@127.0.0.1:/etc/passwd", str(tmp_path / "passwd")))
    assert "app:x:1000:1000:app:/home:/bin/sh" in (tmp_path / "passwd").read_text()


def test_a_symlink_to_etc_shadow_is_the_containers(cri_server, kubelet, tmp_path):
    kubelet.run_pod("team-s", "links", ContainerSpec("app"))
    ssh = cri_server.client
    wait_for_target(ssh, "team-s.links")
    mine = tmp_path / "shadow"
    mine.write_text("the container's shadow\n")
    check(ssh.sftp("team-s.links", f"put {mine} /etc/shadow\nln -s /etc/shadow /tmp/link\n"))
    got = tmp_path / "got"
    check(ssh.scp("team-s.links@127.0.0.1:/tmp/link", str(got)))
    assert got.read_text() == "the container's shadow\n"


def test_a_non_root_user_and_a_read_only_root(cri_server, kubelet, tmp_path):
    kubelet.run_pod(
        "team-s",
        "users",
        ContainerSpec("app", run_as_user=1000),
        ContainerSpec("ro", readonly_rootfs=True),
    )
    ssh = cri_server.client
    wait_for_target(ssh, "team-s.users.app")
    wait_for_target(ssh, "team-s.users.ro")
    up = tmp_path / "up.bin"
    up.write_bytes(b"x" * 5000)
    out = check(ssh.sftp("team-s.users.app", f"pwd\nput {up} /tmp/mine.bin\nls -ln /tmp/mine.bin\n"))
    assert "Remote working directory: /home" in out
    owners = [line.split()[2:4] for line in out.splitlines() if line.startswith("-rw")]
    assert owners == [["app", "app"]], out  # the container's names for its ids (users-groups-by-id)
    assert check(ssh.ssh("team-s.users.app", "stat -c %u:%g /tmp/mine.bin")).strip() == "1000:1000"
    r = ssh.sftp("team-s.users.app", f"put {up} /etc/nope\n")
    assert r.returncode != 0 and b"Permission denied" in r.stderr, r.stderr
    r = ssh.sftp("team-s.users.ro", f"put {up} /nope\n")
    assert (r.returncode, r.stderr) == (1, b'dest open "/nope": Failure\r\n')  # OpenSSH says no more
    # What the server said: the errno's text (OpenSSH's client shows only the code's).
    got = raw_sftp(ssh, "team-s.users.ro", open_request(5, b"/nope"))
    assert got.returncode == 0
    assert replies(got.stdout)[1] == (sftp.STATUS, 5, sftp.FX_FAILURE, "Read-only file system")
    assert ssh.ssh("team-s.users.ro", "test -e /nope").returncode == 1
    r = ssh.scp(str(up), "team-s.users.ro@127.0.0.1:/nope")
    assert r.returncode != 0
