#!/bin/sh
# System packages the integration tests drive for real: OpenSSH's sftp-server
# (run inside pods for sftp/scp) and rsync. Installed only when missing.
set -e
missing=""
[ -x /usr/lib/openssh/sftp-server ] || missing="$missing openssh-sftp-server"
command -v rsync >/dev/null 2>&1 || missing="$missing rsync"
command -v ssh >/dev/null 2>&1 || missing="$missing openssh-client"
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
