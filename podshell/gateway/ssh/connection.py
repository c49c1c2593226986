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

from twisted.conch.ssh import common, connection
from twisted.internet.defer import maybeDeferred
from twisted.python.failure import Failure

from podshell.logs import conch_logger


class OpenFailed(Exception):
    """A channel cannot be opened; C{reason} is an RFC 4254 code."""

    def __init__(self, reason: int, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class PodConnection(connection.SSHConnection):
    _log = log = conch_logger

    def serviceStarted(self) -> None:
        super().serviceStarted()
        self._replies: deque[list] = deque()

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
        channel.conn = self  # getChannel could only set it on the Deferred
        local = self.localChannelID
        self.localChannelID += 1
        channel.id = local
        self.channels[local] = channel
        self.channelsToRemoteChannel[channel] = senderChannel
        self.localToRemoteChannel[local] = senderChannel
        confirm = struct.pack(">4L", senderChannel, local, channel.localWindowSize, channel.localMaxPacket)
        self.transport.sendPacket(connection.MSG_CHANNEL_OPEN_CONFIRMATION, confirm + channel.specificData)
        channel.channelOpen(data)

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
