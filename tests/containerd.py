"""A real containerd for the CRI tests, and a test that plays the kubelet.

containerd runs with its own config, root, state, socket and CNI bridge under
a temporary directory; the images are built from busybox (tests/images.py)
and imported.  L{Kubelet} runs pods through the CRI with what a kubelet
sends (labels, masked and read-only paths, explicit namespace options,
security contexts, resources).  L{Containerd.stop} leaves no pod, shim,
bridge or mount behind, whatever state a failed test left."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from podshell.node.runtime.cri import api_pb2 as cri
from podshell.node.runtime.cri.api_pb2_grpc import RuntimeServiceStub
from podshell.node.runtime.cri.client import Client, RpcError
from tests.images import busybox_rootfs, oci_archive

PAUSE_IMAGE = "podshell.test/pause:1"
BUSYBOX_IMAGE = "podshell.test/busybox:1"
SHELLLESS_IMAGE = "podshell.test/static:1"
SLEEP = ["/bin/busybox", "sleep", "2147483647"]

# What a kubelet masks and makes read-only (containerd 1.6 applies none unless told).
MASKED = ["/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
          "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"]  # fmt: skip
READ_ONLY = ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

_CONFIG = """\
version = 2
root = "{root}/root"
state = "{root}/state"
[grpc]
  address = "{root}/containerd.sock"
[ttrpc]
  address = "{root}/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  tolerate_missing_hugetlb_controller = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        Root = "{root}/state/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{root}/cni"
"""


class Containerd:
    """containerd under C{root}: start, import the images, stop clean."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = root / "containerd.sock"
        self.endpoint = f"unix://{self.socket}"
        self.bridge = f"pshcri{os.getpid() % 100000}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        (self.root / "cni").mkdir(parents=True)
        subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}.0/24"
        net = {
            "cniVersion": "1.0.0",
            "name": "podshell-test",
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": False,
            "ipMasq": False,
            "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(self.root / "ipam")},
        }
        (self.root / "cni" / "10-podshell-test.conf").write_text(json.dumps(net))
        (self.root / "config.toml").write_text(_CONFIG.format(root=self.root, pause=PAUSE_IMAGE))
        self.log = self.root / "containerd.log"
        self.start_daemon()
        self._import_images()

    def start_daemon(self) -> None:
        """containerd itself; a restart finds its pods again through their shims."""
        # A session of its own, as the node's containerd is: not the test run's child in its job.
        self.proc = subprocess.Popen(
            ["containerd", "--config", str(self.root / "config.toml")],
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_ready()

    def stop_daemon(self) -> None:
        """containerd alone, as an upgrade stops it: shims and containers go on."""
        assert self.proc is not None
        self.proc.terminate()
        self.proc.wait(10)
        self.socket.unlink(missing_ok=True)

    def ctr(self, *args: str) -> str:
        return subprocess.run(
            ["ctr", "-a", str(self.socket), "-n", "k8s.io", *args], capture_output=True, text=True, check=True
        ).stdout

    def _wait_ready(self, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"containerd exited:\n{self.log.read_text()}")
            if (
                self.socket.exists()
                and subprocess.run(["ctr", "-a", str(self.socket), "version"], capture_output=True).returncode == 0
            ):
                return
            time.sleep(0.05)
        raise AssertionError(f"containerd not ready:\n{self.log.read_text()}")

    def _import_images(self) -> None:
        images = self.root / "images"
        shell = busybox_rootfs(images / "busybox")
        bare = busybox_rootfs(images / "static", shell=False)
        for name, rootfs in ((PAUSE_IMAGE, bare), (BUSYBOX_IMAGE, shell), (SHELLLESS_IMAGE, bare)):
            archive = oci_archive(images / f"{name.split('/')[1].replace(':', '-')}.tar", name, rootfs, SLEEP)
            self.ctr("images", "import", str(archive))

    def stop(self) -> None:
        """Pods first (the kubelet's way), then containerd, then whatever a
        failure left: shims and their containers, mounts, the bridge."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(RpcError):
                Kubelet(self.endpoint).remove_all()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        address = str(self.socket)
        for p in psutil.process_iter(["cmdline"]):
            if address in " ".join(p.info["cmdline"] or []):  # a shim of ours: its container dies with it
                for child in p.children(recursive=True):
                    with contextlib.suppress(psutil.NoSuchProcess):
                        child.send_signal(signal.SIGKILL)
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.send_signal(signal.SIGKILL)
        self._unmount()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def _unmount(self) -> None:
        prefix = str(self.root)
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        for point in reversed(points):
            if point.startswith(prefix):
                subprocess.run(["umount", "-l", point], capture_output=True)


@dataclass
class ContainerSpec:
    """A container as a kubelet would ask for it."""

    name: str
    command: list[str] = field(default_factory=lambda: list(SLEEP))
    image: str = BUSYBOX_IMAGE
    env: dict[str, str] = field(default_factory=dict)
    working_dir: str = ""
    run_as_user: int | None = None
    readonly_rootfs: bool = False
    memory_limit: int = 0
    restart_count: int = 0
    # Its stdio as the kubelet asks for it (the Pod's stdin, stdinOnce, tty).
    stdin: bool = False
    stdin_once: bool = False
    tty: bool = False


@dataclass
class RunningPod:
    namespace: str
    name: str
    uid: str
    sandbox_id: str
    config: cri.PodSandboxConfig
    containers: dict[str, str] = field(default_factory=dict)  # name -> container ID


class Kubelet:
    """Runs pods through the CRI as the kubelet does (never podshell)."""

    def __init__(self, endpoint: str) -> None:
        self.client = Client(endpoint)
        self.cri = RuntimeServiceStub(self.client.channel)

    def close(self) -> None:
        self.client.close()

    def run_pod(self, namespace: str, name: str, *containers: ContainerSpec,
                annotations: dict[str, str] | None = None, log_dir: str = "") -> RunningPod:  # fmt: skip
        uid = str(uuid.uuid4())
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
        labels = {"io.kubernetes.pod.namespace": namespace, "io.kubernetes.pod.name": name,
                  "io.kubernetes.pod.uid": uid, "app": name}  # fmt: skip
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, namespace=namespace, uid=uid, attempt=0),
            hostname=name,
            log_directory=log_dir,
            labels=labels,
            annotations=annotations or {},
            linux=cri.LinuxPodSandboxConfig(
                security_context=cri.LinuxSandboxSecurityContext(
                    namespace_options=cri.NamespaceOption(network=cri.POD, pid=cri.CONTAINER, ipc=cri.POD),
                    seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault),
                )
            ),
        )
        sandbox = self.cri.RunPodSandbox(cri.RunPodSandboxRequest(config=config), timeout=30).pod_sandbox_id
        pod = RunningPod(namespace, name, uid, sandbox, config)
        for spec in containers:
            self.start_container(pod, spec)
        return pod

    def start_container(self, pod: RunningPod, spec: ContainerSpec) -> str:
        """Create and start C{spec} in C{pod} (a restart: a higher restart_count)."""
        labels = {k: v for k, v in pod.config.labels.items() if k.startswith("io.kubernetes.pod.")}
        labels["io.kubernetes.container.name"] = spec.name
        context = cri.LinuxContainerSecurityContext(
            namespace_options=cri.NamespaceOption(network=cri.POD, pid=cri.CONTAINER, ipc=cri.POD),
            masked_paths=MASKED,
            readonly_paths=READ_ONLY,
            readonly_rootfs=spec.readonly_rootfs,
            seccomp=cri.SecurityProfile(profile_type=cri.SecurityProfile.RuntimeDefault),
            capabilities=cri.Capability(drop_capabilities=["NET_RAW"]),
        )
        if spec.run_as_user is not None:
            context.run_as_user.value = spec.run_as_user
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=spec.name, attempt=spec.restart_count),
            image=cri.ImageSpec(image=spec.image),
            command=spec.command,
            working_dir=spec.working_dir,
            envs=[cri.KeyValue(key=k, value=v) for k, v in spec.env.items()],
            labels=labels,
            annotations={"io.kubernetes.container.restartCount": str(spec.restart_count)},
            log_path=f"{spec.name}/{spec.restart_count}.log" if pod.config.log_directory else "",
            stdin=spec.stdin,
            stdin_once=spec.stdin_once,
            tty=spec.tty,
            linux=cri.LinuxContainerConfig(
                resources=cri.LinuxContainerResources(memory_limit_in_bytes=spec.memory_limit, cpu_shares=2),
                security_context=context,
            ),
        )
        created = self.cri.CreateContainer(
            cri.CreateContainerRequest(pod_sandbox_id=pod.sandbox_id, config=config, sandbox_config=pod.config),
            timeout=30,
        ).container_id
        self.cri.StartContainer(cri.StartContainerRequest(container_id=created), timeout=30)
        pod.containers[spec.name] = created
        return created

    def stop_container(self, container_id: str) -> None:
        self.cri.StopContainer(cri.StopContainerRequest(container_id=container_id, timeout=0), timeout=30)

    def remove_pod(self, sandbox_id: str) -> None:
        self.cri.StopPodSandbox(cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)
        self.cri.RemovePodSandbox(cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=30)

    def remove_all(self) -> None:
        for sandbox in self.cri.ListPodSandbox(cri.ListPodSandboxRequest(), timeout=10).items:
            self.remove_pod(sandbox.id)
