"""``podshell get pods``: the server's own Table (the one kubectl asks for),
laid out as kubectl does.  The server decides READY, STATUS and AGE; the
CLI only picks columns."""

from __future__ import annotations

from typing import Any

TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io, application/json"
DEFAULT_EXTRA = {"Node"}  # shown without -o wide too


def render(table: dict[str, Any], all_namespaces: bool, wide: bool) -> str:
    columns = table.get("columnDefinitions") or []
    keep = [i for i, c in enumerate(columns) if wide or c.get("priority", 0) == 0 or c.get("name") in DEFAULT_EXTRA]
    head = [str(columns[i]["name"]).upper() for i in keep]
    rows = []
    for row in table.get("rows") or []:
        cells = [str(row["cells"][i]) for i in keep]
        if all_namespaces:
            cells.insert(0, str(row.get("object", {}).get("metadata", {}).get("namespace", "")))
        rows.append(cells)
    if all_namespaces:
        head.insert(0, "NAMESPACE")
    lines = [head, *rows]
    widths = [max(len(r[i]) for r in lines) for i in range(len(head))]
    return "\n".join("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in lines) + "\n"
