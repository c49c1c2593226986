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

    def get(self, path: str, query: dict[str, Any] | None = None, accept: str = "application/json") -> Any:
        """GET a JSON resource; errors become one line."""
        target = path + ("?" + urlencode(query, doseq=True) if query else "")
        return self._call("GET", target, accept)

    def delete(self, path: str) -> Any:
        """DELETE a resource; the answer's JSON, or the error as one line."""
        return self._call("DELETE", path)

    def _call(self, method: str, target: str, accept: str = "application/json") -> Any:
        sock = self.connect()
        try:
            status, body = self._exchange(sock, method, target, [("Accept", accept)])
        finally:
            sock.close()
        if status != 200:
            raise failure(status, body)
        return json.loads(body)

    def upgrade(self, sock: ssl.SSLSocket, target: str, *headers: tuple[str, str]) -> bytes:
        """POST an upgrade request on C{sock}; returns what followed the 101."""
        extra = [("Content-Length", "0"), ("Connection", "Upgrade"), *headers]
        status, rest = self._exchange(sock, "POST", target, extra)
        if status != 101:
            raise failure(status, rest)
        return rest

    def _exchange(
        self, sock: ssl.SSLSocket, method: str, target: str, extra: list[tuple[str, str]]
    ) -> tuple[int, bytes]:
        """One request and its answer: the status and the body, or, after a
        101, the bytes that followed it (they belong to the new protocol)."""
        conn = h11.Connection(h11.CLIENT)
        request = h11.Request(method=method, target=target, headers=self.headers(*extra))
        status, body = 0, b""
        try:
            sock.sendall(conn.send(request) + conn.send(h11.EndOfMessage()))
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                    return 101, conn.trailing_data[0]
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    return status, body
        except (OSError, h11.RemoteProtocolError) as e:
            raise CLIError(f"the connection to {self.profile.server} failed: {e}") from None


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
