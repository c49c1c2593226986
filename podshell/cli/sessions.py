"""``podshell sessions list`` and ``kill``: the sessions under way, for
operators (the policy verb C{admin}), laid out as C{get pods} is."""

from __future__ import annotations

import json
import sys
from typing import Any

from podshell.core.durations import spoken

PATH = "/podshell/v1/sessions"
COLUMNS = ["ID", "USER", "FROM", "VIA", "VERB", "TARGET", "COMMAND", "AGE", "IDLE", "IN", "OUT"]


def _row(item: dict[str, Any]) -> list[str]:
    return [
        item["id"],
        str(item.get("user") or "-"),
        item["from"],
        item["via"],
        item["verb"],
        item["target"],
        " ".join(item.get("command") or []) or "-",
        spoken(item["seconds"]),
        spoken(item["idle_seconds"]),
        str(item["bytes_in"]),
        str(item["bytes_out"]),
    ]


def render(items: list[dict[str, Any]]) -> str:
    lines = [COLUMNS, *(_row(i) for i in items)]
    widths = [max(len(r[i]) for r in lines) for i in range(len(COLUMNS))]
    return "\n".join("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in lines) + "\n"


def list_sessions(api: Any, output: str | None) -> int:
    items = api.get(PATH)["items"]
    if output == "json":
        print(json.dumps(items, indent=2))
    elif not items:
        print("No sessions under way that you may see.", file=sys.stderr)
    else:
        sys.stdout.write(render(items))
    return 0


def kill(api: Any, session_id: str) -> int:
    ended = api.delete(f"{PATH}/{session_id}")
    print(f"Ended session {ended['id']} of {ended.get('user')} ({ended['verb']} in {ended['target']}).")
    return 0
