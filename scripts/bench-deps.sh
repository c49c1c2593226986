#!/bin/sh
# What the benchmarks measure against: OpenSSH's sshd (the reference server),
# plus everything the tests need. Installed only when missing.
set -e
sh "$(dirname "$0")/test-deps.sh"
if [ ! -x /usr/sbin/sshd ]; then
    echo "installing: openssh-server"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server >/dev/null
fi
