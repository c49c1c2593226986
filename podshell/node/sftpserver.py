"""podshell's own SFTP server, run in a process that the spawner forked and
that entered the container as an exec does (L{podshell.node.spawner}):
its namespaces, its confinement, the session's user.  It serves the SFTP
stream on its stdin and stdout with plain blocking C{os} calls, the way
OpenSSH's sftp-server does, so every path is the container's and every
check is the kernel's, under the container's credentials.

Everything it uses is imported here, before the fork: inside the
container's mount namespace the host's Python library is not there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import gc
import os
import resource
import signal
import stat
import time
from collections.abc import Callable

from podshell.protocols import sftp
from podshell.protocols.sftp import Attrs

READ_CHUNK = 1 << 20  # what we read from stdin at once
PIPE_SIZE = 1 << 20  # the unprivileged maximum (fs.pipe-max-size) by default
_F_SETPIPE_SZ = 1031
_IOV_MAX = 1024
FLUSH_AT = 1 << 20  # replies held before writing them, while requests are waiting
DIRECTORY_BATCH = 100
_SIX_MONTHS = 182 * 24 * 3600

_CODES = {
    errno.ENOENT: sftp.FX_NO_SUCH_FILE,
    errno.ENOTDIR: sftp.FX_NO_SUCH_FILE,
    errno.EBADF: sftp.FX_NO_SUCH_FILE,
    errno.ELOOP: sftp.FX_NO_SUCH_FILE,
    errno.EPERM: sftp.FX_PERMISSION_DENIED,
    errno.EACCES: sftp.FX_PERMISSION_DENIED,
    errno.EFAULT: sftp.FX_PERMISSION_DENIED,
    errno.ENAMETOOLONG: sftp.FX_BAD_MESSAGE,
    errno.EINVAL: sftp.FX_BAD_MESSAGE,
    errno.ENOSYS: sftp.FX_OP_UNSUPPORTED,
    errno.EOPNOTSUPP: sftp.FX_OP_UNSUPPORTED,
}


class Failed(Exception):
    """A request that fails with an SFTP status of its own."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def _os_error(e: OSError) -> tuple[int, str]:
    """OpenSSH's mapping of errno to SFTP status, with the errno's own text."""
    code = _CODES.get(e.errno or 0, sftp.FX_FAILURE)
    return code, os.strerror(e.errno) if e.errno else str(e)


def attrs_of(st: os.stat_result) -> Attrs:
    return Attrs(
        size=st.st_size,
        uid=st.st_uid,
        gid=st.st_gid,
        permissions=st.st_mode,
        atime=int(st.st_atime),
        mtime=int(st.st_mtime),
    )


class _File:
    __slots__ = ("append", "fd", "path", "readable", "writable")

    def __init__(self, fd: int, path: bytes, flags: int) -> None:
        self.fd, self.path = fd, path
        self.append = bool(flags & os.O_APPEND)
        access = flags & os.O_ACCMODE
        self.readable = access in (os.O_RDONLY, os.O_RDWR)
        self.writable = access in (os.O_WRONLY, os.O_RDWR)


class _Directory:
    __slots__ = ("entries", "path")

    def __init__(self, path: bytes) -> None:
        self.path = path
        self.entries = os.scandir(path)


class Names:
    """User and group names from the container's own /etc/passwd and
    /etc/group, read directly (no NSS in a forked child), once."""

    def __init__(self) -> None:
        self._users: dict[int, bytes] | None = None
        self._groups: dict[int, bytes] | None = None
        self._homes: dict[bytes, bytes] = {}

    @staticmethod
    def _read(path: str) -> list[list[bytes]]:
        try:
            with open(path, "rb") as f:
                lines = f.read().splitlines()
        except OSError:
            return []
        return [e for e in (line.split(b":") for line in lines if line and not line.startswith(b"#")) if len(e) >= 4]

    def _load(self) -> None:
        if self._users is None:
            self._users, self._groups = {}, {}
            for e in self._read("/etc/passwd"):
                if e[2].isdigit():
                    self._users.setdefault(int(e[2]), e[0])
                    if len(e) >= 6:
                        self._homes.setdefault(e[0], e[5])
            for e in self._read("/etc/group"):
                if e[2].isdigit():
                    self._groups.setdefault(int(e[2]), e[0])

    def user(self, uid: int) -> bytes | None:
        self._load()
        assert self._users is not None
        return self._users.get(uid)

    def group(self, gid: int) -> bytes | None:
        self._load()
        assert self._groups is not None
        return self._groups.get(gid)

    def home(self, user: bytes) -> bytes | None:
        self._load()
        return self._homes.get(user)


def longname(filename: bytes, st: os.stat_result, names: Names, now: float) -> bytes:
    """An C{ls -l} line, as OpenSSH's sftp-server makes it."""
    user = names.user(st.st_uid) or str(st.st_uid).encode()
    group = names.group(st.st_gid) or str(st.st_gid).encode()
    when = time.localtime(st.st_mtime)
    recent = abs(now - st.st_mtime) < _SIX_MONTHS
    date = time.strftime("%b %d %H:%M" if recent else "%b %d  %Y", when).encode()
    head = f"{stat.filemode(st.st_mode)} {st.st_nlink:3d} ".encode()
    return head + user.ljust(8) + b" " + group.ljust(8) + f" {st.st_size:8d} ".encode() + date + b" " + filename


class Server:
    """The requests of one SFTP session, answered with blocking C{os} calls."""

    def __init__(self, home: bytes | None = None) -> None:
        self.handles: dict[bytes, _File | _Directory] = {}
        self._next = 0
        self.names = Names()
        self.home = home or b"/"
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        self.max_handles = max(16, min(soft, 1 << 16) - 16)

    # Dispatch.
    def handle(self, event: sftp.Event) -> list[bytes]:
        """The reply (as buffers to write in order) to one event."""
        if type(event) is sftp.Request:
            return self._request(event)
        if isinstance(event, sftp.Init):
            return [sftp.version()]
        if isinstance(event, sftp.Malformed):
            return [sftp.status(event.id, sftp.FX_BAD_MESSAGE, f"bad message: {event.reason}")]
        if isinstance(event, sftp.Unknown):
            return [sftp.status(event.id, sftp.FX_OP_UNSUPPORTED, f"unsupported {event.what}")]
        return self._request(event)

    def _request(self, event: sftp.Request) -> list[bytes]:
        method = self._methods.get(event.kind)
        if method is None:
            return [sftp.status(event.id, sftp.FX_OP_UNSUPPORTED, "operation unsupported")]
        try:
            reply = method(self, event.id, *event.args)
        except Failed as e:
            return [sftp.status(event.id, e.code, str(e))]
        except OSError as e:
            return [sftp.status(event.id, *_os_error(e))]
        except (ValueError, OverflowError) as e:  # NUL in a path, an offset beyond off_t
            return [sftp.status(event.id, sftp.FX_BAD_MESSAGE, f"bad message: {e}")]
        except Exception as e:  # a bug of ours: this request fails, the session goes on
            return [sftp.status(event.id, sftp.FX_FAILURE, f"podshell: internal error: {type(e).__name__}: {e}")]
        return reply if isinstance(reply, list) else [reply]

    def _ok(self, request_id: int) -> bytes:
        return sftp.status(request_id, sftp.FX_OK, "Success")

    def _new_handle(self, value: _File | _Directory) -> bytes:
        self._next += 1
        key = str(self._next).encode()
        self.handles[key] = value
        return key

    def _file(self, key: bytes) -> _File:
        found = self.handles.get(key)
        if not isinstance(found, _File):
            raise Failed(sftp.FX_FAILURE, "invalid handle")
        return found

    def _dir(self, key: bytes) -> _Directory:
        found = self.handles.get(key)
        if not isinstance(found, _Directory):
            raise Failed(sftp.FX_FAILURE, "invalid handle")
        return found

    def _check_handles(self) -> None:
        if len(self.handles) >= self.max_handles:
            raise Failed(sftp.FX_FAILURE, "too many open handles")

    # Files.
    def open(self, request_id: int, path: bytes, pflags: int, attrs: Attrs) -> bytes:
        self._check_handles()
        if pflags & sftp.FXF_READ and pflags & sftp.FXF_WRITE:
            flags = os.O_RDWR
        elif pflags & sftp.FXF_WRITE:
            flags = os.O_WRONLY
        else:
            flags = os.O_RDONLY
        if pflags & sftp.FXF_APPEND:
            flags |= os.O_APPEND
        if pflags & sftp.FXF_CREAT:
            flags |= os.O_CREAT
        if pflags & sftp.FXF_TRUNC:
            flags |= os.O_TRUNC
        if pflags & sftp.FXF_EXCL:
            flags |= os.O_EXCL
        mode = attrs.permissions & 0o7777 if attrs.permissions is not None else 0o666
        fd = os.open(path, flags | os.O_NOCTTY | os.O_CLOEXEC, mode)
        return sftp.handle(request_id, self._new_handle(_File(fd, path, flags)))

    def close(self, request_id: int, key: bytes) -> bytes:
        found = self.handles.pop(key, None)
        if found is None:
            raise Failed(sftp.FX_FAILURE, "invalid handle")
        if isinstance(found, _File):
            os.close(found.fd)
        else:
            found.entries.close()
        return self._ok(request_id)

    def read(self, request_id: int, key: bytes, offset: int, length: int) -> list[bytes]:
        f = self._file(key)
        payload = os.pread(f.fd, min(length, sftp.MAX_READ), offset)
        if not payload:
            return [sftp.status(request_id, sftp.FX_EOF, "End of file")]
        return [sftp.data_header(request_id, len(payload)), payload]

    def write(self, request_id: int, key: bytes, offset: int, payload: bytes) -> bytes:
        f = self._file(key)
        view, done = memoryview(payload), 0
        while done < len(payload):
            n = os.write(f.fd, view[done:]) if f.append else os.pwrite(f.fd, view[done:], offset + done)
            if n <= 0:
                raise Failed(sftp.FX_FAILURE, "short write")
            done += n
        return self._ok(request_id)

    def fstat(self, request_id: int, key: bytes) -> bytes:
        return sftp.attrs(request_id, attrs_of(os.fstat(self._file(key).fd)))

    def fsetstat(self, request_id: int, key: bytes, attrs: Attrs) -> bytes:
        fd = self._file(key).fd
        if attrs.size is not None:
            os.ftruncate(fd, attrs.size)
        if attrs.permissions is not None:
            os.fchmod(fd, attrs.permissions & 0o7777)
        if attrs.atime is not None and attrs.mtime is not None:
            os.utime(fd, (attrs.atime, attrs.mtime))
        if attrs.uid is not None and attrs.gid is not None:
            os.fchown(fd, attrs.uid, attrs.gid)
        return self._ok(request_id)

    # Paths.
    def lstat(self, request_id: int, path: bytes) -> bytes:
        return sftp.attrs(request_id, attrs_of(os.lstat(path)))

    def stat_(self, request_id: int, path: bytes) -> bytes:
        return sftp.attrs(request_id, attrs_of(os.stat(path)))

    def _setstat(self, path: bytes, attrs: Attrs, follow: bool) -> None:
        if attrs.size is not None:
            os.truncate(path, attrs.size)
        if attrs.permissions is not None:
            if not follow and stat.S_ISLNK(os.lstat(path).st_mode):
                raise Failed(sftp.FX_OP_UNSUPPORTED, "cannot change the mode of a symbolic link")
            os.chmod(path, attrs.permissions & 0o7777)
        if attrs.atime is not None and attrs.mtime is not None:
            os.utime(path, (attrs.atime, attrs.mtime), follow_symlinks=follow)
        if attrs.uid is not None and attrs.gid is not None:
            os.chown(path, attrs.uid, attrs.gid, follow_symlinks=follow)

    def setstat(self, request_id: int, path: bytes, attrs: Attrs) -> bytes:
        self._setstat(path, attrs, True)
        return self._ok(request_id)

    def lsetstat(self, request_id: int, path: bytes, attrs: Attrs) -> bytes:
        self._setstat(path, attrs, False)
        return self._ok(request_id)

    def opendir(self, request_id: int, path: bytes) -> bytes:
        self._check_handles()
        return sftp.handle(request_id, self._new_handle(_Directory(path)))

    def readdir(self, request_id: int, key: bytes) -> bytes:
        d = self._dir(key)
        entries = []
        now = time.time()
        for entry in d.entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone since the directory was read
            entries.append((entry.name, longname(entry.name, st, self.names, now), attrs_of(st)))
            if len(entries) >= DIRECTORY_BATCH:
                break
        if not entries:
            return sftp.status(request_id, sftp.FX_EOF, "End of file")
        return sftp.name(request_id, entries)

    def remove(self, request_id: int, path: bytes) -> bytes:
        os.unlink(path)
        return self._ok(request_id)

    def mkdir(self, request_id: int, path: bytes, attrs: Attrs) -> bytes:
        os.mkdir(path, attrs.permissions & 0o7777 if attrs.permissions is not None else 0o777)
        return self._ok(request_id)

    def rmdir(self, request_id: int, path: bytes) -> bytes:
        os.rmdir(path)
        return self._ok(request_id)

    def _one_name(self, request_id: int, path: bytes) -> bytes:
        return sftp.name(request_id, [(path, path, Attrs())])

    def realpath(self, request_id: int, path: bytes) -> bytes:
        return self._one_name(request_id, os.path.realpath(path or b"."))

    def rename(self, request_id: int, old: bytes, new: bytes) -> bytes:
        """Version 3's rename, as OpenSSH serves it: never over an existing name."""
        os.lstat(old)
        if os.path.lexists(new):
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        os.rename(old, new)
        return self._ok(request_id)

    def readlink(self, request_id: int, path: bytes) -> bytes:
        return self._one_name(request_id, os.readlink(path))

    def symlink(self, request_id: int, target: bytes, link: bytes) -> bytes:
        """OpenSSH's order (the target first), which its clients send."""
        os.symlink(target, link)
        return self._ok(request_id)

    # OpenSSH extensions.
    def posix_rename(self, request_id: int, old: bytes, new: bytes) -> bytes:
        os.rename(old, new)
        return self._ok(request_id)

    def _statvfs(self, request_id: int, st: os.statvfs_result) -> bytes:
        flags = st.f_flag & 3  # ST_RDONLY, ST_NOSUID: the values SFTP uses too
        values = (st.f_bsize, st.f_frsize, st.f_blocks, st.f_bfree, st.f_bavail, st.f_files, st.f_ffree)
        return sftp.statvfs_reply(request_id, (*values, st.f_favail, st.f_fsid, flags, st.f_namemax))

    def statvfs(self, request_id: int, path: bytes) -> bytes:
        return self._statvfs(request_id, os.statvfs(path))

    def fstatvfs(self, request_id: int, key: bytes) -> bytes:
        return self._statvfs(request_id, os.fstatvfs(self._file(key).fd))

    def hardlink(self, request_id: int, old: bytes, new: bytes) -> bytes:
        os.link(old, new)
        return self._ok(request_id)

    def fsync(self, request_id: int, key: bytes) -> bytes:
        os.fsync(self._file(key).fd)
        return self._ok(request_id)

    def limits(self, request_id: int) -> bytes:
        return sftp.limits_reply(request_id, sftp.MAX_PACKET, sftp.MAX_READ, sftp.MAX_READ, self.max_handles)

    def _expand(self, path: bytes) -> bytes:
        if path == b"~" or path.startswith(b"~/"):
            return self.home + path[1:]
        if path.startswith(b"~"):
            user, sep, rest = path[1:].partition(b"/")
            home = self.names.home(user)
            if home is None:
                raise Failed(sftp.FX_NO_SUCH_FILE, f"no user {user.decode(errors='replace')!r}")
            return home + sep + rest
        return path

    def expand_path(self, request_id: int, path: bytes) -> bytes:
        return self._one_name(request_id, os.path.realpath(self._expand(path) or b"."))

    def copy_data(
        self, request_id: int, source: bytes, offset: int, length: int, target: bytes, target_offset: int
    ) -> bytes:
        src, dst = self._file(source), self._file(target)
        if not src.readable or not dst.writable:
            raise Failed(sftp.FX_PERMISSION_DENIED, "Permission denied")
        span = length or 1 << 64  # 0: up to the end of the source
        if src is dst and offset < target_offset + span and target_offset < offset + span:
            raise Failed(sftp.FX_FAILURE, "source and destination overlap")
        left = length or -1
        while left != 0:
            chunk = os.pread(src.fd, sftp.MAX_READ if left < 0 else min(left, sftp.MAX_READ), offset)
            if not chunk:  # the source ends early: what there was is copied, as OpenSSH does
                break
            self.write(request_id, target, target_offset, chunk)
            offset += len(chunk)
            target_offset += len(chunk)
            if left > 0:
                left -= len(chunk)
        return self._ok(request_id)

    def home_directory(self, request_id: int, user: bytes) -> bytes:
        home = self.names.home(user) if user else self.home
        if home is None:
            raise Failed(sftp.FX_NO_SUCH_FILE, f"no user {user.decode(errors='replace')!r}")
        return self._one_name(request_id, home)

    def users_groups_by_id(self, request_id: int, uids: bytes, gids: bytes) -> bytes:
        users, groups = sftp.ids(uids), sftp.ids(gids)
        if users is None or groups is None:
            raise Failed(sftp.FX_BAD_MESSAGE, "bad message: ids are not uint32s")
        return sftp.names_reply(
            request_id, [self.names.user(u) or b"" for u in users], [self.names.group(g) or b"" for g in groups]
        )

    _methods: dict[int | str, Callable[..., bytes | list[bytes]]] = {
        sftp.OPEN: open,
        sftp.CLOSE: close,
        sftp.READ: read,
        sftp.WRITE: write,
        sftp.LSTAT: lstat,
        sftp.FSTAT: fstat,
        sftp.SETSTAT: setstat,
        sftp.FSETSTAT: fsetstat,
        sftp.OPENDIR: opendir,
        sftp.READDIR: readdir,
        sftp.REMOVE: remove,
        sftp.MKDIR: mkdir,
        sftp.RMDIR: rmdir,
        sftp.REALPATH: realpath,
        sftp.STAT: stat_,
        sftp.RENAME: rename,
        sftp.READLINK: readlink,
        sftp.SYMLINK: symlink,
        "posix-rename@openssh.com": posix_rename,
        "statvfs@openssh.com": statvfs,
        "fstatvfs@openssh.com": fstatvfs,
        "hardlink@openssh.com": hardlink,
        "fsync@openssh.com": fsync,
        "lsetstat@openssh.com": lsetstat,
        "limits@openssh.com": limits,
        "expand-path@openssh.com": expand_path,
        "copy-data": copy_data,
        "home-directory": home_directory,
        "users-groups-by-id@openssh.com": users_groups_by_id,
    }


def _write_all(fd: int, buffers: list[bytes]) -> None:
    """Write the replies in order, without joining them (DATA replies are big)."""
    views = [memoryview(b) for b in buffers]
    while views:
        n = os.writev(fd, views[:_IOV_MAX])
        while views and n >= len(views[0]):
            n -= len(views.pop(0))
        if views and n:
            views[0] = views[0][n:]


def serve(stdin: int = 0, stdout: int = 1, home: bytes | None = None) -> int:
    """Serve SFTP until stdin ends: the exit status (0, or 1 for a stream
    that is not SFTP, said on stderr)."""
    decoder = sftp.Decoder()
    server = Server(home)
    out: list[bytes] = []
    held = 0
    for fd in (stdin, stdout):  # fewer, larger pipe transfers between the server and us
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, _F_SETPIPE_SZ, PIPE_SIZE)
    chunk = bytearray(READ_CHUNK)  # read into, not a new megabyte for every read
    view = memoryview(chunk)
    try:
        while True:
            n = os.readv(stdin, [chunk])
            if not n:
                break
            for event in decoder.feed(view[:n]):
                for part in server.handle(event):
                    out.append(part)
                    held += len(part)
                if held >= FLUSH_AT:
                    _write_all(stdout, out)
                    out, held = [], 0
            if out:  # nothing more to answer until more arrives
                _write_all(stdout, out)
                out, held = [], 0
    except sftp.ProtocolError as e:
        if out:
            _write_all(stdout, out)
        os.write(2, f"podshell sftp: {e}\n".encode())
        return 1
    except BrokenPipeError:
        return 0
    return 0


def child_setup(env: dict[str, str], at_home: bool = True) -> None:
    """What a child running podshell's own server does first, once it is
    the container's (L{nsexec.become}): sshd's signal dispositions, not the
    server's handlers it was forked with; the user's home as the starting
    directory, C{at_home}.  The server's objects, copied by the fork, are never
    collected here: a finalizer of one could close a descriptor number
    that is now ours."""
    gc.freeze()
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGCHLD, signal.SIGQUIT, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    home = env.get("HOME")
    if home and at_home:
        with contextlib.suppress(OSError):
            os.chdir(home)


def main(env: dict[str, str], argv: list[str] | None = None) -> int:
    """The SFTP server's child."""
    child_setup(env)
    home = env.get("HOME")
    return serve(home=os.fsencode(home) if home else None)
