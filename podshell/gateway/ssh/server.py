"""The SSH server: transport, public-key authentication, realm, factory.

Until its user is authenticated a connection is a I{startup}
(L{podshell.gateway.ssh.startups}): the factory refuses one over the limits
with one line saying why, and the transport drops one that has not logged in
within the login grace time.

Authentication is by public key only.  Once a key is proven, the user name is
checked as a target; a bad name or a pod the identity may not use ends the
connection with one line saying why (the SSH disconnect message), after the
key was proven so that nobody learns about pods without a valid key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from twisted.conch.error import IgnoreAuthentication, ValidPublicKey
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import transport, userauth
from twisted.conch.ssh.factory import SSHFactory
from twisted.conch.ssh.keys import Key
from twisted.conch.ssh.service import SSHService
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import ICredentials, ISSHPrivateKey
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from podshell import __version__
from podshell.auth.gate import Denied, Gate
from podshell.auth.identity import Directory, Identity
from podshell.core.addresses import ack_now, host_port, set_no_delay
from podshell.core.metrics import AuthMethod, FrontDoor, Metrics, SSHLimit
from podshell.core.target import InvalidTarget, split_run_as
from podshell.core.transports import StreamTransport
from podshell.core.twisted_private import log_through
from podshell.gateway.routing import Cluster
from podshell.gateway.ssh import hostkeys
from podshell.gateway.ssh.avatar import PodUser
from podshell.gateway.ssh.ciphers import AEAD_CIPHERS, AEADTransportMixin, Ciphers
from podshell.gateway.ssh.connection import ConnectionLimits, PodConnection
from podshell.gateway.ssh.logs import conch_logger
from podshell.gateway.ssh.startups import REFUSAL, MaxStartups, Startups, Throttled, Ticket
from podshell.gateway.ssh.strictkex import StrictKexMixin

ACCEPT_ENV = ["LANG", "LC_*", "TERM"]

log = Logger()

# Seconds a connection dropped at its grace time has to take its last packet.
ABORT_AFTER = 5.0


@dataclass(frozen=True)
class StartupLimits:
    """The configuration's C{max_startups}, C{per_source_max_startups} (None:
    no limit) and C{login_grace_time} (seconds)."""

    max_startups: MaxStartups
    per_source: int | None
    grace_time: float


@log_through(conch_logger)
class PodServerTransport(StrictKexMixin, AEADTransportMixin, transport.SSHServerTransport):
    """Conch's transport with strict key exchange, chacha20-poly1305 and
    AES-GCM, without the legacy algorithms (CBC, 3DES, MD5, SHA-1).  The
    ciphers offered are the configuration's."""

    ourVersionString = f"SSH-2.0-podshell_{__version__}".encode()
    supportedCiphers = list(AEAD_CIPHERS)
    supportedMACs = [m for m in transport.SSHServerTransport.supportedMACs if m.startswith(b"hmac-sha2-")]
    supportedKeyExchanges = [k for k in transport.SSHServerTransport.supportedKeyExchanges if not k.endswith(b"sha1")]

    def ssh_KEXINIT(self, packet: bytes) -> None:
        super().ssh_KEXINIT(packet)
        if type(getattr(self, "nextEncryptions", None)) is transport.SSHCiphers:
            self.nextEncryptions.__class__ = Ciphers  # the same state, plus the AEADs and faster MACs

    # Set by the factory: this connection's place among the unauthenticated
    # ones, and the time it has to log in.
    startup: Ticket | None = None
    graceTime: float | None = None
    clock: IReactorTime | None = None
    _grace: IDelayedCall | None = None

    def connectionMade(self) -> None:
        # As sshd does: small packets (keystrokes, a command's exit) go out at
        # once instead of waiting on Nagle for the peer's delayed ACK (~40 ms).
        set_no_delay(self.transport)
        if self.graceTime is not None and self.clock is not None:
            self._grace = self.clock.callLater(self.graceTime, self._graceOver)
        super().connectionMade()

    def _graceOver(self) -> None:
        self._grace = None
        self._authenticated()
        cast(PodSSHFactory, self.factory).limitHit(SSHLimit.GRACE_TIME, self._peerHost())
        self.sendDisconnect(
            transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE,
            f"podshell: not logged in within the login grace time ({self.graceTime:g} s)".encode(),
        )
        # A client that reads nothing would keep a closing connection (and its
        # socket) for as long as what was written to it waits: not for long.
        if self.clock is not None:
            self._grace = self.clock.callLater(ABORT_AFTER, self._abort)

    def _abort(self) -> None:
        self._grace = None
        abort = getattr(self.transport, "abortConnection", None)
        if abort is not None:
            abort()

    def _peerHost(self) -> str:
        return self.startup.source if self.startup is not None else "unknown"

    def _authenticated(self) -> None:
        """No longer a startup: logged in, gone, or dropped."""
        if self._grace is not None:
            self._grace.cancel()
            self._grace = None
        if self.startup is not None:
            self.startup.release()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._authenticated()
        super().connectionLost(reason)

    # Until the user is authenticated the client runs with Nagle on, and each of
    # its handshake packets would wait for our delayed ACK of the one before.
    _ackAtOnce = True

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self._ackAtOnce and self.transport is not None:
            ack_now(self.transport)

    def setService(self, service: SSHService) -> None:
        if isinstance(service, PodConnection):
            self._ackAtOnce = False  # logged in
            self._authenticated()
        super().setService(service)

    def sendDisconnect(self, reason: int, desc: bytes) -> None:
        # A TCP transport whose streaming producer is paused never finishes
        # closing: let the connection service's registration go first.
        if self.transport is not None and getattr(self.transport, "producer", None) is not None:
            cast(StreamTransport, self.transport).unregisterProducer()
        super().sendDisconnect(reason, desc)

    def receiveError(self, reasonCode: int, description: bytes) -> None:
        """A client saying goodbye (what ``ssh`` does after every command) is no error."""
        if reasonCode != transport.DISCONNECT_BY_APPLICATION:
            super().receiveError(reasonCode, description)


@dataclass(frozen=True)
class KeyLogin:
    """A proven key and the user name (the target) it was offered for."""

    identity: Identity
    target: str


class _PeerPortal:
    """Passes the client's address to the realm as the login's mind."""

    def __init__(self, portal: Portal, peer: str) -> None:
        self.portal = portal
        self.peer = peer

    def login(self, credentials: ICredentials, mind: object, *interfaces: type[Interface]) -> Deferred:
        return self.portal.login(credentials, self.peer, *interfaces)


@log_through(conch_logger)
class PodUserAuth(userauth.SSHUserAuthServer):
    loginTimeout = 60
    attemptsBeforeDisconnect = 6

    def serviceStarted(self) -> None:
        # The transport's grace time, from the accept, comes first; Conch's
        # own timer, from here, is only a backstop.
        grace = cast(PodServerTransport, self.transport).graceTime
        if grace is not None:
            self.loginTimeout = int(grace) + 1
        super().serviceStarted()
        self.supportedAuthentications = [b"publickey"]
        assert self.transport is not None and self.transport.transport is not None
        self.portal = _PeerPortal(self.portal, host_port(self.transport.transport.getPeer()))

    def tryAuth(self, kind: bytes, user: bytes, data: bytes) -> Deferred:
        return super().tryAuth(kind, user, data).addErrback(self.refuseDenied)

    def refuseDenied(self, reason: Failure) -> Failure:
        """A proven key for a name or pod its owner may not use: the
        connection ends with one line saying why, and Conch, told
        L{IgnoreAuthentication}, neither answers nor counts an attempt."""
        reason.trap(Denied)
        assert self.transport is not None
        self.transport.sendDisconnect(
            transport.DISCONNECT_NO_MORE_AUTH_METHODS_AVAILABLE, f"podshell: {reason.value}".encode()
        )
        return Failure(IgnoreAuthentication())


@implementer(ICredentialsChecker)
class KeyChecker:
    credentialInterfaces = (ISSHPrivateKey,)

    def __init__(self, directory: Directory, metrics: Metrics | None = None) -> None:
        self.directory = directory
        self.metrics = metrics

    def _refused(self, why: str) -> Deferred:
        if self.metrics is not None:
            self.metrics.authentication_failed(FrontDoor.SSH, AuthMethod.PUBLICKEY)
        return fail(UnauthorizedLogin(why))

    def requestAvatarId(self, credentials) -> Deferred:
        identity = self.directory.by_key(credentials.blob)
        if identity is None:
            return self._refused("unknown key")
        if credentials.signature is None:
            return fail(ValidPublicKey())  # the key would do: ask for a signature
        try:
            valid = Key.fromString(credentials.blob).verify(credentials.signature, credentials.sigData)
        except Exception:  # any malformed signature is just a bad one
            valid = False
        if not valid:
            return self._refused("bad signature")
        return succeed(KeyLogin(identity, credentials.username.decode(errors="replace")))


@implementer(IRealm)
class PodRealm:
    def __init__(self, gate: Gate, cluster: Cluster, accept_env: list[str]) -> None:
        self.gate = gate
        self.cluster = cluster
        self.accept_env = accept_env

    def requestAvatar(self, login: KeyLogin, peer: str, *interfaces: object) -> tuple:  # type: ignore[override]
        if IConchUser not in interfaces:
            # What twisted.cred asks of a realm that has none of the interfaces.
            raise NotImplementedError("only SSH users log in here")
        try:
            name, run_as = split_run_as(login.target)
        except InvalidTarget as e:
            raise self.gate.invalid(login.identity, login.target, peer, "ssh", e) from None
        target = self.gate.locate(login.identity, name, peer, "ssh")
        user = PodUser(login.identity, target, peer, self.gate, self.cluster, self.accept_env, run_as)
        return IConchUser, user, user.logout


@log_through(conch_logger)
class PodSSHFactory(SSHFactory):
    noisy = False
    protocol = PodServerTransport
    services = {b"ssh-userauth": PodUserAuth, b"ssh-connection": PodConnection}

    def __init__(
        self,
        portal: Portal,
        keys: list[Key],
        ciphers: list[bytes] | None = None,
        limits: StartupLimits | None = None,
        clock: IReactorTime | None = None,
        metrics: Metrics | None = None,
        connectionLimits: ConnectionLimits | None = None,
    ) -> None:
        """C{limits} and C{clock}: no limits on unauthenticated connections
        without both; C{connectionLimits}: on logged-in ones (keepalives need
        C{clock} too)."""
        self.connectionLimits = connectionLimits or ConnectionLimits()
        self.portal = portal
        self.privateKeys = {k.sshType(): k for k in keys}
        self.publicKeys = {k.sshType(): k.public() for k in keys}
        self.ciphers = ciphers or list(AEAD_CIPHERS)
        self.limits = limits
        self.clock = clock
        self.metrics = metrics
        self.startups = Startups(limits.max_startups, limits.per_source) if limits is not None else None
        now = clock.seconds if clock is not None else (lambda: 0.0)
        self._quiet = {SSHLimit.GRACE_TIME: Throttled(now), SSHLimit.MAX_STARTUPS: Throttled(now)}
        self._quiet[SSHLimit.PER_SOURCE] = self._quiet[SSHLimit.MAX_STARTUPS]
        self._quiet[SSHLimit.MAX_CHANNELS] = Throttled(now)
        self._quiet[SSHLimit.KEEPALIVE] = Throttled(now)

    def buildProtocol(self, addr: IAddress | None) -> transport.SSHServerTransport:
        ticket: Ticket | None = None
        if self.startups is not None and self.limits is not None and self.clock is not None:
            source = str(getattr(addr, "host", "local"))
            admitted = self.startups.admit(source)
            if isinstance(admitted, SSHLimit):
                self.limitHit(admitted, source)
                refusal = _Refused()
                refusal.factory = self
                return cast(transport.SSHServerTransport, refusal)
            ticket = admitted
        t = super().buildProtocol(addr)
        t.supportedCiphers = self.ciphers
        if ticket is not None:
            pod = cast(PodServerTransport, t)
            pod.startup, pod.clock = ticket, self.clock
            pod.graceTime = self.limits.grace_time if self.limits is not None else None
        return t

    def limitHit(self, limit: SSHLimit, source: str) -> None:
        """Counted every time; logged once, then at most every 10 s."""
        if self.metrics is not None:
            self.metrics.ssh_limit_hit(limit)
        count = self._quiet[limit].event()
        if not count:
            return
        if limit is SSHLimit.MAX_CHANNELS:
            log.warn(
                "SSH: refused {count} channel open(s) over max_channels ({cap}; the latest from {source})",
                count=count,
                cap=self.connectionLimits.max_channels,
                source=source,
            )
        elif limit is SSHLimit.KEEPALIVE:
            keepalive = self.connectionLimits.keepalive
            log.info(
                "SSH: dropped {count} connection(s) whose client answered no keepalive"
                " ({count_max} sent {interval:g} s apart; the latest from {source})",
                count=count,
                count_max=keepalive.count_max if keepalive else 0,
                interval=keepalive.interval if keepalive else 0,
                source=source,
            )
        elif limit is SSHLimit.GRACE_TIME:
            log.warn(
                "SSH: dropped {count} connection(s) not logged in within the login grace time"
                " ({grace:g} s; the latest from {source})",
                count=count,
                grace=self.limits.grace_time if self.limits is not None else 0,
                source=source,
            )
        else:
            assert self.startups is not None and self.limits is not None
            log.warn(
                "SSH: refused {count} connection(s) over the limits on unauthenticated ones"
                " (the latest from {source}: {limit}; now {total} unauthenticated, {mine} from it;"
                " max_startups {spec}, per_source_max_startups {per_source})",
                count=count,
                source=source,
                limit=limit.value,
                total=self.startups.total,
                mine=self.startups.by_source.get(source, 0),
                spec=_spec(self.limits.max_startups),
                per_source=self.limits.per_source if self.limits.per_source is not None else "none",
            )

    def getPrimes(self) -> None:
        """No DH group exchange: curve25519 and ML-KEM are offered instead."""
        return None


class _Refused(Protocol):
    """A connection over the limits: one line saying why, then closed.  SSH
    lets a server send lines before its version line; OpenSSH shows none of
    them, but ends with "Connection closed by remote host" at once."""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.write(REFUSAL)
        self.transport.loseConnection()


def _spec(m: MaxStartups) -> str:
    return f"{m.start}:{m.rate}:{m.full}"


def make_factory(
    accept_env: Sequence[str],
    ciphers: Sequence[str],
    state_dir: Path,
    directory: Directory,
    gate: Gate,
    cluster: Cluster,
    metrics: Metrics | None = None,
    limits: StartupLimits | None = None,
    clock: IReactorTime | None = None,
    connection_limits: ConnectionLimits | None = None,
) -> PodSSHFactory:
    portal = Portal(PodRealm(gate, cluster, ACCEPT_ENV + list(accept_env)), [KeyChecker(directory, metrics)])
    keys = hostkeys.load_or_create(state_dir)
    factory = PodSSHFactory(portal, keys, [c.encode() for c in ciphers], limits, clock, metrics, connection_limits)
    startups = factory.startups
    if metrics is not None and startups is not None:
        metrics.watch_ssh_startups(lambda: startups.total)
    return factory
