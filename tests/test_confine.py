"""An exec into a container with an OCI runtime spec is confined exactly as
C{runc exec} confines it: real runc containers, compared field by field."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pty
import select
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyseccomp
import pytest
import pytest_twisted

from podshell.core.process import ExitStatus
from podshell.node.nsexec import start_time
from podshell.node.runtime.base import ContainerHandle, ProcessRef
from tests.conftest import Collect, needs_root
from tests.images import busybox_rootfs

RUNC = "/usr/sbin/runc"
STATUS_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters")
IDENTITY_FIELDS = ("Uid", "Gid", "Groups")
HOST_BOUNDING = Path("/proc/self/status").read_text().split("CapBnd:")[1].split()[0]
DEFAULT_CAPS = [  # containerd's default set
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
]
# What containerd's default profile refuses outright (and setpriority, so
# that an unprivileged command shows the filter and its errnoRet).
DENIED = {
    "acct",
    "add_key",
    "bpf",
    "clone",
    "clone3",
    "delete_module",
    "finit_module",
    "init_module",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "mount",
    "open_by_handle_at",
    "perf_event_open",
    "personality",
    "pivot_root",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "setpriority",
    "swapoff",
    "swapon",
    "umount2",
    "unshare",
    "userfaultfd",
}
CLONE_NAMESPACE_FLAGS = 0x7E020000

pytestmark = needs_root


def runtime_default_seccomp() -> dict:
    """A seccomp section shaped like containerd's RuntimeDefault: errors by
    default, an allow list, arguments tested (several values of one
    argument, a masked flag test) and an errno of its own."""
    known = {pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, n).decode() for n in range(1024) if _named(n)}
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [
            {"names": sorted(known - DENIED), "action": "SCMP_ACT_ALLOW"},
            *(
                {
                    "names": ["personality"],
                    "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}],
                }
                for v in (0, 8, 0x20000, 0x20008, 0xFFFFFFFF)
            ),
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
            },
            {"names": ["clone3", "setpriority"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {"names": ["no_such_syscall_here"], "action": "SCMP_ACT_ALLOW"},
        ],
    }


def _named(number: int) -> bool:
    try:
        pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, number)
    except ValueError:
        return False
    return True


@dataclass
class Container:
    """A container run by runc itself, and the handle podshell enters it by."""

    id: str
    root: Path
    handle: ContainerHandle

    def runc_exec(self, argv: list[str], *options: str) -> tuple[int, str]:
        done = subprocess.run(
            [RUNC, "--root", str(self.root), "exec", *options, self.id, *argv],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.returncode, done.stdout + done.stderr

    def runc_terminal(self, argv: list[str]) -> str:
        """C{runc exec -t} on a terminal of its own, as containerd's exec with
        a tty (which adds C{TERM=xterm})."""
        master, slave = pty.openpty()
        try:
            runc = subprocess.Popen(
                [RUNC, "--root", str(self.root), "exec", "-t", "--env", "TERM=xterm", self.id, *argv],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                start_new_session=True,
            )
            os.close(slave)
            out = bytearray()
            while select.select([master], [], [], 30)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: everyone closed the terminal
                    break
                if not data:
                    break
                out += data
            runc.wait(timeout=30)
            return out.decode()
        finally:
            os.close(master)


@pytest.fixture
def run_container(tmp_path: Path) -> Iterator[Callable[..., Container]]:
    """run_container(name, configure) -> a running runc container whose
    config.json is runc's own template as containerd would fill it, changed
    by C{configure}; killed, deleted and its cgroups removed at teardown."""
    made: list[tuple[Path, str, str]] = []

    def run(name: str, configure: Callable[[dict], None]) -> Container:
        token = uuid.uuid4().hex[:8]
        bundle, root = tmp_path / name, tmp_path / f"{name}-state"
        busybox_rootfs(bundle / "rootfs")
        subprocess.run([RUNC, "spec"], cwd=bundle, check=True)
        config = json.loads((bundle / "config.json").read_text())
        cgroup = f"/podshell-confine-{name}-{token}"
        config["process"].update(
            terminal=False,
            args=["sleep", "3600"],
            env=["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", f"HOSTNAME={name}"],
        )
        config["hostname"] = name
        config["linux"]["cgroupsPath"] = cgroup
        configure(config)
        (bundle / "config.json").write_text(json.dumps(config))
        cid = f"podshell-{name}-{token}"
        made.append((root, cid, cgroup))
        with open(tmp_path / f"{name}.log", "w") as log:
            subprocess.run(
                [RUNC, "--root", str(root), "run", "-d", cid],
                cwd=bundle,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                check=True,
                timeout=30,
            )
        state = subprocess.run(
            [RUNC, "--root", str(root), "state", cid], capture_output=True, text=True, check=True, timeout=30
        )
        pid = json.loads(state.stdout)["pid"]
        init = ProcessRef(pid, start_time(pid))
        handle = ContainerHandle("default", name, "main", name, init, init, runtime_spec=config)
        return Container(cid, root, handle)

    yield run
    for root, cid, cgroup in made:
        for verb in (["kill", cid, "KILL"], ["delete", "--force", cid]):
            subprocess.run([RUNC, "--root", str(root), *verb], capture_output=True, timeout=30)
        for hierarchy in Path("/sys/fs/cgroup").iterdir():
            with contextlib.suppress(FileNotFoundError):
                (hierarchy / cgroup.lstrip("/")).rmdir()


async def podshell_exec(spawner, container: Container, argv: list[str], tty: bool = False) -> tuple[ExitStatus, str]:
    sink = Collect()
    spawner.process(container.handle, argv, sink, tty=tty)
    status = await sink.done
    return status, (bytes(sink.out) + bytes(sink.err)).decode()


def status_fields(text: str, fields: tuple[str, ...]) -> dict[str, str]:
    lines = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    return {f: " ".join(lines[f].split()) for f in fields}


LIMITS = ["cat", "/proc/self/limits"]
PROBES = [
    ["cat", "/proc/self/cgroup"],
    LIMITS,
    ["id"],
    ["env"],
    ["pwd"],
    ["cat", "/proc/self/oom_score_adj"],
    ["sh", "-c", "touch /probe; echo $?"],
    ["sh", "-c", "renice -n 1 -p $$; echo $?"],
    ["sh", "-c", "linux32 true; echo $?"],
]


def spec_nofile(container: Container) -> tuple[str, str] | None:
    for entry in container.handle.runtime_spec["process"].get("rlimits", ()):
        if entry["type"] == "RLIMIT_NOFILE":
            return str(entry["soft"]), str(entry["hard"])
    return None


def without_nofile(limits: str, expect: tuple[str, str] | None = None) -> str:
    """C{/proc/self/limits} without its open-files line, which runc 1.1
    gets wrong at random: runc init is a Go program, Go 1.19 raises its
    soft NOFILE to the hard limit at start-up, and that races with the
    parent's prlimit of the spec's value. Ours must be the
    spec's, when the spec sets one."""
    kept, nofile = [], None
    for line in limits.splitlines():
        if line.startswith("Max open files"):
            nofile = tuple(line.split()[3:5])
        else:
            kept.append(line)
    if expect is not None:
        assert nofile == expect, limits
    return "\n".join(kept)


async def same_as_runc(spawner, container: Container) -> dict[str, str]:
    """Every probe, run by podshell and by runc exec, gives the same; the
    status fields of the exec'd process are returned for more checks."""
    code, theirs = container.runc_exec(["cat", "/proc/self/status"])
    status, own = await podshell_exec(spawner, container, ["cat", "/proc/self/status"])
    assert (code, status) == (0, ExitStatus(code=0)), (theirs, own)
    fields = STATUS_FIELDS + IDENTITY_FIELDS
    assert status_fields(own, fields) == status_fields(theirs, fields)
    for probe in PROBES:
        code, theirs = container.runc_exec(probe)
        status, ours = await podshell_exec(spawner, container, probe)
        if probe == LIMITS:
            theirs, ours = without_nofile(theirs), without_nofile(ours, expect=spec_nofile(container))
        differ = sorted(set(ours.splitlines()) ^ set(theirs.splitlines()))
        assert (status.code, sorted(ours.splitlines())) == (code, sorted(theirs.splitlines())), (probe, differ)
    # runc 1.1 leaves an exec the umask of whoever ran runc; the spec's is
    # the container's own, which its init has.
    init = Path(f"/proc/{container.handle.init.pid}/status").read_text()
    assert status_fields(own, ("Umask",)) == status_fields(init, ("Umask",))
    return status_fields(own, fields)


def configure_capabilities(config: dict) -> None:
    caps = [c for c in DEFAULT_CAPS if c not in ("CAP_NET_RAW", "CAP_MKNOD")] + ["CAP_NET_ADMIN", "CAP_SYS_PTRACE"]
    config["process"]["capabilities"] = {
        "bounding": caps,
        "effective": caps,
        "permitted": caps,
        "inheritable": ["CAP_KILL", "CAP_NET_ADMIN"],
        "ambient": ["CAP_NET_ADMIN", "CAP_CHOWN"],
    }
    config["process"]["noNewPrivileges"] = True
    config["process"]["cwd"] = "/tmp"
    config["process"]["env"].append("GREETING=hello world")
    config["process"]["user"]["umask"] = 0o027
    config["process"]["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "soft": 4096, "hard": 8192},
        {"type": "RLIMIT_NPROC", "soft": 512, "hard": 1024},
    ]
    config["root"]["readonly"] = True
    config["linux"]["seccomp"] = runtime_default_seccomp()
    config["linux"]["resources"]["memory"] = {"limit": 32 << 20}


def configure_user(config: dict) -> None:
    config["process"]["user"] = {"uid": 1000, "gid": 1000, "additionalGids": [2000, 65534]}
    config["process"]["capabilities"] = dict.fromkeys(("bounding", "effective", "permitted"), DEFAULT_CAPS)
    config["process"]["noNewPrivileges"] = False  # the filter goes on before the user switch
    config["process"]["cwd"] = "/home"
    config["process"]["oomScoreAdj"] = 500
    config["linux"]["namespaces"].append({"type": "cgroup"})  # as containerd gives one on cgroup v2
    config["linux"]["seccomp"] = runtime_default_seccomp()


@pytest_twisted.ensureDeferred
async def test_dropped_and_added_capabilities_seccomp_and_limits(spawner, run_container):
    container = run_container("caps", configure_capabilities)
    fields = await same_as_runc(spawner, container)
    assert fields["CapBnd"] != HOST_BOUNDING
    assert (fields["NoNewPrivs"], fields["Seccomp"]) == ("1", "2")
    assert fields["CapAmb"] == f"{1 << 12:016x}"  # NET_ADMIN; CHOWN is not inheritable
    _, umask = await podshell_exec(spawner, container, ["sh", "-c", "umask"])
    assert umask == "0027\n"
    _, touched = await podshell_exec(spawner, container, ["touch", "/probe"])
    assert "Read-only file system" in touched
    _, cgroups = await podshell_exec(spawner, container, ["cat", "/proc/self/cgroup"])
    assert all(line.endswith(container.handle.runtime_spec["linux"]["cgroupsPath"]) for line in cgroups.splitlines())
    _, refused = await podshell_exec(spawner, container, ["renice", "-n", "1", "-p", "1"])
    assert "Function not implemented" in refused
    assert await podshell_exec(spawner, container, ["linux32", "true"]) == (ExitStatus(code=0), "")


@pytest_twisted.ensureDeferred
async def test_a_non_root_user_with_additional_groups(spawner, run_container):
    container = run_container("user", configure_user)
    fields = await same_as_runc(spawner, container)
    assert fields["Uid"] == "1000 1000 1000 1000"
    assert fields["Groups"] == "2000 65534"
    assert (fields["NoNewPrivs"], fields["Seccomp"]) == ("0", "2")
    assert await podshell_exec(spawner, container, ["cat", "/proc/self/oom_score_adj"]) == (ExitStatus(code=0), "500\n")
    _, cgroups = await podshell_exec(spawner, container, ["cat", "/proc/self/cgroup"])
    assert all(line.endswith(":/") for line in cgroups.splitlines())  # its own cgroup namespace's root


@pytest_twisted.ensureDeferred
async def test_a_terminal_exec(spawner, run_container):
    container = run_container("tty", configure_capabilities)
    outputs = {}
    for probe in (["cat", "/proc/self/status"], ["env"], ["id"]):
        theirs = container.runc_terminal(probe)
        status, ours = await podshell_exec(spawner, container, probe, tty=True)
        assert status == ExitStatus(code=0)
        outputs[probe[0]] = ours
        if probe[0] == "cat":
            fields = STATUS_FIELDS + IDENTITY_FIELDS
            assert status_fields(ours, fields) == status_fields(theirs, fields)
        else:
            assert sorted(ours.splitlines()) == sorted(theirs.splitlines())
    assert "TERM=xterm\r" in outputs["env"]


@pytest_twisted.ensureDeferred
async def test_a_process_over_the_memory_limit_is_killed_in_the_container_cgroup(spawner, run_container):
    container = run_container("memory", configure_capabilities)
    memory = Path("/sys/fs/cgroup/memory") / container.handle.runtime_spec["linux"]["cgroupsPath"].lstrip("/")

    def oom_kills() -> int:
        return int(dict(line.split() for line in (memory / "memory.oom_control").read_text().splitlines())["oom_kill"])

    before = oom_kills()
    status, _ = await podshell_exec(spawner, container, ["sh", "-c", 'x=$(head -c 100000000 /dev/zero | tr "\\0" a)'])
    assert status == ExitStatus(signal="KILL")
    assert oom_kills() > before
    assert int((memory / "memory.max_usage_in_bytes").read_text()) <= 32 << 20


def with_spec(container: Container, change: Callable[[dict], None]) -> ContainerHandle:
    """The container's handle with a changed copy of its spec."""
    spec = json.loads(json.dumps(container.handle.runtime_spec))
    change(spec)
    return dataclasses.replace(container.handle, runtime_spec=spec)


@pytest_twisted.ensureDeferred
async def test_what_cannot_be_applied_fails_the_exec_before_it_runs(spawner, run_container):
    container = run_container("refused", configure_user)
    unknown_action = with_spec(container, lambda s: s["linux"]["seccomp"].update(defaultAction="SCMP_ACT_NO_SUCH"))
    no_cwd = with_spec(container, lambda s: s["process"].update(cwd="/no/such/dir"))
    for handle, message in ((unknown_action, b"SCMP_ACT_NO_SUCH"), (no_cwd, b"working directory /no/such/dir")):
        sink = Collect()
        spawner.process(handle, ["id"], sink)
        assert await sink.done == ExitStatus(code=126)
        assert message in sink.err and not sink.out
