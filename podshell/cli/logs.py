"""``podshell logs``: a container's output, as ``kubectl logs`` prints it.

The container is the one named, else the pod's default (the
C{kubectl.kubernetes.io/default-container} annotation, else the first), as
kubectl picks it; the server streams the log and the CLI copies it to
standard output as it comes (with C{-f}, until the container ends).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any
from urllib.parse import urlencode

import h11

from podshell.cli.api import API, failure, pod_path
from podshell.cli.profile import CLIError

DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
EPILOG = """examples:
  podshell logs web-0                       the default container's log
  podshell logs -f --tail 20 web-0          the last 20 lines, then on until it ends
  podshell logs team-a/web-0/sidecar --since 5m --timestamps
  podshell logs web-0 -c app --previous     the run before this one (after a crash)

The container is -c, or NS/POD/CONTAINER, else the pod's default one (its
kubectl.kubernetes.io/default-container annotation, else the first)."""


def duration(text: str) -> int:
    """Go-style durations as kubectl's --since takes them: 10s, 5m, 1h30m."""
    m = _DURATION.match(text)
    if not text or m is None or not any(m.groups()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 10s, 5m or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in m.groups())
    return max(1, hours * 3600 + minutes * 60 + seconds)


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a number")
    return int(text)


def add_arguments(command: argparse.ArgumentParser) -> None:
    """What ``logs`` takes beyond the container."""
    command.add_argument("-f", "--follow", action="store_true", help="go on printing until the container ends")
    command.add_argument("--tail", type=_count, metavar="N", help="only the last N lines")
    command.add_argument("--since", type=duration, metavar="DURATION", help="only lines this recent: 10s, 5m, 2h")
    command.add_argument("--timestamps", action="store_true", help="each line with its RFC 3339 time")
    command.add_argument("--previous", action="store_true", help="the container's previous run (after a restart)")
    command.add_argument("--limit-bytes", type=_count, metavar="N", help="at most N bytes")


def run(api: API, namespace: str, pod: str, container: str | None, args: argparse.Namespace) -> int:
    """Print the log; C{args} holds what L{add_arguments} added."""
    if container is None:
        container = default_container(api.get(pod_path(namespace, pod)))
    query: list[tuple[str, str]] = [("container", container)]
    query += [(k, "true") for k, on in (("follow", args.follow), ("timestamps", args.timestamps),
                                        ("previous", args.previous)) if on]  # fmt: skip
    query += [(k, str(v)) for k, v in (("tailLines", args.tail), ("sinceSeconds", args.since),
                                       ("limitBytes", args.limit_bytes)) if v is not None]  # fmt: skip
    try:
        stream(api, pod_path(namespace, pod, "log") + "?" + urlencode(query), sys.stdout.buffer)
    except BrokenPipeError:  # | head: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def default_container(pod: dict[str, Any]) -> str:
    """kubectl's choice, and its notice when there was one to make."""
    names = [c["name"] for c in pod["spec"]["containers"]]
    wanted = (pod["metadata"].get("annotations") or {}).get(DEFAULT_CONTAINER)
    if wanted in names:
        return str(wanted)
    if len(names) > 1:
        print(f'Defaulted container "{names[0]}" out of: {", ".join(names)}', file=sys.stderr)
    return str(names[0])


def stream(api: API, target: str, out: Any) -> None:
    """GET C{target} and copy the body to C{out} as it arrives; an error
    answer becomes the server's one line."""
    sock = api.connect()
    sock.settimeout(None)  # a followed log may be quiet for as long as its container is
    conn = h11.Connection(h11.CLIENT)
    try:
        sock.sendall(conn.send(h11.Request(method="GET", target=target, headers=api.headers())))
        sock.sendall(conn.send(h11.EndOfMessage()))
        status, error = 0, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(sock.recv(65536))
            elif isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                if status == 200:
                    out.write(event.data)
                    out.flush()
                else:
                    error += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    except (OSError, h11.RemoteProtocolError) as e:
        raise CLIError(f"the connection to {api.profile.server} failed: {e}") from None
    finally:
        sock.close()
    if status != 200:
        raise failure(status, error)
