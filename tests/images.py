"""Container root filesystems for the runtime tests, made from Debian's
busybox-static (unpacked into .test-tools by scripts/test-deps.sh): no
registry, no image on the host."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

TOOLS = Path(os.environ.get("PODSHELL_TEST_TOOLS", Path(__file__).parent.parent / ".test-tools"))
BUSYBOX = TOOLS / "busybox"


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
