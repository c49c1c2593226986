"""The CLI's connection to the API: TLS, JSON requests, and upgrades
(WebSocket for exec and attach, SPDY for port-forward).  Blocking sockets:
a command-line client has one user and nothing else to do meanwhile."""

from __future__ import annotations

import json
import socket
import ssl
from typing import Any
from urllib.parse import quote, urlencode

import h11

from podshell.cli.profile import CLIError, Profile

TIMEOUT = 15.0


class API:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        if profile.insecure:
            self.context = ssl.create_default_context()
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE
        else:
            self.context = ssl.create_default_context(cadata=profile.ca_pem)

    def connect(self) -> ssl.SSLSocket:
        host, port = self.profile.host_port
        try:
            raw = socket.create_connection((host, port), timeout=TIMEOUT)
        except OSError as e:
            raise CLIError(f"cannot reach {self.profile.server}: {e.strerror or e}; is the server running?") from None
        try:
            sock = self.context.wrap_socket(raw, server_hostname=host)
        except ssl.SSLCertVerificationError as e:
            raw.close()
            raise CLIError(
                f"the certificate of {self.profile.server} is not trusted ({e.verify_message}): "
                "give --certificate-authority FILE (the server's state directory has ca.crt)"
            ) from None
        except (OSError, ssl.SSLError) as e:
            raw.close()
            raise CLIError(f"TLS with {self.profile.server} failed: {e}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def headers(self, *extra: tuple[str, str]) -> list[tuple[str, str]]:
        host, port = self.profile.host_port
        return [("Host", f"{host}:{port}"), ("Authorization", f"Bearer {self.profile.token}"), *extra]

    def get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        """GET a JSON resource; errors become one line."""
        target = path + ("?" + urlencode(query, doseq=True) if query else "")
        sock = self.connect()
        try:
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(method="GET", target=target, headers=self.headers(("Accept", "application/json")))
            sock.sendall(conn.send(request) + conn.send(h11.EndOfMessage()))
            status, body = 0, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
        except (OSError, h11.RemoteProtocolError) as e:
            raise CLIError(f"the connection to {self.profile.server} failed: {e}") from None
        finally:
            sock.close()
        if status != 200:
            raise failure(status, body)
        return json.loads(body)

    def upgrade(self, sock: ssl.SSLSocket, request: bytes) -> tuple[int, bytes, bytes]:
        """Send an upgrade request; the status, the head and what followed it."""
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise CLIError(f"{self.profile.server} closed the connection during the upgrade")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 101:
            body = rest
            length = _content_length(head)
            while length is not None and len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
            raise failure(status, body)
        return status, head, rest


def _content_length(head: bytes) -> int | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return None


def failure(status: int, body: bytes) -> CLIError:
    """The server's metav1.Status as one line, with what to do about it."""
    try:
        message = json.loads(body).get("message") or body.decode(errors="replace")
    except ValueError:
        message = body.decode(errors="replace").strip() or f"HTTP {status}"
    if status == 401:
        return CLIError(f"the server refused the token ({message}); run podshell login with a valid token", status)
    return CLIError(message, status)


def pod_path(namespace: str, pod: str, sub: str = "") -> str:
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(pod, safe='')}"
    return f"{path}/{sub}" if sub else path
