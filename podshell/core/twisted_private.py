"""The fence: every private Twisted name podshell relies on, and the one
place that spells them.

Twisted promises nothing about these names, so an upgrade can remove or
change any of them without a deprecation.  Each is here because no public
API does the job (each one's docstring says why); the rest of podshell uses
the public-named wrappers below.  tests/test_twisted_private.py checks that
every name still exists and still behaves as relied on, and
tests/test_layers.py fails if a module outside this one uses one of
L{PRIVATE_NAMES}.  setup.cfg caps Twisted at the newest release those tests
passed on; raise the cap only after they pass on the new one.

In the core layer, the lowest that imports Twisted, so that the node and the
gateway can both use it; it imports no reactor.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.conch.ssh import connection, transport
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST

# Twisted's own classes, subclassed by the spawner: not private names, but
# only reactor.spawnProcess is public, and it cannot be given the hooks below.
from twisted.internet.process import Process, PTYProcess

if TYPE_CHECKING:
    from twisted.conch.ssh.channel import SSHChannel
    from twisted.logger import Logger

#: Every private Twisted name used, here and nowhere else (tests/test_layers.py).
PRIVATE_NAMES: frozenset[str] = frozenset(
    {
        # process forking (ForkHooks)
        "_trySpawnInsteadOfFork",
        "_fork",
        "_setupChild",
        "_execChild",
        # SSH packets held during a key exchange (held_for_key_exchange)
        "_keyExchangeState",
        "_KEY_EXCHANGE_NONE",
        "_allowedKeyExchangeMessageType",
        "_blockedByKeyExchange",
        # Conch's class loggers (log_through)
        "_log",
    }
)

T = TypeVar("T", bound=type)


# Processes.


class ForkHooks:
    """Hooks into the fork of Twisted's C{Process} and C{PTYProcess}: mixed in
    before either, it runs L{around_fork} around the C{fork()}, then in the
    child L{in_child} before Twisted sets up the child's descriptors, and
    L{exec_child} instead of Twisted's C{execvpe}.

    Relies on C{twisted.internet.process._BaseProcess}: C{__init__} calls
    C{_fork(path, uid, gid, executable, args, environment, **kwargs)}, which
    first asks C{_trySpawnInsteadOfFork(...)} (C{posix_spawnp}, for
    C{Process} only), else forks and runs C{_setupChild(**kwargs)} then
    C{_execChild(path, uid, gid, executable, args, environment)} in the
    child, writing any exception to fd 2 and C{_exit(1)}.

    No public API: C{reactor.spawnProcess} takes no C{preexec_fn}, and
    podshell's commands must be forked in a container's pid namespace and
    enter its other namespaces before anything else runs, without a helper
    process beside them (see L{podshell.node.spawner})."""

    def around_fork(self, fork: Callable[[], None]) -> None:
        """Called in the parent with the fork to make (once)."""
        fork()

    def in_child(self) -> None:
        """Called in the child, first thing (cooperative: call super())."""

    def exec_child(self, path, uid, gid, executable, args, environment) -> None:
        """Called in the child to become the command; Twisted's exec by default."""
        super()._execChild(path, uid, gid, executable, args, environment)  # type: ignore[misc]

    # Twisted's names; nothing else in podshell spells them.
    def _trySpawnInsteadOfFork(self, *args: object) -> bool:
        return False  # posix_spawn runs none of the hooks

    def _fork(self, path, uid, gid, executable, args, environment, **kwargs) -> None:
        parent = super()._fork  # type: ignore[misc]
        self.around_fork(lambda: parent(path, uid, gid, executable, args, environment, **kwargs))

    def _setupChild(self, *args: object, **kwargs: object) -> None:
        self.in_child()
        super()._setupChild(*args, **kwargs)  # type: ignore[misc]

    def _execChild(self, path, uid, gid, executable, args, environment) -> None:
        self.exec_child(path, uid, gid, executable, args, environment)


def read_in_chunks_of(size: int, process: Process | PTYProcess) -> None:
    """Read a child's output C{size} bytes at a time instead of Twisted's
    8 KiB; each chunk goes where Twisted sends it (the process protocol's
    C{childDataReceived}).

    Relies on what Twisted's processes are made of: a C{PTYProcess} is itself
    the reader of the terminal's master (descriptor C{.fd}, protocol
    C{.proto}); a C{Process} keeps a C{ProcessReader} per output pipe in
    C{.pipes[childFD]}, each with C{.fd} and C{dataReceived}; the reactor
    calls C{doRead()} on them, which returns None, or C{CONNECTION_DONE} /
    C{CONNECTION_LOST} when the descriptor is done
    (C{twisted.internet.fdesc.readFromFD}, whose 8 KiB is fixed).

    No public API sets the read size, nor hands out a process's pipes."""
    if isinstance(process, PTYProcess):
        proto = process.proto
        assert proto is not None
        _read_more(process, size, lambda data: proto.childDataReceived(1, data))
        return
    for fd in (1, 2):
        reader = process.pipes[fd]
        _read_more(reader, size, reader.dataReceived)


def _read_more(reader: Any, size: int, deliver: Callable[[bytes], object]) -> None:
    fd: int = reader.fd

    def doRead() -> object:
        try:
            data = os.read(fd, size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return CONNECTION_LOST
        if not data:
            return CONNECTION_DONE
        deliver(data)
        return None

    reader.doRead = doRead


# SSH.


def held_for_key_exchange(t: transport.SSHTransportBase, messageType: int, payload: bytes) -> bool:
    """Whether Conch holds this packet back because a key exchange is under
    way; if so it now has the packet, and sends it (through C{sendPacket})
    once the new keys are in use.  For a C{sendPacket} of one's own.

    Relies on C{SSHTransportBase}: C{_keyExchangeState} is
    C{_KEY_EXCHANGE_NONE} outside a key exchange; during one, only messages
    for which C{_allowedKeyExchangeMessageType(messageType)} is true go out,
    the others wait in C{_blockedByKeyExchange} as C{(messageType, payload)}
    until C{_newKeys} sends them (RFC 4253 7.1).  Conch's C{sendPacket} does
    this first, then frames the packet its way.

    No public API: C{sendPacket} does both at once, and AEAD packets
    (L{podshell.gateway.ssh.ciphers}) are framed differently, so they cannot
    go through it."""
    if t._keyExchangeState == t._KEY_EXCHANGE_NONE or t._allowedKeyExchangeMessageType(messageType):
        return False
    t._blockedByKeyExchange.append((messageType, payload))
    return True


def log_through(logger: Logger) -> Callable[[T], T]:
    """A class decorator: this Conch class (transport, service, factory)
    logs through C{logger}.

    Relies on Conch's classes logging through a class attribute C{_log}
    (a L{twisted.logger.Logger}, a descriptor that makes a new logger on
    every access): C{SSHTransportBase}, C{SSHService} and its
    C{SSHUserAuthServer} and C{SSHConnection}, C{SSHChannel}, C{SSHFactory}.

    No public API: an observer can filter Conch's events out, but only after
    each was built, and the descriptor's lookup on every packet and channel
    event was, profiled, a tenth of the server's CPU per exec."""

    def decorate(cls: T) -> T:
        cls._log = logger  # type: ignore[attr-defined]
        return cls

    return decorate


def confirm_channel(conn: connection.SSHConnection, channel: SSHChannel, senderChannel: int, data: bytes) -> None:
    """Confirm a channel the client opened, once it is ready: what Conch's
    C{SSHConnection.ssh_CHANNEL_OPEN} does after C{getChannel} returns.

    Relies on Conch's bookkeeping of channels (public names, but no API):
    C{localChannelID} numbers them; C{channels}, C{channelsToRemoteChannel}
    and C{localToRemoteChannel} map them; the channel has C{conn}, C{id},
    C{localWindowSize}, C{localMaxPacket} and C{specificData}, and is told
    C{channelOpen(data)} after the confirmation goes out.

    No public API: C{ssh_CHANNEL_OPEN} calls C{getChannel} synchronously and
    confirms at once, and a channel into a pod is ready only once the node
    has answered (L{podshell.gateway.ssh.connection})."""
    assert conn.transport is not None
    channel.conn = conn
    local = conn.localChannelID
    conn.localChannelID += 1
    channel.id = local  # type: ignore[assignment]
    conn.channels[local] = channel
    conn.channelsToRemoteChannel[channel] = senderChannel
    conn.localToRemoteChannel[local] = senderChannel
    confirm = struct.pack(">4L", senderChannel, local, channel.localWindowSize, channel.localMaxPacket)
    conn.transport.sendPacket(connection.MSG_CHANNEL_OPEN_CONFIRMATION, confirm + channel.specificData)
    channel.channelOpen(data)
