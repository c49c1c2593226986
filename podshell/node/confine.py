"""An exec confined exactly as C{runc exec} confines it, read from the
container's OCI runtime spec.

Joining a container's namespaces is not enough: a process that only does
that keeps the server's capabilities, has no seccomp filter and no
C{no_new_privs}, and sits outside the container's cgroups, so none of its
limits apply to it.  L{prepare} reads everything else from the spec in the
server (where a bad spec is found before anything forks) into a
L{Confinement}; the forked child then applies it in libcontainer's order:
L{Confinement.join_cgroups} while it still sees the host's cgroup
filesystems, and L{Confinement.enter} inside the container just before the
exec.  Everything used in the child is imported here, up front: inside the
container's mount namespace the host's libraries may not be there.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import platform
import resource
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyseccomp

CLONE_NEWCGROUP = 0x02000000

# Capability numbers (linux/capability.h): the OCI spec names them.
_CAPABILITY_NAMES = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
]
CAPABILITIES = {name: number for number, name in enumerate(_CAPABILITY_NAMES)}

_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 2, 4
_CAPABILITY_VERSION_3 = 0x20080522

_SECCOMP_COMPARE = {
    "SCMP_CMP_NE": pyseccomp.NE,
    "SCMP_CMP_LT": pyseccomp.LT,
    "SCMP_CMP_LE": pyseccomp.LE,
    "SCMP_CMP_EQ": pyseccomp.EQ,
    "SCMP_CMP_GE": pyseccomp.GE,
    "SCMP_CMP_GT": pyseccomp.GT,
    "SCMP_CMP_MASKED_EQ": pyseccomp.MASKED_EQ,
}
# The spec's filter flags, as seccomp(2) takes them.
_SECCOMP_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
}
_EPERM = 1
_RLIM_MAX = (1 << 64) - 1

_libc = ctypes.CDLL(None, use_errno=True)
_SYS_SECCOMP = {"x86_64": 317, "aarch64": 277, "ppc64le": 358, "s390x": 348}.get(platform.machine())
_SECCOMP_SET_MODE_FILTER = 1


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]


@dataclass(frozen=True)
class SeccompProgram:
    """A container's seccomp filter, compiled once in the server: libseccomp
    takes some 20 ms to generate a filter like RuntimeDefault, too long to
    pay in every exec's child, which only hands the program to the kernel."""

    bpf: bytes  # struct sock_filter[], as libseccomp exports it
    flags: int  # SECCOMP_FILTER_FLAG_*

    def load(self) -> None:
        program = _SockFprog(len(self.bpf) // 8, self.bpf)
        if _libc.syscall(_SYS_SECCOMP, _SECCOMP_SET_MODE_FILTER, self.flags, ctypes.byref(program)) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"loading the seccomp filter: {os.strerror(error)}")


class ConfinementError(Exception):
    """A spec that cannot be applied here: the exec is refused, never run unconfined."""


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@dataclass(frozen=True)
class Capabilities:
    """The five capability sets, as bit masks."""

    bounding: int
    effective: int
    permitted: int
    inheritable: int
    ambient: int

    def after_exec(self, uid: int) -> Capabilities:
        """The sets an exec of a file without capabilities leaves (the kernel's
        rules, capabilities(7)), for a process that stays as it is: root's
        permitted and effective sets become its inheritable and bounding
        sets; anyone else keeps only the ambient ones (a container user who
        is not root has no capability its exec would not have)."""
        permitted = self.inheritable | self.bounding if uid == 0 else self.ambient
        return Capabilities(self.bounding, permitted, permitted, self.inheritable, self.ambient)


@dataclass(frozen=True)
class Confinement:
    """Everything of a container's confinement that an exec must take on."""

    cgroup_procs: tuple[str, ...]  # host paths of the cgroup.procs files of the init's cgroups
    namespaces: int  # namespaces to join beyond podshell's own five (its cgroup namespace)
    uid: int
    gid: int
    groups: tuple[int, ...]
    umask: int
    cwd: str
    env: tuple[tuple[str, str], ...]
    rlimits: tuple[tuple[int, int, int], ...]  # (resource, soft, hard)
    no_new_privileges: bool
    capabilities: Capabilities | None  # None: the spec leaves them as they are
    last_capability: int
    seccomp: SeccompProgram | None
    oom_score_adj: int | None
    apparmor_profile: str | None  # only where the kernel has AppArmor
    selinux_label: str | None  # only where the kernel has SELinux

    def environment(self, session: Mapping[str, str] | None, tty: bool) -> dict[str, str]:
        """The spec's environment, C{TERM} for a terminal (as containerd and
        CRI-O add it), then the session's accepted variables."""
        env = dict(self.env)
        if tty:
            env["TERM"] = "xterm"
        env.update(session or {})
        return env

    def join_cgroups(self) -> None:
        """Enter the container's cgroup in every hierarchy, and take its OOM
        score: done in the child before it joins the mount namespace, where
        the host's cgroup filesystems and /proc are still in view."""
        for path in self.cgroup_procs:
            with open(path, "w") as f:
                f.write(str(os.getpid()))
        if self.oom_score_adj is not None:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write(str(self.oom_score_adj))

    def enter(self, exec_follows: bool = True) -> None:
        """In the container's namespaces, just before the exec: everything
        else, in libcontainer's order.  Raises C{OSError} saying what failed.

        Without an exec to follow (podshell's own servers run on in the
        child), the security labels are taken at once instead of at the
        exec, first, while nothing forbids the change yet; one that cannot
        be taken fails, never leaves the process unconfined."""
        if not exec_follows:
            if self.selinux_label is not None:
                _write_attr("current", self.selinux_label)
            if self.apparmor_profile is not None:
                _write_attr("apparmor/current", f"changeprofile {self.apparmor_profile}")
        if self.no_new_privileges:
            _prctl(_PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")
        os.umask(self.umask)
        for kind, soft, hard in self.rlimits:
            resource.setrlimit(kind, (soft, hard))
        if self.selinux_label is not None and exec_follows:
            _write_attr("exec", self.selinux_label)
        if self.seccomp is not None and not self.no_new_privileges:
            self.seccomp.load()  # needs CAP_SYS_ADMIN without no_new_privs: before the user switch
        caps = self.capabilities
        if caps is not None:
            for number in range(self.last_capability + 1):
                if not caps.bounding & (1 << number):
                    _prctl(_PR_CAPBSET_DROP, number, "dropping from the bounding set")
            _prctl(_PR_SET_KEEPCAPS, 1, "keep capabilities")
        # As runc: the directory first with the rights we still have (a cwd
        # only root may enter is reached), again as the user if refused.
        moved = self._chdir(retry=True)
        os.setgroups(list(self.groups))
        os.setgid(self.gid)
        os.setuid(self.uid)
        if not moved:
            self._chdir(retry=False)
        if caps is not None:
            _prctl(_PR_SET_KEEPCAPS, 0, "keep capabilities")
            _capset(caps if exec_follows else caps.after_exec(self.uid))
        if self.apparmor_profile is not None and exec_follows:
            _write_attr("apparmor/exec", f"exec {self.apparmor_profile}")
        if self.seccomp is not None and self.no_new_privileges:
            self.seccomp.load()  # as close to the exec as can be: the fewest syscalls under it

    def _chdir(self, retry: bool) -> bool:
        try:
            os.chdir(self.cwd)
        except PermissionError as e:
            if retry:
                return False
            raise OSError(e.errno, f"working directory {self.cwd}: {e.strerror}") from None
        except OSError as e:
            raise OSError(e.errno, f"working directory {self.cwd}: {e.strerror}") from None
        return True


def _prctl(option: int, value: int, what: str, argument: int = 0) -> None:
    if _libc.prctl(option, ctypes.c_ulong(value), ctypes.c_ulong(argument), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _capset(caps: Capabilities) -> None:
    data = (_CapData * 2)()
    for i in range(2):
        data[i].effective = (caps.effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (caps.permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (caps.inheritable >> (32 * i)) & 0xFFFFFFFF
    if _libc.capset(ctypes.byref(_CapHeader(_CAPABILITY_VERSION_3, 0)), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setting capabilities: {os.strerror(err)}")
    _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "clearing ambient capabilities")
    for number in range(64):
        if caps.ambient & (1 << number):
            _prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE, f"raising ambient capability {number}", number)


def _write_attr(name: str, value: str) -> None:
    """Set the security label the exec takes on (LSM attributes of /proc/self)."""
    with open(f"/proc/self/attr/{name}", "w") as f:
        f.write(value)


def prepare(spec: Mapping[str, Any], init: int, workdir: str | None = None) -> Confinement:
    """The confinement of an exec into the container whose PID 1 is
    C{init} and whose OCI runtime spec is C{spec}; C{workdir}, if given,
    replaces the spec's cwd (as C{runc exec --cwd}).

    @raise ConfinementError: the spec asks for what cannot be applied here.
    @raise ProcessLookupError: the container's init is gone.
    """
    process = spec.get("process") or {}
    linux = spec.get("linux") or {}
    user = process.get("user") or {}
    last = _last_capability()
    caps = process.get("capabilities")
    namespaces = {n.get("type") for n in linux.get("namespaces") or ()}
    if "user" in namespaces:
        raise ConfinementError("containers in a user namespace cannot be entered from the host yet")
    umask = user.get("umask")
    return Confinement(
        cgroup_procs=_cgroup_procs(init),
        namespaces=CLONE_NEWCGROUP if "cgroup" in namespaces else 0,
        uid=int(user.get("uid", 0)),
        gid=int(user.get("gid", 0)),
        groups=tuple(int(g) for g in user.get("additionalGids") or ()),
        umask=0o022 if umask is None else int(umask),
        cwd=workdir or process.get("cwd") or "/",
        env=tuple(_variable(v) for v in process.get("env") or ()),
        rlimits=tuple(_rlimit(r) for r in process.get("rlimits") or ()),
        no_new_privileges=bool(process.get("noNewPrivileges")),
        capabilities=None if caps is None else _capabilities(caps, last),
        last_capability=last,
        seccomp=_seccomp(linux["seccomp"]) if linux.get("seccomp") else None,
        oom_score_adj=process.get("oomScoreAdj"),
        apparmor_profile=(process.get("apparmorProfile") or None) if _has_apparmor() else None,
        selinux_label=(process.get("selinuxLabel") or None) if _has_selinux() else None,
    )


def _variable(entry: str) -> tuple[str, str]:
    name, sep, value = entry.partition("=")
    if not sep or not name:
        raise ConfinementError(f"the spec's environment has {entry!r}, not NAME=VALUE")
    return name, value


def _rlimit(entry: Mapping[str, Any]) -> tuple[int, int, int]:
    kind = getattr(resource, str(entry.get("type")), None)
    if not isinstance(kind, int) or not str(entry.get("type")).startswith("RLIMIT_"):
        raise ConfinementError(f"unknown rlimit {entry.get('type')!r} in the spec")

    def value(v: int) -> int:
        return resource.RLIM_INFINITY if v >= _RLIM_MAX else v

    return kind, value(int(entry.get("soft", 0))), value(int(entry.get("hard", 0)))


def _last_capability() -> int:
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def _capabilities(spec: Mapping[str, Any], last: int) -> Capabilities:
    """The spec's sets as masks.  Like runc, names this kernel does not know
    are left out; ambient capabilities exist only where they are also
    permitted and inheritable (the kernel refuses the others, and runc goes
    on without them)."""

    def mask(kind: str) -> int:
        bits = 0
        for name in spec.get(kind) or ():
            number = CAPABILITIES.get(str(name).removeprefix("CAP_"))
            if number is not None and number <= last:
                bits |= 1 << number
        return bits

    permitted, inheritable = mask("permitted"), mask("inheritable")
    return Capabilities(
        bounding=mask("bounding"),
        effective=mask("effective"),
        permitted=permitted,
        inheritable=inheritable,
        ambient=mask("ambient") & permitted & inheritable,
    )


def _action(name: str, errno_ret: int | None) -> int:
    """An OCI seccomp action as libseccomp's; errors default to EPERM, as runc's do."""
    code = _EPERM if errno_ret is None else int(errno_ret)
    actions = {
        "SCMP_ACT_KILL": pyseccomp.KILL_THREAD,
        "SCMP_ACT_KILL_THREAD": pyseccomp.KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS": pyseccomp.KILL_PROCESS,
        "SCMP_ACT_TRAP": pyseccomp.TRAP,
        "SCMP_ACT_ERRNO": pyseccomp.ERRNO(code),
        "SCMP_ACT_TRACE": pyseccomp.TRACE(code),
        "SCMP_ACT_LOG": pyseccomp.LOG,
        "SCMP_ACT_ALLOW": pyseccomp.ALLOW,
    }
    if name not in actions:
        raise ConfinementError(f"seccomp action {name!r} is not supported")
    return actions[name]


def _seccomp(spec: Mapping[str, Any]) -> SeccompProgram:
    """The spec's seccomp section compiled; the same section (every exec
    into a container has its container's) is compiled once."""
    return _compiled(json.dumps(spec, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _compiled(spec_json: str) -> SeccompProgram:
    spec = json.loads(spec_json)
    if _SYS_SECCOMP is None:
        raise ConfinementError(f"seccomp filters are not supported on {platform.machine()} yet")
    flags = 0
    for flag in spec.get("flags") or ():
        if flag not in _SECCOMP_FLAGS:
            raise ConfinementError(f"seccomp flag {flag!r} is not supported")
        flags |= _SECCOMP_FLAGS[flag]
    seccomp = _filter(spec)
    with os.fdopen(os.memfd_create("seccomp"), "w+b") as out:
        try:
            seccomp.export_bpf(out)
        except OSError as e:
            raise ConfinementError(f"the spec's seccomp filter: {e.strerror}") from None
        out.seek(0)
        return SeccompProgram(out.read(), flags)


def _filter(spec: Mapping[str, Any]) -> pyseccomp.SyscallFilter:
    """libseccomp's filter for the spec's seccomp section, as runc builds it:
    syscalls this libseccomp does not know are left out, and a rule whose
    action is the default is no rule at all."""
    if spec.get("listenerPath"):
        raise ConfinementError("seccomp user notification (listenerPath) is not supported")
    default = _action(str(spec.get("defaultAction")), spec.get("defaultErrnoRet"))
    try:
        seccomp = pyseccomp.SyscallFilter(default)
        for arch in spec.get("architectures") or ():
            number = getattr(pyseccomp.Arch, str(arch).removeprefix("SCMP_ARCH_"), None)
            if not str(arch).startswith("SCMP_ARCH_") or number is None:
                raise ConfinementError(f"unknown seccomp architecture {arch!r}")
            if not seccomp.exist_arch(number):
                seccomp.add_arch(number)
        for rule in spec.get("syscalls") or ():
            action = _action(str(rule.get("action")), rule.get("errnoRet"))
            if action == default:
                continue
            for conditions in _conditions(rule.get("args") or ()):
                for name in rule.get("names") or ():
                    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, str(name))
                    if number >= 0:
                        seccomp.add_rule(action, number, *conditions)
    except OSError as e:
        raise ConfinementError(f"the spec's seccomp filter: {e.strerror}") from None
    return seccomp


def _conditions(args: Sequence[Mapping[str, Any]]) -> list[list[pyseccomp.Arg]]:
    """The rules one syscall entry makes.  All of its conditions together
    make one rule, except that libseccomp cannot test one argument twice in
    a rule: then each condition is a rule of its own (as runc does)."""
    conditions = []
    for arg in args:
        op = _SECCOMP_COMPARE.get(str(arg.get("op")))
        if op is None:
            raise ConfinementError(f"unknown seccomp comparison {arg.get('op')!r}")
        conditions.append(
            pyseccomp.Arg(int(arg.get("index", 0)), op, int(arg.get("value", 0)), int(arg.get("valueTwo", 0)))
        )
    indexes = [int(arg.get("index", 0)) for arg in args]
    if len(set(indexes)) < len(indexes):
        return [[c] for c in conditions]
    return [conditions]


def _cgroup_procs(init: int) -> tuple[str, ...]:
    """The cgroup.procs files of the init's cgroup in every hierarchy
    mounted here (cgroup v1 controllers, named hierarchies and v2)."""
    try:
        with open(f"/proc/{init}/cgroup") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ProcessLookupError(f"process {init} is gone") from None
    mounts = _cgroup_mounts()
    paths = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        key = frozenset(controllers.split(",")) if controllers else frozenset()
        mount = next((m for m in mounts if (key <= m[0] if key else not m[0])), None)
        if mount is None:
            continue  # a hierarchy not mounted here: nothing can join it
        _, root, mountpoint = mount
        if not (path + "/").startswith(root.rstrip("/") + "/"):
            raise ConfinementError(f"the container's cgroup {line} is outside {mountpoint}")
        procs = os.path.join(mountpoint, path[len(root.rstrip("/")) :].lstrip("/"), "cgroup.procs")
        if not os.path.exists(procs):
            raise ConfinementError(f"the container's cgroup {line} has no {procs}")
        paths.append(procs)
    return tuple(paths)


def _cgroup_mounts() -> list[tuple[frozenset[str], str, str]]:
    """(controllers, root, mount point) of the cgroup filesystems here; no
    controllers for cgroup v2."""
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields, _, tail = line.partition(" - ")
            fstype, _, options = tail.split()[:3]
            root, mountpoint = fields.split()[3:5]
            if fstype == "cgroup":
                mounts.append((frozenset(options.split(",")), root, mountpoint))
            elif fstype == "cgroup2":
                mounts.append((frozenset(), root, mountpoint))
    return mounts


def _has_apparmor() -> bool:
    try:
        with open("/sys/module/apparmor/parameters/enabled") as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def _has_selinux() -> bool:
    return os.path.exists("/sys/fs/selinux/enforce")
