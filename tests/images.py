"""Container root filesystems for the runtime tests, made from Debian's
busybox-static (unpacked into .test-tools by scripts/test-deps.sh): no
registry, no image on the host; and OCI image archives of them, which
containerd imports."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

TOOLS = Path(os.environ.get("PODSHELL_TEST_TOOLS", Path(__file__).parent.parent / ".test-tools"))
BUSYBOX = TOOLS / "busybox"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def busybox_rootfs(dest: Path, shell: bool = True) -> Path:
    """A root filesystem at C{dest}: busybox and its applets under /bin
    (C{shell=False}: the one binary, no /bin/sh: a shell-less image), /etc
    with root and nobody, and the empty mount points a runtime expects."""
    if not BUSYBOX.exists():
        raise FileNotFoundError(f"{BUSYBOX}: run scripts/test-deps.sh first")
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp", "root", "home", "run"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    (dest / "tmp").chmod(0o1777)
    shutil.copy2(BUSYBOX.resolve(), dest / "bin" / "busybox")
    if shell:
        applets = subprocess.run([str(BUSYBOX), "--list"], capture_output=True, text=True, check=True).stdout.split()
        for applet in applets:
            link = dest / "bin" / applet
            if applet != "busybox" and not link.exists():
                link.symlink_to("busybox")
    (dest / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n"
        "app:x:1000:1000:app:/home:/bin/sh\n"
    )
    (dest / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:app\n")
    return dest


def _blob(blobs: Path, data: bytes) -> dict:
    """Store C{data} by digest; its descriptor (digest and size)."""
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _layer(rootfs: Path) -> tuple[bytes, str]:
    """The gzip layer of C{rootfs}, owned by root, and its diff ID (the
    digest of the uncompressed tar)."""

    def as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(rootfs.iterdir()):
            tar.add(entry, arcname=entry.name, filter=as_root)
    data = raw.getvalue()
    return gzip.compress(data, compresslevel=1, mtime=0), f"sha256:{hashlib.sha256(data).hexdigest()}"


def oci_archive(dest: Path, name: str, rootfs: Path, cmd: list[str], env: list[str] | None = None,
                workdir: str = "/", user: str = "") -> Path:  # fmt: skip
    """An OCI image archive at C{dest} (oci-layout, index.json, blobs) of one
    layer made of C{rootfs}, that C{ctr images import} names C{name}."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        blobs = root / "blobs" / "sha256"
        blobs.mkdir(parents=True)
        layer, diff_id = _layer(rootfs)
        config = {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": env or [f"PATH={DEFAULT_PATH}"], "Cmd": cmd, "WorkingDir": workdir, "User": user},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_blob(blobs, _json(config))},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **_blob(blobs, layer)}],
        }
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **_blob(blobs, _json(manifest)),
                    "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name},
                }
            ],
        }
        (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
        (root / "index.json").write_bytes(_json(index))
        with tarfile.open(dest, "w") as tar:
            for entry in ("oci-layout", "index.json", "blobs"):
                tar.add(root / entry, arcname=entry)
    return dest


def _json(value: dict) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
