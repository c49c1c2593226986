"""Enter or create container namespaces and run a command in them.

This file is both a module and podshell's one helper program, run as
``python -I -S nsexec.py SPEC_JSON`` for a pod's sandbox and its containers'
main processes.  As a module, the server uses L{setns} and L{enter} for its
network-namespace sockets, and L{become} in the child of its own fork for
every exec (no helper there: see L{podshell.node.spawner}).  It imports
nothing from podshell and only stdlib modules that are cheap to load.

Why a helper and not C{nsenter}/C{unshare}: we need, in one step, namespaces
entered by pidfd (no race with PID reuse), C{chdir} and user lookup *inside*
the container's mount namespace (never opening host paths first), explicit
signal forwarding to the command (nsenter forwards none), the command's exit
status or signal reproduced faithfully, and C{PR_SET_PDEATHSIG} so that no
container process outlives the server.

Modes (C{spec["mode"]}):
  - C{sandbox}: new net/uts/ipc namespaces, hostname, loopback up; waits for
    SIGTERM.  This is the pod's "pause" process.
  - C{run}: join a sandbox's net/uts/ipc, create pid and mount namespaces with
    their own /proc, run the command as PID 1.  A container's main process.
  - C{exec}: join every namespace of a container's PID 1 and run the command.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import sys

TYPE_CHECKING = False  # not the typing module's: the helper loads nothing it does not use
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Literal, TypedDict

    from podshell.node.confine import Confinement

    class Spec(TypedDict, total=False):
        """What the server hands the helper (as JSON on its command line) or
        its own forked child (as is): the one typed contract across the fork."""

        mode: Literal["sandbox", "run", "exec"]
        target: list[int]  # [pid, start time]: the process whose namespaces are joined
        join: list[str]  # namespace names (L{NAMESPACE_FLAGS})
        new: list[str]  # namespaces made anew (run: pid and mnt)
        argv: list[str]
        user: str | None  # without a confinement: whom to run as, resolved in the container
        workdir: str | None
        hostname: str  # sandbox
        parent: int  # the helper's parent, checked once the death signal is set
        tty: bool
        confinement: Confinement  # the container's, from its OCI spec (the server's own fork only)
        run_as: str | None  # with a confinement: another user of the container's
        refused: str  # why the command cannot run: the child says so and fails
        builtin: str  # one of podshell's own programs instead of an exec

# Everything the helper uses is imported above: once inside a container's
# mount namespace, the host's Python library may not be there to import from.

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = {
    "mnt": CLONE_NEWNS,
    "uts": CLONE_NEWUTS,
    "ipc": CLONE_NEWIPC,
    "pid": CLONE_NEWPID,
    "net": CLONE_NEWNET,
}

_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC = 2, 4, 8
_MS_REC, _MS_PRIVATE = 0x4000, 1 << 18
_TIOCSCTTY = 0x540E
# Signals a caller may send that the helper relays to the command.
_RELAYED = ("HUP", "INT", "QUIT", "TERM", "USR1", "USR2", "ALRM", "CONT", "TSTP", "WINCH")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int, nstype: int) -> None:
    """C{setns(2)}; Python 3.11 has no C{os.setns}."""
    _check(_libc.setns(fd, nstype), "setns")


def start_time(pid: int) -> int:
    """The kernel's start time of C{pid} (clock ticks since boot), which tells
    a process apart from a later one that reuses its PID."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    # The command name (field 2) may hold spaces and parentheses: split after
    # the last ")".  Start time is field 22, the 20th after the name.
    return int(stat[stat.rindex(b")") + 2 :].split()[19])


def enter(pid: int, started: int, nstype: int) -> None:
    """Join namespaces of process C{pid}, provided it is still the process
    that started at C{started} (a pidfd pins it while we check)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        raise ProcessLookupError(f"process {pid} is gone") from None
    try:
        if start_time(pid) != started:
            raise ProcessLookupError(f"process {pid} is gone")
        setns(pidfd, nstype)
    finally:
        os.close(pidfd)


def _flags(names: list[str]) -> int:
    flags = 0
    for name in names:
        flags |= NAMESPACE_FLAGS[name]
    return flags


def _fail(message: str, code: int = 126) -> None:
    os.write(2, f"podshell: {message}\n".encode(errors="replace"))
    os._exit(code)


def _loopback_up() -> None:
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sh22x", b"lo", 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(s, 0x8913, ifreq))[1]  # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sh22x", b"lo", flags | 1))  # SIOCSIFFLAGS, IFF_UP


def _sandbox(spec: Spec) -> None:
    import socket

    _check(_libc.unshare(CLONE_NEWNET | CLONE_NEWUTS | CLONE_NEWIPC), "unshare")
    socket.sethostname(spec["hostname"])
    _loopback_up()
    stop = []
    for name in ("TERM", "INT", "HUP"):
        signal.signal(getattr(signal, "SIG" + name), lambda *_: stop.append(1))
    os.write(1, b"ready\n")
    while not stop:
        signal.pause()
    os._exit(0)


def _entries(path: str, fields: int) -> list[list[str]]:
    """The lines of a colon-separated database (/etc/passwd, /etc/group).
    Read directly, not through NSS: we are in the container's mount
    namespace, and may be the child of a fork of a threaded server."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    return [e for e in (line.split(":") for line in lines if line and not line.startswith("#")) if len(e) >= fields]


def _credentials(user: str) -> tuple[int, int, list[int], str | None]:
    """Resolve C{name}, C{uid}, C{name:group} or C{uid:gid} against the
    container's own /etc/passwd and /etc/group (we are in its mount ns)."""
    name, _, group = user.partition(":")
    entry = next((e for e in _entries("/etc/passwd", 7) if e[2 if name.isdigit() else 0] == name), None)
    if entry is None:
        if not name.isdigit():
            raise LookupError(f"no user {name!r} in the container")
        uid, gid, login, home = int(name), int(name), None, None
    else:
        uid, gid, login, home = int(entry[2]), int(entry[3]), entry[0], entry[5]
    groups = _entries("/etc/group", 4)
    if group:
        found = next((g for g in groups if g[2 if group.isdigit() else 0] == group), None)
        if found is None and not group.isdigit():
            raise LookupError(f"no group {group!r} in the container")
        gid = int(found[2]) if found else int(group)
    extra = [int(g[2]) for g in groups if login and login in g[3].split(",")]
    return uid, gid, [gid, *(g for g in extra if g != gid)], home


def _home_of(uid: int) -> str:
    entry = next((e for e in _entries("/etc/passwd", 7) if e[2] == str(uid)), None)
    return entry[5] if entry else "/"


def _child(spec: Spec) -> None:
    """In the helper's forked child: become the command, in a session of
    its own (a hangup reaches its children too), on the helper's terminal
    if it has one."""
    os.setsid()
    if spec.get("tty"):
        fcntl.ioctl(0, _TIOCSCTTY, 1)
    become(spec, dict(os.environ))


def become(spec: Spec, env: dict[str, str], run: Callable[[dict[str, str]], int] | None = None) -> None:
    """Become the command of C{spec}, already inside its namespaces and in
    a session of its own: death signal, user, directory, then exec; or,
    with a C{confinement} (L{podshell.node.confine}), the container's own
    confinement from its OCI spec instead of user and directory.  With
    C{run}, no exec: the same process, confined the same way, calls it
    (with the environment) and exits with what it returns."""
    if spec.get("refused"):
        _fail(spec["refused"])
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != 0:  # our parent is outside this pid namespace: 0 while it lives
            os._exit(1)  # it died before the death signal was set
        if "pid" in spec.get("new", ()):
            _check(
                _libc.mount(b"proc", b"/proc", b"proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, None),
                "mount /proc",
            )
        confinement = spec.get("confinement")
        if confinement is not None:
            if spec.get("run_as") is not None:  # another user of the container's, as runc exec --user
                import dataclasses  # loaded already: this is the server's fork

                uid, gid, groups, home = _credentials(str(spec["run_as"]))
                confinement = dataclasses.replace(confinement, uid=uid, gid=gid, groups=tuple(groups))
                env["HOME"] = home or _home_of(uid)
            if "HOME" not in env:
                env["HOME"] = _home_of(confinement.uid)
            confinement.enter(exec_follows=run is None)
        else:
            home = None
            if spec.get("user") is not None:
                uid, gid, groups, home = _credentials(str(spec["user"]))
                os.setgroups(groups)
                os.setgid(gid)
                os.setuid(uid)
            if "HOME" not in env:
                env["HOME"] = home or _home_of(os.getuid())
            workdir = spec.get("workdir") or env.get("HOME") or "/"
            try:
                os.chdir(workdir)
            except OSError as e:
                if spec.get("workdir"):
                    raise OSError(e.errno, f"working directory {workdir}: {e.strerror}") from None
                os.chdir("/")
    except (OSError, LookupError, ValueError) as e:
        _fail(str(e))
    if run is not None:
        # No exec to leave the server's memory behind: nothing in the
        # container may read it (/proc/PID/mem, ptrace), as runc keeps its
        # init until the exec.
        _libc.prctl(_PR_SET_DUMPABLE, 0)
        os._exit(run(env))
    _exec(spec["argv"], env)


_SHELL = "/bin/sh"
# What makes a command more than words to exec: only a shell can run it.
_SHELL_SYNTAX = frozenset("|&;<>()$`\\\"'*?[#~\n")
_NO_SHELL = (
    "this container's image has no /bin/sh: run a program by its path, "
    "e.g. ssh ns.pod.ctr@gateway /path/to/program, or kubectl exec POD -- /path/to/program"
)
# Unlike scp and sftp, which podshell serves itself, rsync's server side is
# rsync: an image without it is told so in one line.
_NO_RSYNC = "rsync needs rsync in the container and this image has none (scp and sftp need nothing in it)"


def _reason(e: OSError) -> str:
    """An errno's words as the runtime (a Go program) prints them."""
    return (e.strerror or str(e)).lower()


def _exec(argv: list[str], env: dict[str, str]) -> None:
    """C{execvpe} with the runtime's exit codes and words, searching the
    command's own PATH (C{os.execvpe} would import modules we may no
    longer reach).  In an image without a shell, C{sh -c} of a simple
    command (words, no shell syntax) runs those words, as sh itself would;
    so does rsync's server command everywhere, for a clear word when the
    image has no rsync."""
    name = argv[0]
    if name == _SHELL and len(argv) == 3 and argv[1] == "-c":
        words = [w for w in argv[2].replace("\t", " ").split(" ") if w]  # sh's field separators, no others
        simple = bool(words) and "=" not in words[0] and not _SHELL_SYNTAX.intersection(argv[2])
        if simple and words[:2] == ["rsync", "--server"]:
            argv, name = words, words[0]
        elif not os.path.exists(_SHELL):
            if not simple:
                _fail(_NO_SHELL, 127)
            argv, name = words, words[0]
    dirs = [""] if "/" in name else env.get("PATH", "/usr/bin:/bin").split(":")
    denied: OSError | None = None
    for d in dirs:
        try:
            os.execve(os.path.join(d, name) if d else name, argv, env)
        except (FileNotFoundError, NotADirectoryError) as e:
            if not d:
                _fail(f'exec: "{name}": stat {name}: {_reason(e)}', 127)
            continue
        except PermissionError as e:
            denied = e
        except OSError as e:
            _fail(f'exec: "{name}": {_reason(e)}', 126)
    if denied is not None:
        _fail(f'exec: "{name}": {_reason(denied)}', 126)
    if name == "rsync":
        _fail(_NO_RSYNC, 127)
    _fail(f'exec: "{name}": executable file not found in $PATH', 127)


def _relay_and_wait(child: int) -> None:
    """In the helper: pass signals on to the command, then end as it ended."""

    def relay(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            if signum == signal.SIGHUP:
                os.killpg(child, signum)  # as a terminal hangs up a whole job
            else:
                os.kill(child, signum)

    for name in _RELAYED:
        signal.signal(getattr(signal, "SIG" + name), relay)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    while True:
        _, status = os.waitpid(child, 0)
        if os.WIFEXITED(status):
            os._exit(os.WEXITSTATUS(status))
        if os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            _libc.prctl(_PR_SET_DUMPABLE, 0)  # reproduce the signal, not a core
            signal.signal(sig, signal.SIG_DFL)
            os.kill(os.getpid(), sig)
            os._exit(128 + sig)


def main(spec: Spec) -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != spec["parent"]:
        os._exit(1)  # the server died before we set the death signal
    mode = spec["mode"]
    try:
        if mode == "sandbox":
            _sandbox(spec)
        pid, started = spec["target"]
        enter(pid, started, _flags(spec["join"]))
        new = _flags(spec.get("new", []))
        if new:
            _check(_libc.unshare(new), "unshare")
        if new & CLONE_NEWNS:
            _check(_libc.mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    except ProcessLookupError:
        _fail("the container is not running")
    except OSError as e:
        _fail(f"cannot enter the container: {e}")
    # Block relayed signals until the handlers are in place, so none is lost
    # between fork and the relay loop.
    signal.pthread_sigmask(signal.SIG_BLOCK, [getattr(signal, "SIG" + n) for n in _RELAYED])
    child = os.fork()
    if child == 0:
        _child(spec)
    _relay_and_wait(child)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
