"""What exec, attach and port-forward mean on the wire, whatever the
transport (WebSocket or SPDY): the query, the protocol versions, resize
messages and the final status.  Pure functions, no I/O."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from typing import NamedTuple


class Ended(NamedTuple):
    """How a command ended, as the Status says it: an exit code, or a signal's name (C{"KILL"})."""

    code: int | None = None
    signal: str | None = None


class Size(NamedTuple):
    """A terminal size from a resize message."""

    rows: int
    cols: int


V5, V4, V3, V2, V1 = (
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
)
B64, V4_B64 = "base64.channel.k8s.io", "v4.base64.channel.k8s.io"
PORT_FORWARD = "portforward.k8s.io"
SPDY_TUNNEL = "SPDY/3.1+portforward.k8s.io"  # SPDY carried in WebSocket (kubectl 1.30+)
# What we accept, per transport, in the real servers' order of preference.
WEBSOCKET_EXEC = [V5, V4, V4_B64, V1, B64]
SPDY_EXEC = [V4, V3, V2, V1]
WEBSOCKET_PORT_FORWARD = [SPDY_TUNNEL, V4, V4_B64]
# Between a gateway and a node agent only.  PROCESS is v5 plus a signal
# channel and the signal in the final status (what SSH needs); PORT forwards
# one port with a "connected" notice and half-close in both directions.
PROCESS = "v1.process.podshell.io"
PORT = "v1.port.podshell.io"

STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4
SIGNAL = 6  # PROCESS: a signal name for the command
CLOSE = 255
PORT_DATA, PORT_ERROR = 0, 1  # PORT: an empty PORT_ERROR message means connected


class RemoteFailure(Exception):
    """A Status that is not an exit: the message is for the user."""


def flag(values: list[str] | None) -> bool:
    """The apiserver's rule: absent, "0" or "false" (any case) is false; anything else true."""
    if not values:
        return False
    return values[0].lower() not in ("0", "false")


@dataclass(frozen=True)
class StreamOptions:
    """Which streams an exec or attach asked for (the tty rule applied)."""

    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool

    @classmethod
    def fromQuery(cls, query: dict[str, list[str]]) -> StreamOptions:
        tty = flag(query.get("tty"))
        options = cls(flag(query.get("stdin")), flag(query.get("stdout")), flag(query.get("stderr")) and not tty, tty)
        if not (options.stdin or options.stdout or options.stderr):
            raise ValueError("you must specify at least 1 of stdin, stdout, stderr")
        return options


def choose(offered: list[str], supported: list[str]) -> str | None:
    """The first of the client's protocols that we support (the client's order)."""
    for protocol in offered:
        if protocol in supported:
            return protocol
    return None


def has_status(protocol: str) -> bool:
    """v4 and later carry a JSON Status with the exit code; earlier ones only text."""
    return protocol in (V5, V4, V4_B64, PROCESS)


def exit_code(status: Ended) -> int:
    """What Kubernetes reports: the code, or 128 + the signal's number."""
    if status.signal is not None:
        name = status.signal.upper()
        return 128 + signal.Signals[name if name.startswith("SIG") else "SIG" + name].value
    return status.code or 0


def final_status(status: Ended, command: list[str], protocol: str) -> bytes:
    """The error-stream payload that ends an exec (empty: success on old protocols)."""
    code = exit_code(status)
    if not has_status(protocol):
        return b"" if code == 0 else f"command terminated with non-zero exit code: exit code {code}".encode()
    if code == 0:
        return json.dumps({"metadata": {}, "status": "Success"}, separators=(",", ":")).encode()
    body = {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: error executing command {command}, exit code {code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]},
    }
    if status.signal and protocol == PROCESS:
        body["details"]["causes"].append({"reason": "ExitSignal", "message": status.signal})  # type: ignore[index]
    return json.dumps(body, separators=(",", ":")).encode()


def exit_status(payload: bytes) -> Ended:
    """How a command ended, from the final Status on the error channel.

    @raise RemoteFailure: the Status says the command could not run.
    """
    try:
        status = json.loads(payload)
    except ValueError:
        raise RemoteFailure(payload.decode(errors="replace")) from None
    if not isinstance(status, dict):
        raise RemoteFailure("the server sent a malformed status")
    if status.get("status") == "Success":
        return Ended(0)
    causes = (status.get("details") or {}).get("causes") or []
    found = {c.get("reason"): c.get("message") for c in causes if isinstance(c, dict)}
    if found.get("ExitSignal"):
        return Ended(signal=str(found["ExitSignal"]))
    code = found.get("ExitCode")
    if isinstance(code, str) and code.isdigit():
        return Ended(int(code))
    raise RemoteFailure(str(status.get("message") or "the command failed"))


def internal_error(message: str, protocol: str) -> bytes:
    if not has_status(protocol):
        return message.encode()
    body = {
        "metadata": {},
        "status": "Failure",
        "message": f"Internal error occurred: {message}",
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    }
    return json.dumps(body, separators=(",", ":")).encode()


class ResizeDecoder:
    """Window sizes from a byte stream of JSON objects ({"Width":W,"Height":H}),
    with or without newlines between them, keys in any case."""

    MAX = 4096

    def __init__(self) -> None:
        self._buffer = ""
        self._decoder = json.JSONDecoder()

    def feed(self, data: bytes) -> list[Size]:
        self._buffer += data.decode("utf-8", errors="replace")
        sizes: list[Size] = []
        while True:
            text = self._buffer.lstrip()
            if not text:
                self._buffer = ""
                return sizes
            try:
                value, end = self._decoder.raw_decode(text)
            except RecursionError:
                raise ValueError("resize message nested too deeply") from None
            except json.JSONDecodeError:
                if len(text) > self.MAX:
                    raise ValueError("resize message too long") from None
                self._buffer = text
                return sizes
            self._buffer = text[end:]
            if isinstance(value, dict):
                keys = {str(k).lower(): v for k, v in value.items()}
                width, height = keys.get("width"), keys.get("height")
                if isinstance(width, int) and isinstance(height, int) and 0 < width < 65536 and 0 < height < 65536:
                    sizes.append(Size(height, width))
