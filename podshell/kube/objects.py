"""Kubernetes API objects as JSON: pods from the runtime, discovery, Status."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from podshell import __version__
from podshell.core.pods import ContainerState, ContainerStatus, PodStatus

KUBE_VERSION = {"major": "1", "minor": "32"}


def _time(t: datetime | None) -> str | None:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t else None


def _state(state: ContainerState) -> dict[str, Any]:
    if state.kind == "running":
        return {"running": {"startedAt": _time(state.started_at)}}
    if state.kind == "terminated":
        out: dict[str, Any] = {
            "exitCode": state.exit_code,
            "reason": state.reason,
            "startedAt": _time(state.started_at),
            "finishedAt": _time(state.finished_at),
        }
        if state.signal:
            out["signal"] = state.signal
        if state.message:
            out["message"] = state.message
        return {"terminated": out}
    return {"waiting": {k: v for k, v in (("reason", state.reason), ("message", state.message)) if v}}


def _container_status(c: ContainerStatus) -> dict[str, Any]:
    status: dict[str, Any] = {
        "name": c.name,
        "state": _state(c.state),
        "ready": c.state.kind == "running",
        "started": c.state.kind == "running",
        "restartCount": c.restart_count,
        "image": c.image,
        "imageID": c.image_id,
    }
    if c.last_state is not None:
        status["lastState"] = _state(c.last_state)
    if c.container_id is not None:
        status["containerID"] = c.container_id
    elif c.pid is not None:
        status["containerID"] = f"podshell://{c.pid}"
    return status


def pod_json(pod: PodStatus, node: str) -> dict[str, Any]:
    """A v1 Pod as kubectl reads it (exec, attach, port-forward, get)."""
    manifest = copy.deepcopy(pod.manifest)
    meta = manifest["metadata"]
    meta.update(uid=pod.uid, creationTimestamp=_time(pod.created), resourceVersion="1")
    spec = manifest["spec"]
    spec["nodeName"] = node
    for c in spec["containers"]:
        c.setdefault("image", "")
    ready = all(c.state.kind == "running" for c in pod.containers)
    conditions = [
        {"type": "Initialized", "status": "True"},
        {"type": "Ready", "status": "True" if ready else "False"},
        {"type": "ContainersReady", "status": "True" if ready else "False"},
        {"type": "PodScheduled", "status": "True"},
    ]
    status: dict[str, Any] = {
        "phase": pod.phase,
        "conditions": conditions,
        "hostIP": "127.0.0.1",
        "startTime": _time(pod.started),
        "containerStatuses": [_container_status(c) for c in pod.containers],
        "qosClass": "BestEffort",
    }
    if pod.failure:
        status["message"] = pod.failure
    if pod.ip:
        status.update(podIP=pod.ip, podIPs=[{"ip": pod.ip}])
    return {"kind": "Pod", "apiVersion": "v1", "metadata": meta, "spec": spec, "status": status}


def pod_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items}


def namespace_json(name: str) -> dict[str, Any]:
    """A namespace: one exists while it has pods (kubectl asks for it when a pod is not found)."""
    return {
        "kind": "Namespace",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def version() -> dict[str, Any]:
    return {
        **KUBE_VERSION,
        "gitVersion": f"v{KUBE_VERSION['major']}.{KUBE_VERSION['minor']}.0+podshell-{__version__}",
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "",
        "goVersion": "",
        "compiler": "podshell",
        "platform": "linux/amd64",
    }


def api_versions(address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}],
    }


API_GROUPS = {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}

_SUBRESOURCE = {"namespaced": True, "singularName": "", "verbs": ["create", "get"]}
API_V1 = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "v1",
    "resources": [
        {
            "name": "pods",
            "singularName": "pod",
            "namespaced": True,
            "kind": "Pod",
            "verbs": ["get", "list"],
            "shortNames": ["po"],
        },
        {
            "name": "namespaces",
            "singularName": "namespace",
            "namespaced": False,
            "kind": "Namespace",
            "verbs": ["get"],
            "shortNames": ["ns"],
        },
        {"name": "pods/exec", "kind": "PodExecOptions", **_SUBRESOURCE},
        {"name": "pods/attach", "kind": "PodAttachOptions", **_SUBRESOURCE},
        {"name": "pods/portforward", "kind": "PodPortForwardOptions", **_SUBRESOURCE},
        {"name": "pods/log", "singularName": "", "namespaced": True, "kind": "Pod", "verbs": ["get"]},
    ],
}


def status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """A metav1.Status for an HTTP error (kubectl prints C{Error from server (reason): message})."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = details
    return body


def _age(since: datetime | None, now: datetime) -> str:
    """Kubernetes' short durations: 42s, 5m10s, 3h4m, 2d3h, 400d."""
    if since is None:
        return "<unknown>"
    seconds = max(0, int((now - since).total_seconds()))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 120:
        return f"{seconds}s"
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if hours < 3:
        return f"{minutes}m"
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if days < 2:
        return f"{hours}h"
    if days < 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d"


def pod_status_word(pod: dict[str, Any]) -> str:
    """The STATUS column of kubectl get pods: a waiting or terminated reason
    when a container has one, else the phase."""
    phase = pod["status"].get("phase", "Unknown")
    for c in pod["status"].get("containerStatuses") or []:
        state = c.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            return state["waiting"]["reason"]
        if (state.get("terminated") or {}).get("reason") and phase == "Running":
            return state["terminated"]["reason"]
    return phase


def _parse_time(text: str | None) -> datetime | None:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) if text else None


def pod_row(pod: dict[str, Any], now: datetime) -> list[Any]:
    """NAME, READY, STATUS, RESTARTS, AGE, IP, NODE, NOMINATED NODE, READINESS GATES."""
    statuses = pod["status"].get("containerStatuses") or []
    ready = sum(1 for c in statuses if "running" in (c.get("state") or {}))
    restarts = sum(int(c.get("restartCount", 0)) for c in statuses)
    meta = pod["metadata"]
    ip = pod["status"].get("podIP", "<none>")
    return [meta["name"], f"{ready}/{len(pod['spec']['containers'])}", pod_status_word(pod), str(restarts),
            _age(_parse_time(meta.get("creationTimestamp")), now), ip, pod["spec"].get("nodeName", "<none>"),
            "<none>", "<none>"]  # fmt: skip


_COLUMNS = [
    ("Name", "string", "name", 0),
    ("Ready", "string", "", 0),
    ("Status", "string", "", 0),
    ("Restarts", "string", "", 0),
    ("Age", "string", "", 0),
    ("IP", "string", "", 1),
    ("Node", "string", "", 1),
    ("Nominated Node", "string", "", 1),
    ("Readiness Gates", "string", "", 1),
]


def pod_table(pods: list[dict[str, Any]], now: datetime) -> dict[str, Any]:
    """The meta.k8s.io/v1 Table kubectl asks for, so that `kubectl get pods`
    shows the same columns as against a real cluster."""
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": "1"},
        "columnDefinitions": [
            {"name": name, "type": kind, "format": fmt, "description": "", "priority": priority}
            for name, kind, fmt, priority in _COLUMNS
        ],
        "rows": [
            {
                "cells": pod_row(p, now),
                "object": {
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": {k: p["metadata"].get(k) for k in ("name", "namespace", "uid", "creationTimestamp")},
                },
            }
            for p in pods
        ],
    }
