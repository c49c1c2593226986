"""The SSH server: transport, public-key authentication, realm, factory.

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
from twisted.internet.interfaces import IAddress
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from podshell import __version__
from podshell.auth.gate import Denied, Gate
from podshell.auth.identity import Directory, Identity
from podshell.core.addresses import ack_now, host_port, set_no_delay
from podshell.core.metrics import AuthMethod, FrontDoor, Metrics
from podshell.core.target import InvalidTarget, split_run_as
from podshell.core.transports import StreamTransport
from podshell.core.twisted_private import log_through
from podshell.gateway.routing import Cluster
from podshell.gateway.ssh import hostkeys
from podshell.gateway.ssh.avatar import PodUser
from podshell.gateway.ssh.ciphers import GCM_KEY_SIZES, Ciphers, GCMTransportMixin
from podshell.gateway.ssh.connection import PodConnection
from podshell.gateway.ssh.logs import conch_logger

ACCEPT_ENV = ["LANG", "LC_*", "TERM"]


@log_through(conch_logger)
class PodServerTransport(GCMTransportMixin, transport.SSHServerTransport):
    """Conch's transport with AES-GCM, without the legacy algorithms (CBC,
    3DES, MD5, SHA-1).  The ciphers offered are the configuration's."""

    ourVersionString = f"SSH-2.0-podshell_{__version__}".encode()
    supportedCiphers = list(GCM_KEY_SIZES)
    supportedMACs = [m for m in transport.SSHServerTransport.supportedMACs if m.startswith(b"hmac-sha2-")]
    supportedKeyExchanges = [k for k in transport.SSHServerTransport.supportedKeyExchanges if not k.endswith(b"sha1")]

    def ssh_KEXINIT(self, packet: bytes) -> None:
        super().ssh_KEXINIT(packet)
        if type(getattr(self, "nextEncryptions", None)) is transport.SSHCiphers:
            self.nextEncryptions.__class__ = Ciphers  # the same state, plus GCM and faster MACs

    def connectionMade(self) -> None:
        # As sshd does: small packets (keystrokes, a command's exit) go out at
        # once instead of waiting on Nagle for the peer's delayed ACK (~40 ms).
        set_no_delay(self.transport)
        super().connectionMade()

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

    def __init__(self, portal: Portal, keys: list[Key], ciphers: list[bytes] | None = None) -> None:
        self.portal = portal
        self.privateKeys = {k.sshType(): k for k in keys}
        self.publicKeys = {k.sshType(): k.public() for k in keys}
        self.ciphers = ciphers or list(GCM_KEY_SIZES)

    def buildProtocol(self, addr: IAddress | None) -> transport.SSHServerTransport:
        t = super().buildProtocol(addr)
        t.supportedCiphers = self.ciphers
        return t

    def getPrimes(self) -> None:
        """No DH group exchange: curve25519 and ML-KEM are offered instead."""
        return None


def make_factory(
    accept_env: Sequence[str],
    ciphers: Sequence[str],
    state_dir: Path,
    directory: Directory,
    gate: Gate,
    cluster: Cluster,
    metrics: Metrics | None = None,
) -> PodSSHFactory:
    portal = Portal(PodRealm(gate, cluster, ACCEPT_ENV + list(accept_env)), [KeyChecker(directory, metrics)])
    return PodSSHFactory(portal, hostkeys.load_or_create(state_dir), [c.encode() for c in ciphers])
