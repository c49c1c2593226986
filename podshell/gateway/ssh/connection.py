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
from typing import cast

from twisted.conch.ssh import common, connection
from twisted.internet.defer import maybeDeferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from podshell.core.transports import StreamTransport
from podshell.core.twisted_private import confirm_channel, log_through
from podshell.gateway.ssh.channels import PodChannel
from podshell.gateway.ssh.logs import conch_logger


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
        d = maybeDeferred(self.getChannel, channelType, windowSize, maxPacket, data)
        d.addCallbacks(self._opened, self._openFailed, callbackArgs=(senderChannel, data), errbackArgs=(senderChannel,))
        d.addErrback(lambda f: self.log.failure("channel open", f))

    def _opened(self, channel, senderChannel: int, data: bytes) -> None:
        if self.transport is None or getattr(self.transport.transport, "disconnecting", True):
            channel.closed()  # the client left while we were connecting
            return
        confirm_channel(self, channel, senderChannel, data)

    def _openFailed(self, failure: Failure, senderChannel: int) -> None:
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
