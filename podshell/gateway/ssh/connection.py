"""The SSH connection service, fixed for a gateway whose work is asynchronous.

Stock Conch confirms a channel before the channel is ready and answers global
requests synchronously; we need both to wait for the node (a connect inside a
pod, a listener inside a pod) and to report failures with their reason.  It
also never withholds window: here a channel that is paused (its destination
does not read) gets no WINDOW_ADJUST until it resumes, so a client cannot make
the server buffer without bound.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from twisted.conch.ssh import common, connection, transport
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from podshell.core.addresses import host_port
from podshell.core.keepalive import Keepalive, KeepaliveSettings
from podshell.core.metrics import SSHLimit
from podshell.core.transports import StreamTransport, abort
from podshell.core.twisted_private import confirm_channel, log_through
from podshell.gateway.ssh.channels import PodChannel
from podshell.gateway.ssh.logs import conch_logger


@dataclass(frozen=True)
class ConnectionLimits:
    """What a logged-in connection may hold (C{max_channels}, as sshd's
    MaxSessions but for every kind of channel; None: no limit) and how its
    client is probed (sshd's ClientAliveInterval and ClientAliveCountMax;
    None: never).  The factory holds them, with its clock and its
    C{limitHit(limit, source)}."""

    max_channels: int | None = None
    keepalive: KeepaliveSettings | None = None


class OpenFailed(Exception):
    """A channel cannot be opened; C{reason} is an RFC 4254 code."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@implementer(IPushProducer)
@log_through(conch_logger)
class PodConnection(connection.SSHConnection):
    log = conch_logger
    sendingPaused = False

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self._replies: deque[list] = deque()
        # The producer for the client's TCP connection: when its send buffer
        # fills, every channel's source pauses, so what waits in memory is that
        # buffer, not each channel's window (2 MiB) of packets, re-joined by the
        # transport on every write.
        assert self.transport is not None and self.transport.transport is not None
        cast(StreamTransport, self.transport.transport).registerProducer(self, True)
        # A connection service on its own (tests) has no factory: no limits.
        factory: Any = getattr(self.transport, "factory", None)
        self.limits: ConnectionLimits = getattr(factory, "connectionLimits", None) or ConnectionLimits()
        self._limitHit: Callable[[SSHLimit, str], None] = getattr(factory, "limitHit", lambda limit, source: None)
        self._opening = 0  # channel opens still waiting for the node
        self._keepalive: Keepalive | None = None
        clock = getattr(factory, "clock", None)
        if self.limits.keepalive is not None and clock is not None:
            self._keepalive = Keepalive(clock, self.limits.keepalive, self._probe, self._unanswered)

    def _peer(self) -> str:
        assert self.transport is not None and self.transport.transport is not None
        return host_port(self.transport.transport.getPeer())

    def packetReceived(self, messageNum: int, packet: bytes) -> None:
        if self._keepalive is not None:
            self._keepalive.heard()
        super().packetReceived(messageNum, packet)

    def _probe(self) -> None:
        """OpenSSH's keepalive: a global request nobody knows, wanting a reply
        (a failure is as good an answer as a success)."""
        d = self.sendGlobalRequest(b"keepalive@openssh.com", b"", wantReply=1)
        d.addErrback(lambda failure: None)

    def _unanswered(self) -> None:
        """The client answered none of the probes: it is gone.  Said to it in
        case it still reads, then the socket is dropped without waiting on
        what it does not read."""
        assert self.transport is not None and self.limits.keepalive is not None
        self._limitHit(SSHLimit.KEEPALIVE, self._peer())
        settings = self.limits.keepalive
        self.transport.sendDisconnect(
            transport.DISCONNECT_CONNECTION_LOST,
            f"podshell: no answer to {settings.count_max} keepalive(s) {settings.interval:g} s apart".encode(),
        )
        abort(self.transport.transport)

    def serviceStopped(self) -> None:
        if self._keepalive is not None:
            self._keepalive.stop()
        super().serviceStopped()

    def pauseProducing(self) -> None:
        self.sendingPaused = True
        for channel in list(self.channels.values()):
            if isinstance(channel, PodChannel):
                channel.pauseSource()

    def resumeProducing(self) -> None:
        self.sendingPaused = False
        for channel in list(self.channels.values()):
            if isinstance(channel, PodChannel) and channel.areWriting and not channel.closing:
                channel.resumeSource()

    def stopProducing(self) -> None:
        """The client's connection is gone; serviceStopped closes the channels."""

    # Channel opens may take time and may fail with a reason.
    def ssh_CHANNEL_OPEN(self, packet: bytes) -> None:
        channelType, rest = common.getNS(packet)
        senderChannel, windowSize, maxPacket = struct.unpack(">3L", rest[:12])
        data = rest[12:]
        cap = self.limits.max_channels
        if cap is not None and len(self.channels) + self._opening >= cap:
            self._limitHit(SSHLimit.MAX_CHANNELS, self._peer())
            why = f"podshell: this connection has {cap} channels open already (ssh.max_channels)"
            self._refuseOpen(senderChannel, connection.OPEN_ADMINISTRATIVELY_PROHIBITED, why)
            return
        self._opening += 1
        d = maybeDeferred(self.getChannel, channelType, windowSize, maxPacket, data)
        d.addCallbacks(self._opened, self._openFailed, callbackArgs=(senderChannel, data), errbackArgs=(senderChannel,))
        d.addErrback(lambda f: self.log.failure("channel open", f))

    def _opened(self, channel, senderChannel: int, data: bytes) -> None:
        self._opening -= 1
        if self.transport is None or getattr(self.transport.transport, "disconnecting", True):
            channel.closed()  # the client left while we were connecting
            return
        confirm_channel(self, channel, senderChannel, data)

    def _openFailed(self, failure: Failure, senderChannel: int) -> None:
        self._opening -= 1
        error = failure.value
        if isinstance(error, OpenFailed):
            reason, text = error.reason, str(error)
        elif isinstance(error, connection.error.ConchError):
            text, reason = error.args[0], error.args[1]
            if isinstance(text, int):
                text, reason = reason, text
            text = text.decode() if isinstance(text, bytes) else str(text)
        else:
            self.log.failure("channel open failed", failure)
            reason, text = connection.OPEN_CONNECT_FAILED, "podshell: internal error"
        self._refuseOpen(senderChannel, reason, text)

    def _refuseOpen(self, senderChannel: int, reason: int, text: str) -> None:
        if self.transport is not None:
            self.transport.sendPacket(
                connection.MSG_CHANNEL_OPEN_FAILURE,
                struct.pack(">2L", senderChannel, reason) + common.NS(text.encode()) + common.NS(b""),
            )

    # Global requests may take time; replies go out in request order (RFC 4254 4).
    def ssh_GLOBAL_REQUEST(self, packet: bytes) -> None:
        requestType, rest = common.getNS(packet)
        wantReply, rest = rest[0], rest[1:]
        entry: list = [False, None, wantReply]
        self._replies.append(entry)

        def done(result: object) -> None:
            if isinstance(result, Failure):
                self.log.failure("global request {type}", result, type=requestType)
                result = 0
            entry[0], entry[1] = True, result
            self._sendReplies()

        maybeDeferred(self.gotGlobalRequest, requestType, rest).addBoth(done)

    def _sendReplies(self) -> None:
        while self._replies and self._replies[0][0]:
            _, result, wantReply = self._replies.popleft()
            if not wantReply or self.transport is None:
                continue
            if result:
                data = result[1] if isinstance(result, (tuple, list)) else b""
                self.transport.sendPacket(connection.MSG_REQUEST_SUCCESS, data)
            else:
                self.transport.sendPacket(connection.MSG_REQUEST_FAILURE, b"")

    # Backpressure towards the client.
    def adjustWindow(self, channel, bytesToAdd: int) -> None:
        if getattr(channel, "inboundPaused", False):
            return  # resumeProducing() asks again for what was consumed meanwhile
        super().adjustWindow(channel, bytesToAdd)
