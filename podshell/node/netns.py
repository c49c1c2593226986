"""TCP sockets created inside a pod's network namespace, with no helper process.

A socket belongs for life to the network namespace it was created in, so a
worker thread briefly joins the pod's namespace, creates the socket, returns
to its own namespace, and the reactor adopts the file descriptor.  The work
runs on a dedicated pool so that a thread that ever failed to come back (we
then exit the whole process) cannot poison the reactor's shared pool.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable
from typing import TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IListeningPort, IProtocol, IProtocolFactory
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from podshell.core.addresses import PortRefused, pod_loopback
from podshell.node.nsexec import CLONE_NEWNET, enter, setns
from podshell.node.runtime.base import ContainerHandle, ContainerNotRunning

T = TypeVar("T")
CONNECT_TIMEOUT = 5.0

# Bytes read from a pod's port at a time: fewer trips through framing and TLS
# per byte than Twisted's 64 KiB (a fifth more port-forward throughput, measured;
# see podshell.server.heap for what it takes from the allocator).  Twisted also lets
# this much wait towards the pod before it pauses whoever writes there.
READ_SIZE = 256 * 1024


def loopback_addresses(host: str, wildcard: bool = False) -> list[tuple[int, tuple]]:
    """The (family, address) pairs to try for C{host}, which must be on the
    pod's loopback (L{pod_loopback}), or with C{wildcard} (a listener) also
    C{0.0.0.0} or C{::}: names are never resolved with the gateway's
    resolver, and only the pod's own loopback is reachable.

    @raise ValueError: anything else; the node refuses it whatever the gateway let through."""
    if host == "localhost":
        return [(socket.AF_INET, ("127.0.0.1",)), (socket.AF_INET6, ("::1",))]
    if not (pod_loopback(host) or (wildcard and host in ("0.0.0.0", "::"))):
        raise ValueError(f"{host!r} is not on the pod's loopback")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return [(family, (host,))]


def _socket_in(handle: ContainerHandle, family: int) -> socket.socket:
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            enter(handle.sandbox.pid, handle.sandbox.started, CLONE_NEWNET)
        except ProcessLookupError:
            raise ContainerNotRunning(handle.namespace, handle.pod, handle.container, "its pod stopped") from None
        try:
            return socket.socket(family, socket.SOCK_STREAM)
        finally:
            try:
                setns(own, CLONE_NEWNET)
            except OSError:  # pragma: no cover - cannot happen for our own namespace
                os._exit(70)  # a thread stuck in a pod's namespace must not live on
    finally:
        os.close(own)


def _connect(handle: ContainerHandle, host: str, port: int) -> socket.socket:
    last: OSError | None = None
    for family, addr in loopback_addresses(host):
        s = _socket_in(handle, family)
        try:
            s.settimeout(CONNECT_TIMEOUT)
            s.connect((*addr, port))
            s.setblocking(False)
            return s
        except OSError as e:
            s.close()
            last = e
            if e.errno not in (errno.ECONNREFUSED, errno.EADDRNOTAVAIL):
                break
    assert last is not None
    if isinstance(last, ConnectionRefusedError) or last.errno == errno.EADDRNOTAVAIL:
        raise PortRefused(f"nothing listens on {host}:{port} in pod {handle.namespace}/{handle.pod}")
    raise OSError(f"cannot connect to {host}:{port} in pod {handle.namespace}/{handle.pod}: {last.strerror}")


def _listen(handle: ContainerHandle, host: str, port: int, backlog: int) -> socket.socket:
    family, addr = loopback_addresses(host, wildcard=True)[0]
    s = _socket_in(handle, family)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((*addr, port))
        s.listen(backlog)
        s.setblocking(False)
    except OSError as e:
        s.close()
        raise OSError(f"cannot listen on {host}:{port} in pod {handle.namespace}/{handle.pod}: {e.strerror}") from None
    return s


@implementer(IProtocolFactory)
class _Capture:
    """Builds the caller's protocol for an adopted connection and remembers it
    (C{adoptStreamConnection} returns nothing)."""

    def __init__(self, wrapped: IProtocolFactory) -> None:
        self.wrapped = wrapped
        self.built: IProtocol | None = None

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        self.built = self.wrapped.buildProtocol(addr)
        return self.built

    def doStart(self) -> None:
        """Adopted connections start no factory."""

    def doStop(self) -> None:
        """Adopted connections stop no factory."""


class NetnsSockets:
    """Connect and listen inside pods' network namespaces."""

    def __init__(self, reactor, threads: int = 4) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name="podshell-netns")
        self._started = False

    def _run(self, fn: Callable[..., T], *args: object) -> Deferred[T]:
        if not self._started:
            self._started = True
            self._pool.start()
            self._reactor.addSystemEventTrigger("during", "shutdown", self._pool.stop)
        return deferToThreadPool(self._reactor, self._pool, fn, *args)

    def connect(
        self, handle: ContainerHandle, port: int, factory: IProtocolFactory, host: str = "localhost"
    ) -> Deferred[IProtocol]:
        """Connect to C{host:port} as seen from inside the pod and run the
        protocol C{factory} builds on it.  Fails with L{PortRefused} when
        nothing listens there."""

        def adopt(s: socket.socket) -> IProtocol:
            capture = _Capture(factory)
            try:
                self._reactor.adoptStreamConnection(s.fileno(), s.family, capture)
            finally:
                s.close()  # the reactor holds its own duplicate
            if capture.built is None:
                raise ConnectionAbortedError("the protocol factory refused the connection")
            capture.built.transport.bufferSize = READ_SIZE  # type: ignore[attr-defined]
            return capture.built

        return self._run(_connect, handle, host, port).addCallback(adopt)

    def listen(
        self, handle: ContainerHandle, port: int, factory: IProtocolFactory, host: str = "127.0.0.1", backlog: int = 128
    ) -> Deferred[IListeningPort]:
        """Listen on C{host:port} inside the pod (port 0 picks one)."""

        def adopt(s: socket.socket) -> IListeningPort:
            try:
                return self._reactor.adoptStreamPort(s.fileno(), s.family, factory)
            finally:
                s.close()

        return self._run(_listen, handle, host, port, backlog).addCallback(adopt)
