"""A gateway's inventory of a large cluster: the in-test API server with
NODES nodes and PODS pods, listed and watched by one KubernetesInventory.

    python -m bench.inventory [--nodes 5000] [--pods 150000] [--churn 20000]

Reports time to the first full list, the gateway's memory for it, CPU per
thousand watch events, and, as the reference measured in the same run,
the official Python client listing the same pods (its time and memory).
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from tests.sshserver import free_port, wait_port

TOKEN = "bench-token-0123456789abcdef"


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss() -> int:
    return psutil.Process().memory_info().rss


def ours(port: int, ca: Path, pki: Path, pods: int, churn: int) -> dict[str, float]:
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred, ensureDeferred

    from podshell.gateway.kubernetes.client import APIServer, Credentials
    from podshell.gateway.kubernetes.inventory import KubernetesInventory
    from podshell.pki.mutual import ClusterIdentity

    credentials = Credentials(f"https://127.0.0.1:{port}", ca.read_bytes(), TOKEN)
    identity = ClusterIdentity.load(ca, pki / "gw-1.crt", pki / "gw-1.key", "gateway")
    out: dict[str, float] = {}

    async def run() -> None:
        inv = KubernetesInventory(
            reactor, APIServer(reactor, credentials), identity, "podshell", "component=node-agent", 10350
        )
        gc.collect()
        before, began, cpu0 = rss(), time.monotonic(), cpu()
        inv.startService()
        await inv.synced()
        out["first list, s"] = time.monotonic() - began
        out["list CPU, s"] = cpu() - cpu0
        gc.collect()
        out["memory, MiB"] = (rss() - before) / 2**20
        out["memory per pod, KiB"] = (rss() - before) / 1024 / max(len(inv.pods.objects), 1)
        out["nodes"] = len(inv.nodes)
        assert len(inv.pods.objects) == pods, (len(inv.pods.objects), pods)
        events, cpu1, began = inv.pods.events, cpu(), time.monotonic()
        await APIServer(reactor, credentials).post(f"/_test/churn?n={churn}", {})
        while inv.pods.events - events < churn:
            d: Deferred[None] = Deferred()
            reactor.callLater(0.05, d.callback, None)
            await d
        out["CPU per 1000 events, ms"] = (cpu() - cpu1) * 1000 / churn * 1000
        out["events per second"] = churn / (time.monotonic() - began)
        inv.stopService()

    def main() -> None:
        d = ensureDeferred(run())
        d.addErrback(lambda f: (print(f.getTraceback(), file=sys.stderr), out.update(failed=1)))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(main)
    reactor.run()
    return out


def reference(port: int, ca: Path, pods: int) -> dict[str, float]:
    """The official client listing the same pods, 500 a page, as models."""
    from kubernetes import client

    configuration = client.Configuration()
    configuration.host = f"https://127.0.0.1:{port}"
    configuration.ssl_ca_cert = str(ca)
    configuration.api_key = {"authorization": TOKEN}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    api = client.CoreV1Api(client.ApiClient(configuration))
    gc.collect()
    before, began, cpu0 = rss(), time.monotonic(), cpu()
    items: list = []
    after = None
    while True:
        page = api.list_pod_for_all_namespaces(limit=500, _continue=after)
        items += page.items
        after = page.metadata._continue
        if not after:
            break
    assert len(items) == pods
    gc.collect()
    return {
        "first list, s": time.monotonic() - began,
        "list CPU, s": cpu() - cpu0,
        "memory, MiB": (rss() - before) / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pods", type=int, default=150_000)
    parser.add_argument("--churn", type=int, default=20_000, help="watch events to measure")
    parser.add_argument("--part", choices=["ours", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pki", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part:  # one side, in a process of its own, so memory is its own
        pki = Path(args.pki)
        if args.part == "ours":
            found = ours(args.port, pki / "ca.crt", pki, args.pods, args.churn)
        else:
            found = reference(args.port, pki / "ca.crt", args.pods)
        print(json.dumps(found))
        return
    from podshell.pki import cluster_ca

    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp)
        cluster_ca.init(pki)
        cluster_ca.issue_for(pki, "api", "node", ["127.0.0.1"])
        cluster_ca.issue_for(pki, "gw-1", "gateway", [])
        port = free_port()
        argv = [sys.executable, "-m", "tests.support.apiserver", "--listen", f"127.0.0.1:{port}"]
        argv += ["--cert", str(pki / "api.crt"), "--key", str(pki / "api.key"), "--token", TOKEN]
        argv += ["--generate", str(args.nodes), str(args.pods)]
        print(f"API server: generating {args.pods} pods on {args.nodes} nodes ...", flush=True)
        server = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        try:
            wait_port(port, timeout=600)

            def part(name: str) -> dict[str, float]:
                argv = [sys.executable, "-m", "bench.inventory", "--part", name, "--port", str(port), "--pki", tmp]
                argv += ["--pods", str(args.pods), "--churn", str(args.churn)]
                done = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=1800)
                return json.loads(done.stdout.strip().splitlines()[-1])

            theirs = part("reference")
            mine = part("ours")
        finally:
            server.terminate()
            server.wait()
    print(f"{args.pods} pods on {args.nodes} nodes, one gateway:")
    for key, value in mine.items():
        print(f"  {key:28} {value:12.2f}")
    print("the official Python client, listing the same pods (reference):")
    for key, value in theirs.items():
        print(f"  {key:28} {value:12.2f}")
    for key in ("first list, s", "memory, MiB"):
        print(f"  ratio {key:22} {mine[key] / theirs[key]:12.2f}  (goal: below 1.0)")


if __name__ == "__main__":
    main()
