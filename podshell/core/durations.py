"""Durations as a person reads them, in messages and tables: 4h, 90s, 1h30m."""

from __future__ import annotations


def spoken(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.3g}s"
    whole = round(seconds)
    parts = [(whole // 3600, "h"), (whole % 3600 // 60, "m"), (whole % 60, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n)
