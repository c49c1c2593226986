"""A hand-driven WebSocket client (wsproto) over TLS, for what kubectl and
the Python client never send."""

from __future__ import annotations

import socket
import ssl


class RawWebSocket:
    """One upgraded connection to C{api.api_url}, as the holder of C{token}."""

    def __init__(self, api, path: str, protocol: str, token: str) -> None:
        from wsproto import WSConnection
        from wsproto.connection import ConnectionType
        from wsproto.events import AcceptConnection, Request

        context = ssl.create_default_context(cafile=str(api.root / "state" / "ca.crt"))
        port = int(api.api_url.rsplit(":", 1)[1])
        self.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", port)), server_hostname="127.0.0.1")
        self.sock.settimeout(10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        auth = [(b"authorization", f"Bearer {token}".encode())]
        self.sock.sendall(self.ws.send(Request(host="x", target=path, subprotocols=[protocol], extra_headers=auth)))
        assert isinstance(self.next(), AcceptConnection)

    def send(self, event) -> None:
        self.sock.sendall(self.ws.send(event))

    def next(self):
        while True:
            for event in self.ws.events():
                return event
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            if not data:
                return None
