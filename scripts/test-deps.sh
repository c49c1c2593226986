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
