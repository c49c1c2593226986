"""A stand-in for the Kubernetes API server, for the pods a gateway lists
and watches: no API server can run on these machines.

What it keeps of the real one: Pods in namespaces, one resourceVersion
counter across them (etcd's revision), create/replace/status/delete, list
with C{labelSelector}, C{limit} and C{continue}, and watch from a
resourceVersion: events after it, C{ERROR 410 Expired} when it was
compacted away, C{BOOKMARK}s when asked for, C{timeoutSeconds}.  Objects
go through the official Python client's C{V1Pod} model on the way in and
out, so what it serves is what a real client would read.  Bearer tokens
are checked; TLS is the caller's.

Run as a program (C{python -m tests.support.apiserver}) for the
multi-host tests; C{POST /_test/compact} forgets history as etcd
compaction does, C{POST /_test/drop-watches} ends every watch as a
restarting API server would.
"""

from __future__ import annotations

import argparse
import bisect
import json
import sys
from collections import deque
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient
from twisted.internet import reactor as default_reactor
from twisted.web import resource, server

_client = ApiClient()
HISTORY = 10_000  # events kept for watches that resume


def as_pod(body: Any) -> dict[str, Any]:
    """C{body} as the official client reads and writes a V1Pod."""
    model = _client.deserialize(json.dumps(body), "V1Pod", "application/json")
    return _client.sanitize_for_serialization(model)


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


def matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality-based label selectors: C{a=b}, C{a==b}, C{a!=b}, C{a}, C{!a}."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key.strip()) == value.strip():
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key.strip()) != value.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass
class Watch:
    request: server.Request
    namespace: str | None
    selector: str
    bookmarks: bool

    def wants(self, pod: dict[str, Any]) -> bool:
        meta = pod["metadata"]
        return (self.namespace in (None, meta["namespace"])) and matches(self.selector, meta.get("labels") or {})

    def send(self, kind: str, obj: dict[str, Any]) -> None:
        self.request.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")


class Store:
    """The pods, their resourceVersions, and the recent history watches resume from."""

    def __init__(self, reactor: Any = default_reactor, history: int = HISTORY) -> None:
        self.reactor = reactor
        self.revision = 1
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.history: deque[tuple[int, str, dict[str, Any]]] = deque(maxlen=history)
        self.oldest = 1  # watches from before this are told 410
        self.watches: list[Watch] = []
        self.requests: list[str] = []  # what was asked, for tests
        self._sorted: tuple[int, list[tuple[str, str]]] = (0, [])

    def _event(self, kind: str, pod: dict[str, Any]) -> None:
        if len(self.history) == self.history.maxlen:
            self.oldest = self.history[0][0] + 1
        self.history.append((self.revision, kind, pod))
        for watch in self.watches:
            if watch.wants(pod):
                watch.send(kind, pod)

    def put(self, body: dict[str, Any], status_only: bool = False) -> tuple[int, dict[str, Any]]:
        pod = as_pod(body)
        meta = pod["metadata"]
        key = (meta.get("namespace") or "default", meta["name"])
        old = self.pods.get(key)
        if status_only:
            if old is None:
                return 404, status(404, "NotFound", f'pods "{key[1]}" not found')
            pod = {**old, "status": pod.get("status") or {}}
        self.revision += 1
        pod["metadata"] = {**(old or {}).get("metadata", {}), **pod["metadata"], "namespace": key[0]}
        pod["metadata"]["resourceVersion"] = str(self.revision)
        pod["metadata"].setdefault("uid", f"uid-{key[0]}-{key[1]}-{self.revision}")
        self.pods[key] = pod
        self._event("MODIFIED" if old else "ADDED", pod)
        return (200 if old else 201), pod

    def delete(self, namespace: str, name: str) -> tuple[int, dict[str, Any]]:
        pod = self.pods.pop((namespace, name), None)
        if pod is None:
            return 404, status(404, "NotFound", f'pods "{name}" not found')
        self.revision += 1
        pod = {**pod, "metadata": {**pod["metadata"], "resourceVersion": str(self.revision)}}
        self._event("DELETED", pod)
        return 200, pod

    def generate(self, nodes: int, pods: int) -> None:
        """A cluster's worth of pods, as the benchmark wants: C{pods} over C{nodes}."""
        for i in range(pods):
            body = {
                "metadata": {"name": f"pod-{i}", "namespace": f"ns-{i % 200}", "labels": {"app": f"app-{i % 500}"}},
                "spec": {"nodeName": f"node-{i % nodes}", "containers": [{"name": "app", "image": "registry/app:1"}]},
                "status": {
                    "phase": "Running",
                    "podIP": f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}",
                    "containerStatuses": [
                        {
                            "name": "app",
                            "ready": True,
                            "restartCount": 0,
                            "image": "registry/app:1",
                            "imageID": "",
                            "state": {"running": {"startedAt": "2026-12-04T10:00:00Z"}},
                        }
                    ],
                },
            }
            self.put(body)

    def churn(self, n: int) -> None:
        """C{n} pods change (a restart count goes up), one event each."""
        keys = list(self.pods)[:n]
        for key in keys:
            pod = self.pods[key]
            statuses = [{**c, "restartCount": c.get("restartCount", 0) + 1} for c in pod["status"]["containerStatuses"]]
            self.put({**pod, "status": {**pod["status"], "containerStatuses": statuses}})

    def compact(self) -> None:
        self.history.clear()
        self.oldest = self.revision + 1

    def drop_watches(self) -> None:
        for watch in list(self.watches):
            watch.request.finish()

    def list(self, namespace: str | None, selector: str, limit: int, after: str) -> dict[str, Any]:
        if self._sorted[0] != self.revision:  # sorted once per change, not once per page
            self._sorted = (self.revision, sorted(self.pods))
        keys = self._sorted[1]
        if after:
            keys = keys[bisect.bisect_right(keys, tuple(after.split("/", 1))) :]
        if namespace is not None:
            keys = [k for k in keys if k[0] == namespace]
        chosen = []
        for k in keys:
            if matches(selector, self.pods[k]["metadata"].get("labels") or {}):
                chosen.append(self.pods[k])
                if limit and len(chosen) > limit:
                    break
        meta: dict[str, Any] = {"resourceVersion": str(self.revision)}
        if limit and len(chosen) > limit:
            chosen = chosen[:limit]
            last = chosen[-1]["metadata"]
            meta["continue"] = f"{last['namespace']}/{last['name']}"
        return {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": chosen}

    def watch(self, request: server.Request, namespace: str | None, args: dict[str, str]) -> None:
        watch = Watch(request, namespace, args.get("labelSelector", ""), args.get("allowWatchBookmarks") == "true")
        since = int(args.get("resourceVersion") or self.revision)
        request.setHeader(b"content-type", b"application/json")
        request.write(b"")  # the headers now: a watch is open before its first event
        if since + 1 < self.oldest:
            watch.send("ERROR", status(410, "Expired", f"too old resource version: {since} ({self.oldest - 1})"))
            request.finish()
            return
        for revision, kind, pod in self.history:
            if revision > since and watch.wants(pod):
                watch.send(kind, pod)
        self.watches.append(watch)
        timers = []
        if watch.bookmarks:
            timers.append(self.reactor.callLater(0.2, self._bookmark, watch, timers))
        if "timeoutSeconds" in args:
            timers.append(self.reactor.callLater(float(args["timeoutSeconds"]), request.finish))

        def gone(_: object) -> None:
            self.watches.remove(watch)
            for timer in timers:
                if timer.active():
                    timer.cancel()

        request.notifyFinish().addBoth(gone)

    def _bookmark(self, watch: Watch, timers: list) -> None:
        watch.send("BOOKMARK", {"kind": "Pod", "apiVersion": "v1", "metadata": {"resourceVersion": str(self.revision)}})
        timers[0] = self.reactor.callLater(0.2, self._bookmark, watch, timers)


class APIServer(resource.Resource):
    """C{/api/v1/pods} and C{/api/v1/namespaces/NS/pods[/NAME[/status]]}."""

    isLeaf = True

    def __init__(self, store: Store, tokens: set[str]) -> None:
        super().__init__()
        self.store = store
        self.tokens = tokens

    def render(self, request: server.Request) -> bytes | int:
        path = request.path.decode()
        args = {k.decode(): v[0].decode() for k, v in request.args.items()}
        self.store.requests.append(f"{request.method.decode()} {path}{' watch' if args.get('watch') else ''}")
        if path.startswith("/_test/"):
            if path == "/_test/churn":  # the benchmark's: change N pods now
                self.store.churn(int(args.get("n", "1000")))
            else:
                {"/_test/compact": self.store.compact, "/_test/drop-watches": self.store.drop_watches}[path]()
            return self._answer(request, 200, {})
        auth = (request.getHeader("authorization") or "").partition(" ")
        if auth[0].lower() != "bearer" or auth[2] not in self.tokens:
            return self._answer(request, 401, status(401, "Unauthorized", "Unauthorized"))
        parts = path.strip("/").split("/")
        if parts[:2] != ["api", "v1"]:
            return self._answer(
                request, 404, status(404, "NotFound", "the server could not find the requested resource")
            )
        parts = parts[2:]
        namespace = None
        if parts[:1] == ["namespaces"] and len(parts) >= 3:
            namespace, parts = parts[1], parts[2:]
        if parts[:1] != ["pods"]:
            return self._answer(
                request, 404, status(404, "NotFound", "the server could not find the requested resource")
            )
        name, sub = (parts[1:2] or [None])[0], (parts[2:3] or [None])[0]
        method = request.method
        if method == b"GET" and name is None:
            if args.get("watch") in ("1", "true"):
                self.store.watch(request, namespace, args)
                return server.NOT_DONE_YET
            listed = self.store.list(
                namespace, args.get("labelSelector", ""), int(args.get("limit") or 0), args.get("continue", "")
            )
            return self._answer(request, 200, listed)
        if method == b"GET" and namespace and name:
            found = self.store.pods.get((namespace, name))
            return self._answer(
                request, *(200, found) if found else (404, status(404, "NotFound", f'pods "{name}" not found'))
            )
        if method in (b"POST", b"PUT") and namespace:
            body = json.loads(request.content.read() or b"{}")
            body.setdefault("metadata", {})["namespace"] = namespace
            if method == b"POST" and (namespace, body["metadata"].get("name")) in self.store.pods:
                name = body["metadata"]["name"]
                return self._answer(request, 409, status(409, "AlreadyExists", f'pods "{name}" already exists'))
            return self._answer(request, *self.store.put(body, status_only=sub == "status"))
        if method == b"DELETE" and namespace and name:
            return self._answer(request, *self.store.delete(namespace, name))
        return self._answer(request, 405, status(405, "MethodNotAllowed", "the server does not allow this method"))

    def _answer(self, request: server.Request, code: int, body: Any) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()


def main(argv: list[str]) -> None:
    from twisted.internet import endpoints, ssl

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="HOST:PORT")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--token", action="append", default=[])
    parser.add_argument("--generate", nargs=2, type=int, metavar=("NODES", "PODS"), help="start with this many pods")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    with open(args.cert, "rb") as c, open(args.key, "rb") as k:
        certificate = ssl.PrivateCertificate.loadPEM(c.read() + b"\n" + k.read())
    store = Store()
    if args.generate:
        store.generate(*args.generate)
    site = server.Site(APIServer(store, set(args.token)))
    site.displayTracebacks = False
    endpoint = endpoints.SSL4ServerEndpoint(default_reactor, int(port), certificate.options(), interface=host)
    endpoint.listen(site).addCallback(lambda _: print(f"API server listening on {args.listen}", flush=True))
    default_reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
