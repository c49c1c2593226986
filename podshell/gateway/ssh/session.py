"""The SSH ``session`` channel: shells, commands and sftp in a container.

Written directly on C{SSHChannel} rather than Conch's C{SSHSession}: the
channel is both the process's sink (stdout, stderr, exit status) and, through
L{PodChannel}, the flow-control partner of the process in both directions.
"""

from __future__ import annotations

import struct
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any, cast

from twisted.conch.ssh import common, connection
from twisted.conch.ssh.session import parseRequest_pty_req, parseRequest_window_change

from podshell.auth.gate import Denied
from podshell.core.contracts import Process, ProcessRequest, Session
from podshell.core.process import SCP_SERVER, SFTP_SERVER, ExitStatus, WindowSize
from podshell.core.target import TargetError
from podshell.gateway.ssh.channels import PodChannel
from podshell.protocols.scp import server_args

if TYPE_CHECKING:
    from podshell.gateway.ssh.avatar import PodUser

# What a login shell is in a container we know nothing about: bash if it has it.
# The exit status of a session podshell ended (an operator, a timeout, a
# shutdown): sshd's for a session it could not go on with.
ENDED_CODE = 255
LOGIN_SHELL = ["/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -l; else exec sh -l; fi"]


class SessionChannel(PodChannel):
    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.term: str | None = None
        self.size = WindowSize(24, 80)
        self.env: dict[str, str] = {}
        self.process: Process | None = None
        self.audit: Session | None = None
        self._eofBeforeStart = False
        self._exited = False  # its exit status is sent (after a stop, the process's own is not)

    @property
    def user(self) -> PodUser:
        return cast("PodUser", self.avatar)

    # Requests before the command.
    def request_pty_req(self, data: bytes) -> int:
        term, (rows, cols, xpixel, ypixel), _modes = parseRequest_pty_req(data)
        self.term = term.decode(errors="replace") or "xterm"
        self.size = WindowSize(rows, cols, xpixel, ypixel)
        return 1

    def request_window_change(self, data: bytes) -> int:
        rows, cols, xpixel, ypixel = parseRequest_window_change(data)
        self.size = WindowSize(rows, cols, xpixel, ypixel)
        if self.process is not None:
            self.process.resize(self.size)
        return 1

    def request_env(self, data: bytes) -> int:
        name, rest = common.getNS(data)
        value, _ = common.getNS(rest)
        key = name.decode(errors="replace")
        if any(fnmatchcase(key, pattern) for pattern in self.user.accept_env):
            self.env[key] = value.decode(errors="replace")
            return 1
        return 0

    def request_signal(self, data: bytes) -> int:
        name = common.getNS(data)[0].decode(errors="replace")
        if self.process is None:
            return 0
        try:
            self.process.signal(name)
        except ValueError:
            return 0
        return 1

    # The command.
    def request_shell(self, data: bytes) -> int:
        return self._start(LOGIN_SHELL, None)

    def request_exec(self, data: bytes) -> int:
        command = common.getNS(data)[0].decode(errors="surrogateescape")
        if self.term is None and server_args(command) is not None:  # scp -O: served even without scp in the image
            return self._start([SCP_SERVER, command], command, tty=False)
        return self._start(["/bin/sh", "-c", command], command)

    def request_subsystem(self, data: bytes) -> int:
        name = common.getNS(data)[0]
        if name != b"sftp":
            return 0
        # podshell's own SFTP server, in the container as an exec is: nothing needed in the image.
        return self._start([SFTP_SERVER], "sftp", tty=False)

    def _start(self, argv: list[str], command: str | None, tty: bool | None = None) -> int:
        if self.process is not None:
            return 0
        avatar = self.user
        try:
            granted = avatar.gate.enter(
                avatar.identity,
                "exec",
                avatar.target,
                self.peer,
                "ssh",
                [command] if command else ["(shell)"],
                run_as=avatar.run_as,
            )
        except Denied as e:
            self._refuse(str(e))
            return 1
        env = dict(self.env)
        if self.term:
            env["TERM"] = self.term
        self.audit = granted.session
        try:
            request = ProcessRequest(tuple(argv), env, self.term is not None if tty is None else tty, self.size)
            self.process = avatar.cluster.process(granted, request, self)
        except TargetError as e:  # the container stopped a moment ago
            granted.session.end(f"failed: {e}")
            self._refuse(str(e))
            return 1
        granted.session.serve(self)
        self.process.registerProducer(self, True)
        self.sourceStarted()
        if self._eofBeforeStart:
            self.process.closeStdin()
        return 1

    # Door: the registry of live sessions ends it (an operator, a timeout, a shutdown).
    def moved(self) -> tuple[int, int]:
        return (self.process.bytes_in, self.process.bytes_out) if self.process is not None else (0, 0)

    def tell(self, line: str) -> None:
        if self.term is not None and not self._exited:
            self.write(f"\r\n{line}\r\n".encode())

    def stop(self, line: str, status: str) -> None:
        if self.audit is None or self.process is None or self._exited:
            return
        self.audit.end(status, *self.moved())
        if self.process.status is None:
            self.process.hangup()
        self.writeExtended(connection.EXTENDED_DATA_STDERR, f"\r\n{line}\r\n".encode())
        self._exit(ExitStatus(code=ENDED_CODE))

    def _refuse(self, message: str) -> None:
        """Tell the user on stderr, end with status 1, like a command that failed."""
        self.writeExtended(connection.EXTENDED_DATA_STDERR, f"podshell: {message}\r\n".encode())
        self._exit(ExitStatus(code=1))

    # Client input.
    def dataReceived(self, data: bytes) -> None:
        if self.process is not None:
            self.process.write(data)

    def extReceived(self, dataType: int, data: bytes) -> None:
        """Clients send no extended data; ignore it like sshd."""

    def eofReceived(self) -> None:
        if self.process is None:
            self._eofBeforeStart = True
        else:
            self.process.closeStdin()

    def closed(self) -> None:
        if self.process is not None and self.process.status is None:
            self.process.hangup()
        if self.audit is not None and self.process is not None and self.process.status is None:
            self.audit.end("hung up", self.process.bytes_in, self.process.bytes_out)

    # ProcessSink.
    def outReceived(self, data: bytes) -> None:
        if not self._exited:  # after a stop, what the hung-up process still says goes nowhere
            self.write(data)

    def errReceived(self, data: bytes) -> None:
        if not self._exited:
            self.writeExtended(connection.EXTENDED_DATA_STDERR, data)

    def processEnded(self, status: ExitStatus) -> None:
        if self.audit is not None and self.process is not None:
            self.audit.end(str(status), self.process.bytes_in, self.process.bytes_out)
        self._exit(status)

    def _exit(self, status: ExitStatus) -> None:
        if self.conn is None or self not in self.conn.channelsToRemoteChannel or self._exited:
            return
        self._exited = True
        if status.signal is not None:
            payload = common.NS(status.signal.encode()) + b"\0" + common.NS(b"") + common.NS(b"")
            self.connection.sendRequest(self, b"exit-signal", payload)
        else:
            self.connection.sendRequest(self, b"exit-status", struct.pack(">L", status.code or 0))
        self.sendEOFWhenDrained()
        self.loseConnection()

    def pauseSource(self) -> None:
        if self.process is not None:
            self.process.pauseProducing()

    def resumeSource(self) -> None:
        if self.process is not None:
            self.process.resumeProducing()
