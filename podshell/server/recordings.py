"""C{podshell recordings}: the operator's tool for the recordings a server
wrote, read from its recording directory on this machine (like C{podshell
config check}, it talks to no server)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from pathlib import Path
from typing import IO, Any

from podshell.auth.recording import SUFFIX
from podshell.core.yamlfile import ConfigError
from podshell.protocols.asciicast import CHAIN_SUFFIX, Code, data_bytes, read_events, verify
from podshell.server import defaults
from podshell.server.config import duration, load_config, resolve_path


class RecordingsError(Exception):
    """One line for the operator."""


def directory(args: argparse.Namespace) -> Path:
    """--dir, else the configuration's (--config), else the embedded default's."""
    if args.dir:
        return Path(args.dir)
    if args.config is None:
        return defaults.state_dir() / "recordings"
    try:
        config, base = load_config(Path(args.config))
    except ConfigError as e:
        raise RecordingsError(str(e)) from None
    return config.recordings.directory(resolve_path(base, config.state_dir))


@dataclass(frozen=True)
class Entry:
    id: str
    path: Path
    head: dict[str, Any]

    @property
    def podshell(self) -> dict[str, Any]:
        fields = self.head.get("podshell")
        return fields if isinstance(fields, dict) else {}


def _entries(where: Path) -> Iterator[Entry]:
    for path in sorted(where.glob(f"*{SUFFIX}")):
        try:
            with path.open("rb") as f:
                head = json.loads(f.readline())
        except (OSError, ValueError):
            continue
        if isinstance(head, dict):
            yield Entry(path.name.removesuffix(SUFFIX), path, head)


def _find(where: Path, rid: str) -> Entry:
    """The recording C{rid} names (a prefix will do when one matches)."""
    matches = [e for e in _entries(where) if e.id.startswith(rid)]
    if not matches:
        raise RecordingsError(f"no recording {rid} in {where}")
    exact = [e for e in matches if e.id == rid]
    if len(matches) > 1 and not exact:
        raise RecordingsError(f"{rid} names {len(matches)} recordings in {where}: give more of the id")
    return (exact or matches)[0]


def _since(text: str) -> float:
    try:
        return time.time() - duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise RecordingsError(f"--since {text!r}: give a duration (2h, 7d) or a date (2026-12-01)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def run_list(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    where = directory(args)
    since = _since(args.since) if args.since else None
    for entry in _entries(where):
        p = entry.podshell
        target = str(p.get("target", ""))
        pod = target.split("/")[1] if target.count("/") >= 1 else target
        if args.user and p.get("user") != args.user:
            continue
        if args.pod and not (fnmatchcase(pod, args.pod) or fnmatchcase(target, args.pod)):
            continue
        started = float(entry.head.get("timestamp", 0))
        if since is not None and started < since:
            continue
        when = datetime.fromtimestamp(started, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        command = " ".join(p.get("command") or ["(attach)"])
        print(f"{entry.id}  {when}  {p.get('user')}  {target}  {p.get('kind')}  {command}", file=out)
    return 0


def run_play(args: argparse.Namespace) -> int:
    """Output as it came, in its time (divided by --speed)."""
    if args.speed <= 0:
        raise RecordingsError("--speed must be more than 0")
    entry = _find(directory(args), args.id)
    with entry.path.open("rb") as f:
        try:
            _, events = read_events(f)
        except ValueError as e:
            raise RecordingsError(f"{entry.path}: {e}") from None
    streams = {Code.OUTPUT.value: sys.stdout.buffer, Code.STDERR.value: sys.stderr.buffer}
    t0 = time.monotonic()
    for t, code, data in events:
        stream = streams.get(code)
        if stream is None:
            continue
        wait = t / args.speed - (time.monotonic() - t0)
        if wait > 0:
            time.sleep(wait)
        stream.write(data_bytes(data))
        stream.flush()
    return 0


def run_export(args: argparse.Namespace) -> int:
    entry = _find(directory(args), args.id)
    sys.stdout.buffer.write(entry.path.read_bytes())
    sys.stdout.buffer.flush()
    return 0


def run_verify(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    entry = _find(directory(args), args.id)
    chain = Path(str(entry.path) + CHAIN_SUFFIX)
    try:
        verdict = verify(entry.path.read_bytes(), chain.read_bytes())
    except FileNotFoundError:
        raise RecordingsError(f"{chain}: missing: the recording cannot be checked") from None
    if not verdict.ok:
        raise RecordingsError(f"{entry.id}: TAMPERED: {verdict.message}")
    print(f"{entry.id}: OK: {verdict.message}", file=out)
    return 0
