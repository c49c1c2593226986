"""Stock kubectl in every version the tests drive, and kubectl port-forward
in the background."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from ..sshserver import free_port

KUBECTL_DIR = Path(os.path.realpath(shutil.which("kubectl") or "/usr/bin/kubectl")).parent
# Debian's kubectl 1.20 (SPDY only), unpacked by scripts/test-deps.sh.
TOOLS = Path(os.environ.get("PODSHELL_TEST_TOOLS", Path(__file__).parent.parent.parent / ".test-tools"))
VERSIONS = [
    "1.20",
    *sorted((p.name.split("kubectl.")[1] for p in KUBECTL_DIR.glob("kubectl.1.*")), key=lambda v: int(v.split(".")[1])),
]


def minor(version: str) -> int:
    return int(version.split(".")[1])


# WebSocket exec is kubectl's default from 1.30 on; 1.29 has it behind an environment switch.
WS_VERSIONS = [v for v in VERSIONS if minor(v) >= 29]
# Every version over SPDY, and over WebSocket where it has it.
EXEC_CASES = [(v, "spdy") for v in VERSIONS] + [(v, "websocket") for v in WS_VERSIONS]
# Port-forward over WebSocket (SPDY tunnelled) is opt-in in 1.30, the default from 1.31.
PF_CASES = [(v, "spdy") for v in VERSIONS] + [(v, "websocket") for v in VERSIONS if minor(v) >= 30]


def transport_env(transport: str) -> dict[str, str]:
    flag = "true" if transport == "websocket" else "false"
    return {"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": flag, "KUBECTL_PORT_FORWARD_WEBSOCKETS": flag}


def kubectl_binary(version: str | None) -> str:
    if version == "1.20":
        return str(TOOLS / "kubectl.1.20")
    return str(KUBECTL_DIR / f"kubectl.{version}") if version else "kubectl"


class PortForward:
    """kubectl port-forward web-0 running in the background, with its local
    ports; C{api.root} holds alice.kubeconfig."""

    def __init__(self, api, version: str, transport: str, *remote: int) -> None:
        self.local = [free_port() for _ in remote]
        specs = [f"{lp}:{rp}" for lp, rp in zip(self.local, remote, strict=True)]
        env = {**os.environ, "KUBECONFIG": str(api.root / "alice.kubeconfig"), **transport_env(transport)}
        self.proc = subprocess.Popen(
            [kubectl_binary(version), "port-forward", "web-0", *specs],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        for _ in range(2 * len(remote)):  # "Forwarding from 127.0.0.1:L -> R", and from [::1]
            line = self.proc.stdout.readline()
            assert line.startswith(b"Forwarding from "), line + self.stop()

    def stop(self) -> bytes:
        self.proc.terminate()
        _out, err = self.proc.communicate(timeout=15)
        return err
