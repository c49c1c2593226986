"""Attach to a CRI container's own stdio: the main process's stdout and
stderr (one stream with a terminal) and, if the kubelet made the container
with C{stdin: true}, its stdin.  Those belong to the runtime, so the way in
is the CRI's C{Attach}: a one-shot URL on the runtime's streaming server,
which we dial as a kubelet does, SPDY/3.1 with C{v4.channel.k8s.io}
(L{podshell.kube.spdyclient}; over WebSocket, v4 could not close stdin).
What arrives is handled as any channel stream's
(L{podshell.kube.wsclient.ChannelProcess}); only what the runtime does
differently is here:

 - B{closing stdin} ends the stdin stream: a C{stdinOnce} container's
   stdin is closed then (kubectl's semantics), another's stays open for
   the next attachment, as in Kubernetes.
 - B{detaching} (the client goes away): the connection is closed and the
   runtime drops this attachment; the container runs on.
 - B{no stdin} (C{stdin: false}): the runtime takes the attachment and
   discards input (containerd 1.6 answers with no error, nor do a kubelet
   and the API server), as the local runtime does; we do not send it, nor
   count it as delivered, and say so once in the node's log.
 - B{a terminal}: the attachment asks for one exactly when the container
   has one (the runtime refuses stderr with a tty); resizes go on the
   resize stream.
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
from podshell.kube.spdy import StreamType
from podshell.kube.spdyclient import ClientSpdy
from podshell.kube.wsclient import ChannelProcess
from podshell.node.nsexec import start_time
from podshell.node.runtime.base import ContainerHandle, ContainerNotRunning

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
        wanted = [StreamType.STDIN] if self.stdin else []
        wanted += [StreamType.STDOUT, StreamType.RESIZE if self.tty else StreamType.STDERR]
        stream = ClientSpdy(where.netloc, target, wanted, self, peer=f"{PEER} at {where.netloc}")

        def unreachable(failure: Failure) -> None:
            stream.fail(f"cannot reach {PEER} at {where.netloc}: {failure.getErrorMessage()}")

        endpoint = HostnameEndpoint(self.reactor, where.hostname, where.port, timeout=CONNECT_TIMEOUT)
        connectProtocol(endpoint, stream).addErrback(unreachable)

    def write(self, data: bytes) -> None:
        if self.stdin:
            super().write(data)
        elif data and not self._said_no_stdin:
            self._said_no_stdin = True
            path = self.handle.path
            log.info("attach to {path}: the container has no stdin (stdin: false): input dropped", path=path)

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
