"""Separate hosts on one LAN, made of network namespaces joined by a bridge.

Each host has its own loopback and one address on 10.213.X.0/24 (X from our
PID, so concurrent runs do not collide); nothing from the host's own network
is reachable from them.  Processes started in a host run under
``ip netns exec``.  L{Hosts.close} kills what was started and removes the
namespaces and the bridge.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
from pathlib import Path

# Each set of hosts in a process gets its own names: the kernel destroys a
# deleted namespace's links in the background, so a second set named like
# the first could meet the first's veths.
_serial = itertools.count()


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Hosts:
    def __init__(self, names: list[str]) -> None:
        tag = f"{os.getpid() % 100000}{next(_serial) % 100}"
        self.subnet = f"10.213.{os.getpid() % 250 + 1}"
        self.bridge = f"psbr{tag}"
        self.netns: dict[str, str] = {}
        self.veths: list[str] = []
        self.address: dict[str, str] = {}
        self.procs: list[subprocess.Popen] = []
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("link", "set", self.bridge, "up")
        try:
            for i, name in enumerate(names):
                ns, outside, inside = f"ps-{name}-{tag}", f"psv{tag}x{i}", f"psv{tag}y{i}"
                _ip("netns", "add", ns)
                self.netns[name] = ns
                _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                self.veths.append(outside)
                _ip("link", "set", inside, "netns", ns)
                _ip("link", "set", outside, "master", self.bridge, "up")
                self.address[name] = f"{self.subnet}.{i + 2}"
                _ip("-n", ns, "addr", "add", f"{self.address[name]}/24", "dev", inside)
                _ip("-n", ns, "link", "set", inside, "up")
                _ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise

    def argv(self, host: str, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns[host], *argv]

    def run(self, host: str, *argv: str, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("capture_output", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(self.argv(host, *argv), **kw)

    def start(self, host: str, argv: list[str], log: Path, cwd: Path) -> subprocess.Popen:
        proc = subprocess.Popen(self.argv(host, *argv), cwd=cwd, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for veth in self.veths:  # at once, not when the kernel gets to the namespace
            subprocess.run(["ip", "link", "del", veth], capture_output=True)
        for ns in self.netns.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
