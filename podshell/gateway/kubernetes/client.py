"""A gateway's connection to the Kubernetes API server: where it is and who
we are (a kubeconfig, or the pod's ServiceAccount), JSON requests, and watch
streams read as they come.

Why not the official Python client: it blocks a thread per request and
builds a model object per field; listing 150,000 pods through it takes
many times what C{json.loads} of the same bytes does (C{bench/}).  Its
models are used by the tests, so what we read is what it writes.
"""

from __future__ import annotations

import base64
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import yaml
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool, ResponseDone, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from podshell.core.yamlfile import ConfigError
from podshell.protocols.watch import WatchDecoder, WatchError, WatchEvent

# Where a pod finds its API server and its ServiceAccount.
IN_CLUSTER = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TIMEOUT = 30.0


class APIError(Exception):
    """The API server answered with an error status (its C{Status} message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"HTTP {code}: {message}")
        self.code = code


@dataclass(frozen=True)
class Credentials:
    """How to reach and trust the API server, and how to be known to it."""

    server: str
    ca_pem: bytes | None = None
    token: str | None = None
    token_file: Path | None = None  # read at each request: projected tokens rotate
    cert_pem: bytes | None = None
    key_pem: bytes | None = None

    def bearer(self) -> str | None:
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return self.token

    @classmethod
    def in_cluster(cls, root: Path = IN_CLUSTER, key: str = "inventory") -> Credentials:
        """@param key: the configuration's, named in errors."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not host or not port:
            raise ConfigError(
                f"{key}: no kubeconfig given and not in a pod (KUBERNETES_SERVICE_HOST is not set); "
                f"give {key}.kubeconfig"
            )
        name = f"[{host}]" if ":" in host else host
        try:
            ca = (root / "ca.crt").read_bytes()
        except OSError as e:
            raise ConfigError(f"{key}: cannot read the ServiceAccount's CA {root / 'ca.crt'}: {e.strerror}") from None
        return cls(f"https://{name}:{port}", ca_pem=ca, token_file=root / "token")

    @classmethod
    def from_kubeconfig(cls, path: Path, key: str = "inventory") -> Credentials:
        """The current context's cluster and user (tokens and client
        certificates; exec plugins are a person's, not a server's)."""
        try:
            config = yaml.safe_load(path.read_text()) or {}
            context_name = config["current-context"]
            context = _named(config, "contexts", context_name)["context"]
            cluster = _named(config, "clusters", context["cluster"])["cluster"]
            user = _named(config, "users", context["user"])["user"] or {}
        except OSError as e:
            raise ConfigError(f"{key}.kubeconfig: cannot read {path}: {e.strerror}") from None
        except (KeyError, TypeError, yaml.YAMLError) as e:
            raise ConfigError(f"{key}.kubeconfig: {path} is not a usable kubeconfig ({e})") from None
        base = path.parent

        def data(entry: dict[str, Any], key: str) -> bytes | None:
            if entry.get(f"{key}-data"):
                return base64.b64decode(entry[f"{key}-data"])
            if entry.get(key):
                return (base / entry[key]).read_bytes()
            return None

        token_file = base / user["tokenFile"] if user.get("tokenFile") else None
        return cls(
            cluster["server"],
            ca_pem=data(cluster, "certificate-authority"),
            token=user.get("token"),
            token_file=token_file,
            cert_pem=data(user, "client-certificate"),
            key_pem=data(user, "client-key"),
        )


def _named(config: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    for entry in config.get(kind) or []:
        if entry.get("name") == name:
            return entry
    raise KeyError(f"no {kind[:-1]} named {name!r}")


@implementer(IPolicyForHTTPS)
class _Trust:
    """The API server is trusted by the CA the credentials name, not the system's."""

    def __init__(self, credentials: Credentials) -> None:
        self.root = ssl.Certificate.loadPEM(credentials.ca_pem) if credentials.ca_pem else None
        self.client = None
        if credentials.cert_pem and credentials.key_pem:
            self.client = ssl.PrivateCertificate.loadPEM(credentials.cert_pem + b"\n" + credentials.key_pem)

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        kwargs: dict[str, Any] = {"clientCertificate": self.client} if self.client else {}
        if self.root is not None:
            kwargs["trustRoot"] = self.root
        return ssl.optionsForClientTLS(hostname.decode("ascii"), **kwargs)


class APIServer:
    """JSON requests to one API server, on a pool of persistent connections."""

    def __init__(self, reactor: Any, credentials: Credentials, key: str = "inventory") -> None:
        """@param key: the configuration's, named in errors."""
        self.reactor = reactor
        self.credentials = credentials
        self.server = credentials.server.rstrip("/")
        if urlsplit(self.server).scheme not in ("https", "http"):
            raise ConfigError(f"{key}: the API server {self.server!r} is not an https:// URL")
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = 8
        self._agent = Agent(reactor, contextFactory=_Trust(credentials), pool=pool, connectTimeout=TIMEOUT)

    def _headers(self, json_body: bool = False) -> Headers:
        headers = Headers({b"accept": [b"application/json"], b"user-agent": [b"podshell-gateway"]})
        token = self.credentials.bearer()
        if token:
            headers.setRawHeaders(b"authorization", [f"Bearer {token}".encode()])
        if json_body:
            headers.setRawHeaders(b"content-type", [b"application/json"])
        return headers

    def _url(self, path: str, query: dict[str, str] | None) -> bytes:
        return (self.server + path + ("?" + urlencode(query) if query else "")).encode()

    def _send(self, method: bytes, path: str, query: dict[str, str] | None, body: dict[str, Any] | None) -> Deferred:
        producer = None if body is None else FileBodyProducer(io.BytesIO(json.dumps(body).encode()))
        return self._agent.request(method, self._url(path, query), self._headers(body is not None), producer)

    def get(self, path: str, query: dict[str, str] | None = None) -> Deferred[dict[str, Any]]:
        """@return: the object; fails with L{APIError} on an error status."""
        d = self._send(b"GET", path, query, None)
        return d.addCallback(_json).addTimeout(TIMEOUT, self.reactor)

    def post(self, path: str, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        d = self._send(b"POST", path, None, body)
        return d.addCallback(_json).addTimeout(TIMEOUT, self.reactor)

    def watch(self, path: str, query: dict[str, str], each: Callable[[WatchEvent], None]) -> Deferred[None]:
        """Watch C{path}: C{each} is called with every event as it arrives.

        @return: fires when the server ends the stream; fails with
            L{APIError} (refused), L{WatchError} (not a watch), or the
            connection's failure.  Cancel it to stop watching.
        """

        def started(response: Any) -> Deferred[Any]:
            if response.code != 200:
                return _json(response)  # fails with the APIError
            reader = _WatchReader(each)
            response.deliverBody(reader)
            return reader.done

        d = self._send(b"GET", path, {**query, "watch": "1"}, None)
        return d.addCallback(started)


def _json(response: Any) -> Deferred[dict[str, Any]]:
    def parse(body: bytes) -> dict[str, Any]:
        try:
            found = json.loads(body)
        except ValueError:
            found = None
        if response.code >= 300:
            message = found.get("message") if isinstance(found, dict) else None
            raise APIError(response.code, str(message or body[:200].decode("utf-8", "replace")))
        if not isinstance(found, dict):
            raise APIError(response.code, "the answer is not a JSON object")
        return found

    return readBody(response).addCallback(parse)


class _WatchReader(Protocol):
    """A watch response's body, decoded as it arrives."""

    def __init__(self, each: Callable[[WatchEvent], None]) -> None:
        self.each = each
        self.done: Deferred[None] = Deferred(lambda _: self.stop())
        self.decoder = WatchDecoder()
        self.failed = False

    def dataReceived(self, data: bytes) -> None:
        if self.failed:
            return
        try:
            events = self.decoder.feed(data)
        except WatchError as e:
            self._fail(Failure(e))
            return
        for event in events:
            if self.failed:  # the caller stopped watching at an earlier event
                break
            self.each(event)

    def stop(self) -> None:
        """Cancelled: drop the connection; what is still buffered is not ours."""
        self.failed = True
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def _fail(self, failure: Failure) -> None:
        self.failed = True
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]
        if not self.done.called:
            self.done.errback(failure)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.failed or self.done.called:
            return
        if not reason.check(ResponseDone):
            self.done.errback(reason)
            return
        try:
            self.decoder.end()
        except WatchError as e:
            self.done.errback(Failure(e))
            return
        self.done.callback(None)
