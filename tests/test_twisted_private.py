"""The private Twisted names behind podshell/core/twisted_private.py still
exist and still do what podshell relies on.  Fast, no root: run them first
after raising the Twisted cap in setup.cfg; a failure names the private name
and the Twisted version that changed it."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import struct
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.conch import error
from twisted.conch.ssh import channel, common, connection, factory, service, transport, userauth
from twisted.copyright import version as VERSION
from twisted.internet import defer, process, reactor
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer

import podshell
from podshell.core import twisted_private as fence
from podshell.gateway.nodes import _QuietEndpoints


def changed(name: str, what: str) -> str:
    return f"Twisted {VERSION} changed {name}: {what} (podshell/core/twisted_private.py relies on it)"


def parameters(function: Any) -> list[str]:
    return [str(p) for p in inspect.signature(function).parameters.values()]


# Processes.


@pytest.mark.parametrize(
    ("owner", "name", "expected"),
    [
        (
            process._BaseProcess,
            "_fork",
            ["self", "path", "uid", "gid", "executable", "args", "environment", "**kwargs"],
        ),
        (process._BaseProcess, "_execChild", ["self", "path", "uid", "gid", "executable", "args", "environment"]),
        (process._BaseProcess, "_setupChild", ["self", "*args", "**kwargs"]),
        (process.Process, "_setupChild", ["self", "fdmap"]),
        (process.PTYProcess, "_setupChild", ["self", "masterfd", "slavefd"]),
        (
            process._BaseProcess,
            "_trySpawnInsteadOfFork",
            ["self", "path", "uid", "gid", "executable", "args", "environment", "kwargs"],
        ),
    ],
)
def test_the_fork_hooks_are_there_with_their_signatures(owner, name, expected):
    assert name in fence.PRIVATE_NAMES
    function = getattr(owner, name, None)
    assert function is not None, changed(f"{owner.__name__}.{name}", "it is gone")
    assert parameters(function) == expected, changed(f"{owner.__name__}.{name}", f"it takes {parameters(function)}")


def test_the_fork_calls_the_hooks_in_order():
    """_fork runs _setupChild then _execChild in the child; that order, and
    how they are called, is in its source (the child cannot tell us)."""
    source = inspect.getsource(process._BaseProcess._fork)
    for needle in (
        "self._trySpawnInsteadOfFork(",
        "os.fork()",
        "self._setupChild(**kwargs)",
        "self._execChild(path, uid, gid, executable, args, environment)",
    ):
        assert needle in source, changed("_BaseProcess._fork", f"it no longer calls {needle}")
    assert source.index("self._setupChild(") < source.index("self._execChild("), changed("_fork", "the hooks' order")
    init = inspect.getsource(process.Process.__init__) + inspect.getsource(process.PTYProcess.__init__)
    assert init.count("self._fork(") == 2, changed("Process/PTYProcess.__init__", "they no longer call _fork")


class Collect(ProcessProtocol):
    def __init__(self) -> None:
        self.chunks: list[tuple[int, bytes]] = []
        self.ended: defer.Deferred[None] = defer.Deferred()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        self.chunks.append((childFD, data))

    def processEnded(self, reason: object) -> None:
        self.ended.callback(None)

    def output(self, fd: int = 1) -> bytes:
        return b"".join(data for n, data in self.chunks if n == fd)


class Hooked(fence.ForkHooks, process.Process):
    """Told to run /bin/false, it runs Python instead; what the child saw
    comes back on its stdout."""

    def around_fork(self, fork):
        self.forked = ["before"]
        super().around_fork(fork)
        self.forked.append("after")

    def in_child(self) -> None:
        self.seen = "in_child"  # the child's memory; exec_child prints it

    def exec_child(self, path, uid, gid, executable, args, environment) -> None:
        code = f"import sys; sys.stdout.write({self.seen!r} + ':' + {executable!r}); sys.stderr.write('e' * 100000)"
        os.execv(sys.executable, [sys.executable, "-c", code])


@pytest_twisted.ensureDeferred
async def test_the_hooks_run_in_the_child_and_output_comes_in_big_chunks():
    """If Twisted posix_spawned instead (_trySpawnInsteadOfFork ignored), or
    skipped a hook, /bin/false would run: no output, status 1."""
    proto = Collect()
    child = Hooked(reactor, "/bin/false", ["/bin/false"], {}, None, proto)
    assert child.forked == ["before", "after"], changed("_fork", "around_fork did not run around it")
    for fd in (1, 2):
        reader = child.pipes.get(fd)
        assert isinstance(getattr(reader, "fd", None), int), changed("Process.pipes", f"no reader with .fd for {fd}")
    fence.read_in_chunks_of(65536, child)
    await proto.ended
    assert proto.output(1) == b"in_child:/bin/false", changed(
        "_trySpawnInsteadOfFork/_setupChild/_execChild", f"the child said {proto.output(1)!r}"
    )
    assert proto.output(2) == b"e" * 100000, changed("ProcessReader.doRead", "output lost")
    biggest = max(len(data) for fd, data in proto.chunks if fd == 2)
    assert biggest > 8192, changed("ProcessReader.doRead", "the bigger reads are not used (replaced doRead ignored)")


@pytest_twisted.ensureDeferred
async def test_a_terminal_is_read_in_big_chunks_too():
    proto = Collect()
    code = "import sys; sys.stdout.write('t' * 50000)"
    child = process.PTYProcess(reactor, sys.executable, [sys.executable, "-c", code], {}, None, proto, usePTY=True)
    assert isinstance(child.fd, int) and child.proto is proto, changed("PTYProcess", "no .fd or .proto")
    fence.read_in_chunks_of(65536, child)
    assert child.doRead.__qualname__.startswith("_read_more"), changed("PTYProcess.doRead", "not replaceable")
    await proto.ended
    assert proto.output(1).replace(b"\r\n", b"\n") == b"t" * 50000, changed("PTYProcess.doRead", "output lost")


# SSH: packets held during a key exchange.


def _transport(cls: type[transport.SSHServerTransport] = transport.SSHServerTransport) -> transport.SSHServerTransport:
    t = cls()
    t.transport = StringTransport()
    t.outgoingCompressionType = t.incomingCompressionType = b"none"
    t.currentEncryptions = t.nextEncryptions = transport.SSHCiphers(b"none", b"none", b"none", b"none")
    t.currentEncryptions.setKeys(b"", b"", b"", b"", b"", b"")
    return t


def test_the_key_exchange_state_names_are_there():
    for name in ("_keyExchangeState", "_KEY_EXCHANGE_NONE", "_allowedKeyExchangeMessageType", "_blockedByKeyExchange"):
        assert name in fence.PRIVATE_NAMES
    t = _transport()
    for name in ("_keyExchangeState", "_KEY_EXCHANGE_NONE", "_blockedByKeyExchange", "_newKeys"):
        assert hasattr(t, name), changed(f"SSHTransportBase.{name}", "it is gone")
    allowed = transport.SSHTransportBase._allowedKeyExchangeMessageType
    assert parameters(allowed) == ["self", "messageType"], changed("_allowedKeyExchangeMessageType", "its signature")
    assert t._keyExchangeState == t._KEY_EXCHANGE_NONE, changed("_keyExchangeState", "not NONE outside a key exchange")


@pytest.mark.parametrize(
    "messageType",
    [
        transport.MSG_KEXINIT,
        transport.MSG_NEWKEYS,
        transport.MSG_KEXDH_INIT,
        transport.MSG_IGNORE,
        transport.MSG_DISCONNECT,
        transport.MSG_SERVICE_REQUEST,
        transport.MSG_SERVICE_ACCEPT,
        connection.MSG_CHANNEL_DATA,
        connection.MSG_GLOBAL_REQUEST,
    ],
)
def test_packets_are_held_as_conch_itself_holds_them_and_sent_after_new_keys(messageType):
    conchs, ours = _transport(), _transport()
    for t in (conchs, ours):
        assert not fence.held_for_key_exchange(t, messageType, b"before"), changed("_keyExchangeState", "held")
        t.sendKexInit()  # a key exchange begins
        t.transport.clear()
    conchs.sendPacket(messageType, b"payload")
    conch_held = conchs.transport.value() == b""
    assert fence.held_for_key_exchange(ours, messageType, b"payload") == conch_held, changed(
        "_allowedKeyExchangeMessageType", f"Conch {'holds' if conch_held else 'sends'} message {messageType}"
    )
    assert ours._blockedByKeyExchange == conchs._blockedByKeyExchange, changed("_blockedByKeyExchange", "its entries")
    for t in (conchs, ours):
        t._newKeys()
    if conch_held:
        assert conchs.transport.value() != b"", changed("_newKeys", "held packets not sent")
        assert len(ours.transport.value()) == len(conchs.transport.value()), changed("_newKeys", "ours not sent")


# SSH: Conch's class loggers.


class Events(Logger):
    def __init__(self) -> None:
        super().__init__(namespace="test")
        self.events: list[str] = []

    def __get__(self, instance: object, owner: type | None = None) -> Events:
        return self

    def emit(self, level, format=None, **kwargs) -> None:
        self.events.append(format or "")


@pytest.mark.parametrize(
    "owner",
    [
        transport.SSHTransportBase,
        service.SSHService,
        userauth.SSHUserAuthServer,
        connection.SSHConnection,
        channel.SSHChannel,
        factory.SSHFactory,
    ],
)
def test_conch_classes_log_through_their_class_logger(owner):
    assert "_log" in fence.PRIVATE_NAMES
    assert isinstance(owner.__dict__.get("_log"), Logger), changed(f"{owner.__name__}._log", "no class Logger")
    assert "self._log." in inspect.getsource(inspect.getmodule(owner)), changed(f"{owner.__name__}", "no self._log")


def test_a_logger_put_in_is_the_one_conch_uses():
    events = Events()

    @fence.log_through(events)
    class Transport(transport.SSHServerTransport):
        pass

    @fence.log_through(events)
    class Connection(connection.SSHConnection):
        pass

    @fence.log_through(events)
    class Chan(channel.SSHChannel):
        pass

    @fence.log_through(events)
    class Factory(factory.SSHFactory):
        protocol = Transport
        privateKeys: dict = {}
        primes = None

    t = _transport(Transport)
    t.receiveError(transport.DISCONNECT_PROTOCOL_ERROR, b"bye")
    c = Connection()
    c.transport = t
    c.packetReceived(250, b"")  # no such message
    Factory().buildProtocol(None)  # no moduli: says so
    Chan().eofReceived()
    assert len(events.events) == 4, changed("_log", f"Conch logged {events.events} through ours")


# SSH: a channel confirmed later, as Conch confirms it at once.


class Packets:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []

    def sendPacket(self, messageType: int, payload: bytes) -> None:
        self.sent.append((messageType, payload))


class Channel(channel.SSHChannel):
    name = b"session"

    def channelOpen(self, data: bytes) -> None:
        self.opened = data


def _snapshot(obj: object, *objects: object) -> dict[str, object]:
    """vars(obj), with C{objects} (which differ between the two runs) named by position."""

    def name(value: object) -> object:
        for i, o in enumerate(objects):
            if value is o:
                return f"<{i}>"
        if isinstance(value, dict):
            return {name(k): name(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [name(v) for v in value]
        return value if isinstance(value, (int, str, bytes, bool, type(None))) else type(value).__name__

    return {k: name(v) for k, v in vars(obj).items()}


def test_a_channel_confirmed_later_is_as_conch_confirms_one():
    request = common.NS(b"session") + struct.pack(">3L", 7, 65536, 32768) + b"extra"

    def opened(via_conch: bool) -> tuple[connection.SSHConnection, Channel, Packets]:
        class Connection(connection.SSHConnection):
            def getChannel(self, *args: object) -> Channel:
                return ch

        conn = Connection()
        conn.transport = packets = Packets()  # type: ignore[assignment]
        conn.localChannelID = 3
        ch = Channel(localWindow=1 << 21, localMaxPacket=1 << 15, remoteWindow=65536, remoteMaxPacket=32768, conn=conn)
        if via_conch:
            conn.ssh_CHANNEL_OPEN(request)
        else:
            ch.conn = None
            fence.confirm_channel(conn, ch, 7, b"extra")
        return conn, ch, packets

    conn1, ch1, sent1 = opened(via_conch=True)
    conn2, ch2, sent2 = opened(via_conch=False)
    assert sent2.sent == sent1.sent, changed("ssh_CHANNEL_OPEN", f"it confirms with {sent1.sent}")
    assert _snapshot(conn2, ch2, sent2) == _snapshot(conn1, ch1, sent1), changed("ssh_CHANNEL_OPEN", "its bookkeeping")
    assert _snapshot(ch2, conn2) == _snapshot(ch1, conn1), changed("ssh_CHANNEL_OPEN", "what it sets on the channel")
    assert ch2.opened == ch1.opened == b"extra"


# The public API used instead of private names, where one does the job.


def test_an_auth_method_may_answer_for_itself():
    """PodUserAuth.tryAuth fails with IgnoreAuthentication once it has
    disconnected a denied user: Conch must then neither answer nor count."""
    source = inspect.getsource(userauth.SSHUserAuthServer)
    assert "self.tryAuth(method, user, rest)" in source, changed("ssh_USERAUTH_REQUEST", "no tryAuth")
    auth = userauth.SSHUserAuthServer()
    auth.transport = Packets()  # type: ignore[assignment]
    auth.method = b"publickey"
    auth.loginAttempts = 0
    auth._ebBadAuth(Failure(error.IgnoreAuthentication()))
    assert auth.transport.sent == [] and auth.loginAttempts == 0, changed("IgnoreAuthentication", "it is answered")


def test_the_node_agents_pool_connects_quietly():
    """The pod listing's connections: Twisted's HTTP client factory made
    quiet through Factory.noisy, not by replacing the pool's private factory."""
    seen: list[object] = []

    @implementer(IStreamClientEndpoint)
    class Endpoint:
        def connect(self, protocolFactory: object) -> defer.Deferred:
            seen.append(protocolFactory)
            return defer.Deferred()

    class Node:
        def endpointForURI(self, uri: object) -> Endpoint:
            return Endpoint()

    clock = MemoryReactorClock()
    agent = Agent.usingEndpointFactory(clock, _QuietEndpoints(Node()), HTTPConnectionPool(clock))
    agent.request(b"GET", b"https://node-1:10250/api/v1/pods")
    assert len(seen) == 1 and isinstance(seen[0], Factory) and not seen[0].noisy


# The fence is complete.


def _podshell_classes() -> list[type]:
    found = []
    for info in pkgutil.walk_packages(podshell.__path__, "podshell."):
        module = importlib.import_module(info.name)
        found += [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__]
    return found


def test_every_private_twisted_name_a_podshell_class_defines_is_fenced():
    """A method or class attribute named _x in a subclass of a Twisted class,
    where a Twisted base has _x too, overrides Twisted's private name."""
    unfenced = []
    for cls in _podshell_classes():
        bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] == "twisted"]
        for name in vars(cls):
            private = name.startswith("_") and not name.startswith("__") and name not in fence.PRIVATE_NAMES
            if private and any(hasattr(b, name) for b in bases):
                unfenced.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
    assert not unfenced, f"overrides of private Twisted names outside the fence: {unfenced}"
