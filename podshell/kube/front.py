"""The HTTP front of the Kubernetes-compatible API.

One small h11-driven protocol per connection rather than twisted.web: the
streaming subresources are HTTP upgrades, and owning the connection from its
first byte means the upgraded protocol gets the transport (and its producer
slot) cleanly, with any bytes that followed the request head.  REST calls
(discovery, pods) are answered on the same keep-alive connection.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import h11
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, ITransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from podshell.auth.identity import Directory, Identity
from podshell.core.addresses import host_port, set_no_delay
from podshell.core.contracts import Upgrade
from podshell.core.metrics import AuthMethod, FrontDoor, Metrics
from podshell.kube import objects

log = Logger()
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024


class HTTPError(Exception):
    """An error answered as a metav1.Status."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        headers: list[tuple[str, str]] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.headers = headers or []
        self.details = details


def path_of(event: h11.Request) -> str:
    return unquote(urlsplit(event.target.decode("ascii", errors="replace")).path)


class Request:
    """What a handler needs to know about one request."""

    def __init__(self, event: h11.Request, identity: Identity, peer: str) -> None:
        self.method = event.method.decode()
        parts = urlsplit(event.target.decode("ascii", errors="replace"))
        self.path = path_of(event)
        self.query = parse_qs(parts.query, keep_blank_values=True)
        self.headers = [(k.decode().lower(), v.decode("latin-1")) for k, v in event.headers]
        self.raw_headers = event.headers
        self.target = event.target
        self.identity = identity
        self.peer = peer

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        """Every comma-separated value of every line of a header."""
        return [p.strip() for k, v in self.headers if k == name for p in v.split(",") if p.strip()]

    @property
    def upgrade(self) -> str:
        connection = [v.lower() for v in self.header_values("connection")]
        return (self.header("upgrade") or "").lower() if "upgrade" in connection else ""


# A handler answers a request with JSON, or takes the connection over.
Handler = Callable[[Request], "tuple[int, Any] | Upgrade"]


# Who sent a request, now or later (raises or fails with HTTPError: 401,
# or 403 and 503 where someone else is asked).
Authenticate = Callable[[h11.Request, ITransport], "Identity | Deferred[Identity]"]
# Someone else's answer for a bearer token we do not know: (token, method, path).
AskElsewhere = Callable[[str, str, str], Deferred[Identity]]


def by_credentials(
    directory: Directory, metrics: Metrics | None = None, elsewhere: AskElsewhere | None = None
) -> Authenticate:
    """Users of the front door: a bearer token, or a client certificate.
    Tokens not in the directory go to C{elsewhere} (the cluster), if given,
    which also says whether the request is allowed."""

    def counted(method: AuthMethod) -> None:
        if metrics is not None:
            metrics.authentication_failed(FrontDoor.API, method)

    def refused(method: AuthMethod, message: str) -> HTTPError:
        counted(method)
        return HTTPError(401, "Unauthorized", message)

    def unknown(failure: Failure) -> Failure:
        if isinstance(failure.value, HTTPError) and failure.value.code == 401:
            counted(AuthMethod.TOKEN)
        return failure

    def authenticate(event: h11.Request, transport: ITransport) -> Identity | Deferred[Identity]:
        for name, value in event.headers:
            if name.lower() == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() == "bearer" and token.strip():
                    identity = directory.by_token(token.strip())
                    if identity is not None:
                        return identity
                    if elsewhere is not None:
                        return elsewhere(token.strip(), event.method.decode(), path_of(event)).addErrback(unknown)
                raise refused(AuthMethod.TOKEN, "Unauthorized: the bearer token is not valid")
        cert = getattr(transport, "getPeerCertificate", lambda: None)()
        if cert is not None:
            identity = directory.by_certificate(cert.to_cryptography())
            if identity is not None:
                return identity
        method = AuthMethod.NONE if cert is None else AuthMethod.CERTIFICATE
        raise refused(method, "Unauthorized: give a bearer token or a client certificate")

    return authenticate


class APIProtocol(Protocol):
    def __init__(self, route: Callable[[str, str], Handler | None], authenticate: Authenticate) -> None:
        self.route = route
        self.authenticate = authenticate
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.next: IProtocol | None = None
        self._request: h11.Request | None = None
        self._body = 0
        self._waiting = False  # for an identity: reading is paused
        self._lost = False

    def connectionMade(self) -> None:
        set_no_delay(self.transport)  # statuses and small frames go out at once

    def dataReceived(self, data: bytes) -> None:
        if self.next is not None:
            self.next.dataReceived(data)
            return
        self.h11.receive_data(data)
        self._process()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        if self.next is not None:
            self.next.connectionLost(reason)

    def _process(self) -> None:
        while self.next is None and self.transport is not None and not self._waiting:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as e:
                self._fail(HTTPError(e.error_status_hint, "BadRequest", f"bad HTTP request: {e}"))
                return
            if event is h11.NEED_DATA:
                return
            if event is h11.PAUSED:
                if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
                    self.h11.start_next_cycle()
                    continue
                return
            if isinstance(event, h11.Request):
                self._request, self._body = event, 0
            elif isinstance(event, h11.Data):
                self._body += len(event.data)
                if self._body > MAX_BODY:
                    self._fail(HTTPError(413, "RequestEntityTooLarge", "request body too large"))
                    return
            elif isinstance(event, h11.EndOfMessage):
                assert self._request is not None
                self._handle(self._request)
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.loseConnection()
                return

    def _handle(self, event: h11.Request) -> None:
        assert self.transport is not None
        try:
            identity = self.authenticate(event, self.transport)
        except HTTPError as e:
            self._fail(e, keep_alive=True)
            return
        except Exception:
            log.failure("authenticating {method} {target}", method=event.method, target=event.target)
            self._fail(HTTPError(500, "InternalError", "internal error"), keep_alive=True)
            return
        if isinstance(identity, Deferred):
            # Nothing more is read until we know who this is (pipelined
            # requests, an upgraded protocol's first bytes wait in h11).
            self._waiting = True
            self.transport.pauseProducing()  # type: ignore[attr-defined]
            identity.addBoth(self._authenticated, event)
            return
        self._serve(event, identity)

    def _authenticated(self, outcome: Identity | Failure, event: h11.Request) -> None:
        self._waiting = False
        if self._lost or self.transport is None:
            return
        self.transport.resumeProducing()  # type: ignore[attr-defined]
        if isinstance(outcome, Failure):
            if isinstance(outcome.value, HTTPError):
                self._fail(outcome.value, keep_alive=True)
            else:
                log.failure("authenticating {method} {target}", outcome, method=event.method, target=event.target)
                self._fail(HTTPError(500, "InternalError", "internal error"), keep_alive=True)
        else:
            self._serve(event, outcome)
        self._process()

    def _serve(self, event: h11.Request, identity: Identity) -> None:
        assert self.transport is not None
        try:
            request = Request(event, identity, host_port(self.transport.getPeer()))
            handler = self.route(request.method, request.path)
            if handler is None:
                raise HTTPError(404, "NotFound", "the server could not find the requested resource")
            result = handler(request)
        except HTTPError as e:
            self._fail(e, keep_alive=True)
            return
        except Exception:
            log.failure("handling {method} {target}", method=event.method, target=event.target)
            self._fail(HTTPError(500, "InternalError", "internal error"), keep_alive=True)
            return
        if callable(result):
            self._switch(result)
        else:
            code, body = result
            self._send(code, body)

    def _switch(self, upgrade: Upgrade) -> None:
        assert self.transport is not None
        trailing, _closed = self.h11.trailing_data
        self.next = upgrade(self.transport, trailing)

    def _send(
        self, code: int, body: Any, headers: list[tuple[str, str]] | None = None, keep_alive: bool = True
    ) -> None:
        assert self.transport is not None
        data = json.dumps(body, separators=(",", ":")).encode()
        head = [("content-type", "application/json"), ("content-length", str(len(data)))] + (headers or [])
        if not keep_alive:
            head.append(("connection", "close"))
        try:
            out = self.h11.send(h11.Response(status_code=code, headers=head))
            out += self.h11.send(h11.Data(data=data))
            out += self.h11.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self.transport.loseConnection()
            return
        self.transport.write(out)
        if not keep_alive or self.h11.our_state is h11.MUST_CLOSE:
            self.transport.loseConnection()

    def _fail(self, error: HTTPError, keep_alive: bool = False) -> None:
        body = objects.status(error.code, error.reason, str(error), error.details)
        if self.h11.their_state is h11.MIGHT_SWITCH_PROTOCOL or self.h11.their_state is h11.ERROR:
            keep_alive = False
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            self._send(error.code, body, error.headers, keep_alive)
        else:
            assert self.transport is not None
            self.transport.loseConnection()


class APIFactory(Factory):
    noisy = False

    def __init__(self, route: Callable[[str, str], Handler | None], authenticate: Authenticate) -> None:
        self.route = route
        self.authenticate = authenticate

    def buildProtocol(self, addr: object) -> APIProtocol:
        return APIProtocol(self.route, self.authenticate)
