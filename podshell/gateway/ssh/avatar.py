"""Who is logged in and where to: the SSH avatar, and its port forwards.

The SSH user name is the *target* (``team-a.web-0.app``); the identity is
whoever owns the key.  Every channel and forward goes through the gate with
the verb it needs, so policy is checked per use, not once per login.
"""

from __future__ import annotations

import struct

from twisted.conch.avatar import ConchUser
from twisted.conch.ssh import common, connection, forwarding
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from podshell.auth.gate import Denied, Gate
from podshell.auth.identity import Identity
from podshell.core.addresses import PortRefused, join, pod_loopback, port_of
from podshell.core.target import Target, TargetError
from podshell.gateway.routing import Cluster
from podshell.gateway.ssh.channels import StreamChannel, TCPPipe
from podshell.gateway.ssh.connection import OpenFailed
from podshell.gateway.ssh.session import SessionChannel

MSG_DEBUG = 4
# What an ``ssh -R`` bind address means in the pod: besides its loopback, only
# the wildcards, which there cover nothing else (a pod has only its loopback).
_BIND = {"": "0.0.0.0", "*": "0.0.0.0", "0.0.0.0": "0.0.0.0", "localhost": "127.0.0.1", "::": "::"}


class PodUser(ConchUser):
    def __init__(
        self,
        identity: Identity,
        target: Target,
        peer: str,
        gate: Gate,
        cluster: Cluster,
        accept_env: list[str],
        run_as: str | None = None,
    ) -> None:
        super().__init__()
        self.identity = identity
        self.run_as = run_as  # a container user its sessions run as (NS.POD.CTR+USER), not the container's own
        self.target = target
        self.peer = peer
        self.gate = gate
        self.cluster = cluster
        self.accept_env = accept_env
        self.conn: connection.SSHConnection | None = None
        self.listeners: dict[tuple[str, int], IListeningPort] = {}
        self.channelLookup[b"session"] = SessionChannel
        self.channelLookup[b"direct-tcpip"] = self.openDirectTCPIP

    def tell(self, message: str) -> None:
        """Show the user a line even where SSH has no place for a reason."""
        if self.conn is not None and self.conn.transport is not None:
            self.conn.transport.sendPacket(MSG_DEBUG, b"\x01" + common.NS(message.encode()) + common.NS(b""))

    # ssh -L: a connection to a port inside the pod.
    def openDirectTCPIP(self, remoteWindow: int, remoteMaxPacket: int, data: bytes, avatar: object) -> Deferred:
        (host, port), _origin = forwarding.unpackOpen_direct_tcpip(data)
        host = host.decode(errors="replace") if isinstance(host, bytes) else host
        if not pod_loopback(host):
            raise OpenFailed(
                connection.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"podshell: only ports inside the pod can be forwarded: use localhost:{port}, not {join(host, port)}",
            )
        try:
            granted = self.gate.enter(
                self.identity, "port-forward", self.target, self.peer, "ssh", [f"-L {host}:{port}"]
            )
        except Denied as e:
            raise OpenFailed(connection.OPEN_ADMINISTRATIVELY_PROHIBITED, f"podshell: {e}") from None
        pipe = TCPPipe()

        def connected(_: object) -> StreamChannel:
            return StreamChannel(
                pipe, granted.session, remoteWindow=remoteWindow, remoteMaxPacket=remoteMaxPacket, avatar=self
            )

        def refused(failure: Failure) -> None:
            granted.session.end(f"failed: {failure.value}")
            failure.trap(PortRefused, TargetError, OSError)
            raise OpenFailed(connection.OPEN_CONNECT_FAILED, f"podshell: {failure.value}")

        d = self.cluster.connect(granted, port, Factory.forProtocol(lambda: pipe), host)
        return d.addCallbacks(connected, refused)

    # ssh -R: a listener inside the pod whose connections come back to the client.
    def global_tcpip_forward(self, data: bytes) -> Deferred | int:
        host, port = forwarding.unpackGlobal_tcpip_forward(data)
        host = host.decode(errors="replace") if isinstance(host, bytes) else host
        bind = _BIND.get(host, host)
        if bind not in ("0.0.0.0", "::") and not pod_loopback(bind):
            self.tell(f"podshell: -R can only listen inside the pod (localhost), not on {host}")
            return 0
        try:
            granted = self.gate.enter(
                self.identity, "port-forward", self.target, self.peer, "ssh", [f"-R {host}:{port}"]
            )
        except Denied as e:
            self.tell(f"podshell: {e}")
            return 0
        factory = _ReverseFactory(self, host)

        def listening(listener: IListeningPort) -> object:
            bound = port_of(listener.getHost())
            factory.port = bound
            self.listeners[(host, port)] = listener
            granted.session.end(f"listening on {bind}:{bound} in the pod")
            return (1, struct.pack(">L", bound)) if port == 0 else 1

        def failed(failure: Failure) -> int:
            granted.session.end(f"failed: {failure.value}")
            self.tell(f"podshell: {failure.value}")
            return 0

        return self.cluster.listen(granted, port, factory, bind).addCallbacks(listening, failed)

    def global_cancel_tcpip_forward(self, data: bytes) -> Deferred | int:
        host, port = forwarding.unpackGlobal_tcpip_forward(data)
        host = host.decode(errors="replace") if isinstance(host, bytes) else host
        listener = self.listeners.pop((host, port), None)
        if listener is None:
            return 0
        return maybeDeferred(listener.stopListening).addCallback(lambda _: 1)

    def logout(self) -> None:
        for listener in self.listeners.values():
            listener.stopListening()
        self.listeners.clear()


class _ReversePipe(TCPPipe):
    """A connection made inside the pod to an ``ssh -R`` listener."""

    def __init__(self, factory: _ReverseFactory) -> None:
        self.factory = factory

    def connectionMade(self) -> None:
        super().connectionMade()
        avatar = self.factory.avatar
        try:
            granted = avatar.gate.enter(
                avatar.identity, "port-forward", avatar.target, avatar.peer, "ssh", [f"-R {self.factory.host}"]
            )
        except Denied:
            self.tcp.loseConnection()
            return
        origin = self.tcp.getPeer()
        assert isinstance(origin, IPv4Address | IPv6Address)
        channel = _ForwardedChannel(self, granted.session, conn=avatar.conn, avatar=avatar)
        assert avatar.conn is not None
        avatar.conn.openChannel(
            channel,
            forwarding.packOpen_forwarded_tcpip((self.factory.host, self.factory.port), (origin.host, origin.port)),
        )


class _ForwardedChannel(StreamChannel):
    name = b"forwarded-tcpip"

    def openFailed(self, reason: object) -> None:
        self.audit.end(f"refused by the client: {reason}")
        self.pipe.tcp.loseConnection()


class _ReverseFactory(Factory):
    noisy = False

    def __init__(self, avatar: PodUser, host: str) -> None:
        self.avatar = avatar
        self.host = host
        self.port = 0

    def buildProtocol(self, addr: object) -> _ReversePipe:
        return _ReversePipe(self)
