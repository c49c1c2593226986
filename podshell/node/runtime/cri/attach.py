"""Attach to a CRI container's own stdio: the main process's stdout and
stderr (one stream with a terminal) and, if the kubelet made the container
with C{stdin: true}, its stdin.  Those belong to the runtime, so the way in
is the CRI's C{Attach}: a one-shot URL on the runtime's streaming server,
which we dial as a WebSocket client with C{v4.channel.k8s.io}, the protocol
containerd 1.6's server speaks (it vendors the kubelet's streaming
package).  The channel stream is the one a gateway uses to reach a node
agent (L{podshell.kube.wsclient.ChannelProcess}); only what v4 and the
runtime cannot carry differs here:

 - B{closing stdin}: v4 has no half-close (v5's close message is newer
   than containerd 1.6).  closeStdin sends nothing: the container's stdin
   stays open and its output keeps coming, as for any attachment that
   stops typing.  A C{stdinOnce} container's stdin is closed by the
   runtime when the attachment goes (kubectl's semantics: "until the
   client disconnects").
 - B{detaching} (the client goes away): the stream is closed and the
   runtime drops this attachment; the container runs on.
 - B{no stdin} (C{stdin: false}): the runtime takes the attachment and
   discards input (containerd 1.6 answers with no error, nor do a kubelet
   and the API server), as the local runtime does; we do not send it, nor
   count it as delivered, and say so once in the node's log.
 - B{a terminal}: the attachment asks for one exactly when the container
   has one (the runtime refuses stderr with a tty); resizes go on channel 4.
 - B{signals}: the attach protocol has none; we signal the container's
   main process by pidfd, checked to still be the one the handle names.
"""

from __future__ import annotations

import os
import signal as signals
from urllib.parse import urlsplit

from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from podshell.core.contracts import Sink
from podshell.core.process import signal_number
from podshell.kube.wsclient import ChannelProcess, ClientWebSocket
from podshell.node.nsexec import start_time
from podshell.node.runtime.base import ContainerHandle, ContainerNotRunning
from podshell.protocols import remotecommand as rc

log = Logger()
CONNECT_TIMEOUT = 5.0
PEER = "the container runtime's streaming server"


class RuntimeAttachment(ChannelProcess):
    """One client attached to a CRI container's stdio; L{connect} dials the
    URL the runtime gave (input before that is kept, as for any stream)."""

    def __init__(self, reactor, handle: ContainerHandle, sink: Sink, stdin: bool, tty: bool) -> None:
        super().__init__(sink, tty, f"{PEER} ended the attachment to {handle.path} without a status")
        self.reactor = reactor
        self.handle = handle
        self.stdin = stdin
        self._said_no_stdin = False

    def connect(self, url: str) -> None:
        if self.gone or self.status is not None:
            return  # detached while the runtime was asked: nothing to open
        where = urlsplit(url)
        if where.scheme != "http" or not where.hostname or where.port is None:
            why = f"the container runtime gave a URL podshell cannot dial: {url!r}"
            self.failed(f"cannot attach to {self.handle.path}: {why}")
            return
        target = where.path + (f"?{where.query}" if where.query else "")
        ws = ClientWebSocket(self.reactor, where.netloc, target, rc.V4, [], self, peer=PEER)
        ws.why_lost = lambda reason: f"{PEER} at {where.netloc} closed before answering: {reason.getErrorMessage()}"

        def unreachable(failure: Failure) -> None:
            ws.fail(f"cannot reach {PEER} at {where.netloc}: {failure.getErrorMessage()}")

        endpoint = HostnameEndpoint(self.reactor, where.hostname, where.port, timeout=CONNECT_TIMEOUT)
        connectProtocol(endpoint, ws).addErrback(unreachable)

    def write(self, data: bytes) -> None:
        if self.stdin:
            super().write(data)
        elif data and not self._said_no_stdin:
            self._said_no_stdin = True
            path = self.handle.path
            log.info("attach to {path}: the container has no stdin (stdin: false): input dropped", path=path)

    def closeStdin(self) -> None:
        """Nothing to send: v4 cannot half-close (see the module's doc)."""

    def signal(self, sig: str | int) -> None:
        """Signal the container's main process, as a terminal's ^C would.

        @raise ValueError: not a signal.
        @raise ContainerNotRunning: it stopped or restarted.
        """
        number = signal_number(sig)
        init, handle = self.handle.init, self.handle
        try:
            pidfd = os.pidfd_open(init.pid)
        except OSError:
            raise ContainerNotRunning(handle.namespace, handle.pod, handle.container, "it stopped") from None
        try:
            if start_time(init.pid) != init.started:
                raise ContainerNotRunning(handle.namespace, handle.pod, handle.container, "it restarted")
            signals.pidfd_send_signal(pidfd, number)
        except (OSError, ValueError):
            raise ContainerNotRunning(handle.namespace, handle.pod, handle.container, "it stopped") from None
        finally:
            os.close(pidfd)
