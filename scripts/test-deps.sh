#!/bin/sh
# System packages the integration tests drive for real: OpenSSH's sftp-server
# (what podshell's own SFTP server is measured against), rsync, a real container
# runtime (containerd, runc, the CNI plugins), Prometheus (it scrapes the
# metrics listener in tests/test_metrics_prometheus.py; the test starts its own,
# the package's service stays stopped), asciinema and tmux (session recordings).
# Installed only when missing.
set -e
missing=""
[ -x /usr/lib/openssh/sftp-server ] || missing="$missing openssh-sftp-server"
command -v rsync >/dev/null 2>&1 || missing="$missing rsync"
command -v ssh >/dev/null 2>&1 || missing="$missing openssh-client"
command -v containerd >/dev/null 2>&1 || missing="$missing containerd"
[ -x /usr/sbin/runc ] || missing="$missing runc"
[ -x /usr/lib/cni/bridge ] || missing="$missing containernetworking-plugins"
command -v prometheus >/dev/null 2>&1 || missing="$missing prometheus"
# asciinema: its player reads podshell's recordings in tests/test_recording_e2e.py.
command -v asciinema >/dev/null 2>&1 || missing="$missing asciinema"
command -v tmux >/dev/null 2>&1 || missing="$missing tmux"
if [ -n "$missing" ]; then
    echo "installing:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# Debian's kubectl 1.20 (SPDY only), unpacked beside the tests and never
# installed: the image's kubectl is a version dispatcher we must not replace.
tools="${PODSHELL_TEST_TOOLS:-$(dirname "$0")/../.test-tools}"
if [ ! -x "$tools/kubectl.1.20" ]; then
    mkdir -p "$tools/deb"
    (cd "$tools/deb" && { apt-get download -qq kubernetes-client 2>/dev/null || { apt-get update -qq && apt-get download -qq kubernetes-client; }; })
    dpkg -x "$tools"/deb/kubernetes-client_*.deb "$tools/root"
    ln -sf "$(cd "$tools/root/usr/bin" && pwd)/kubectl" "$tools/kubectl.1.20"
    rm -rf "$tools/deb"
fi

# Debian's busybox-static, unpacked beside the tests: the one binary the test
# images are built from (tests/images.py), never installed on the host.
if [ ! -x "$tools/busybox" ]; then
    mkdir -p "$tools/deb"
    (cd "$tools/deb" && { apt-get download -qq busybox-static 2>/dev/null || { apt-get update -qq && apt-get download -qq busybox-static; }; })
    dpkg -x "$tools"/deb/busybox-static_*.deb "$tools/busybox-root"
    ln -sf "$(cd "$tools/busybox-root/bin" && pwd)/busybox" "$tools/busybox"
    rm -rf "$tools/deb"
fi
