"""``podshell get pods``: kubectl's table, from v1 Pod objects."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from podshell.kubetime import age


def status_word(pod: dict[str, Any]) -> str:
    """What kubectl's STATUS column says: a waiting or terminated reason, else the phase."""
    status = pod.get("status", {})
    for c in status.get("containerStatuses") or []:
        state = c.get("state", {})
        for kind in ("waiting", "terminated"):
            reason = (state.get(kind) or {}).get("reason")
            if reason and not (kind == "terminated" and reason == "Completed" and status.get("phase") == "Succeeded"):
                return str(reason)
    return str(status.get("phase", "Unknown"))


def table(pods: list[dict[str, Any]], all_namespaces: bool, wide: bool, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    head = ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "NODE"]
    if all_namespaces:
        head.insert(0, "NAMESPACE")
    if wide:
        head.append("CONTAINERS")
    rows = [head]
    for pod in pods:
        meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
        statuses = status.get("containerStatuses") or []
        ready = sum(1 for c in statuses if c.get("ready"))
        row = [
            meta.get("name", ""),
            f"{ready}/{len(spec.get('containers') or [])}",
            status_word(pod),
            str(sum(int(c.get("restartCount", 0)) for c in statuses)),
            age(_parse(meta.get("creationTimestamp")), now),
            spec.get("nodeName") or "<none>",
        ]
        if all_namespaces:
            row.insert(0, meta.get("namespace", ""))
        if wide:
            row.append(",".join(c.get("name", "") for c in spec.get("containers") or []))
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows) + "\n"


def _parse(timestamp: str | None) -> datetime | None:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")) if timestamp else None
