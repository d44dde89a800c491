"""
The relay's TLS ends: L{TlsClientSide} terminates TLS for a client
(C{protocol = "tls"}), L{TlsBackendSide} with L{BackendTLSFactory} speaks
TLS to a backend (C{[backends_tls]}).

Both wait for their handshake: a client is routed, and a backend joined to
its client, only once theirs is done.  So a client's failed handshake never
reaches a backend (it counts in the server's C{tls_failures}), and a
backend's failed handshake (an unknown CA, a certificate for another name)
is a failed connect: it counts in the backend's C{refused_connections} and
the next backend is tried.

TLS connections have no half-close here (Twisted's TLS transport reports
the peer's C{close_notify} as the end of the connection): an end of stream
relayed to a TLS end closes it with C{close_notify} once everything before
it was sent.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.interfaces import IHandshakeListener, IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from balancer.proxy.finished import TLS_FAILED, TLS_TIMEOUT
from balancer.proxy.tcp import Attempt, BackendSide, ClientSide, IdleTimer, Relay
from balancer.proxy.tls import ResumingCreator

log = Logger()

DEFAULT_HANDSHAKE_TIMEOUT = 30.0
"""Seconds a client has to finish its TLS handshake when no C{client_idle_timeout} is set."""


def _finish_tls(transport: Any) -> None:
    """
    Flush a TLS transport, send C{close_notify} and close.

    Reading resumes first: a paused transport would never read the peer's
    C{close_notify} (or its end of connection) that completes the close.
    """
    transport.unregisterProducer()
    transport.resumeProducing()
    transport.loseConnection()


class _TlsEnd:
    """
    What both TLS ends share: a handshake deadline, and closing with
    C{close_notify} (TLS has no half-close here).
    """

    transport: Any
    _deadline: IdleTimer | None = None
    _timed_out = False

    def _start_deadline(self, clock: Any, timeout: float) -> None:
        self._deadline = IdleTimer(clock, timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._timed_out = True
        self.transport.abortConnection()

    def _stop_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def finish(self, *, half: bool) -> None:
        """Close with C{close_notify}, whether or not a half-close was asked for."""
        _finish_tls(self.transport)


@implementer(IHandshakeListener)
class TlsClientSide(_TlsEnd, ClientSide):
    """
    A client of a C{protocol = "tls"} server: admitted at once, routed once
    its handshake is done (by the server name it sent, when the server
    routes by SNI).

    A handshake that fails, or does not finish within C{client_idle_timeout}
    (else L{DEFAULT_HANDSHAKE_TIMEOUT}), closes the client and counts in
    C{tls_failures}; a client that just leaves during its handshake does not.
    """

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self._waiting = False

    def connectionMade(self) -> None:
        """Admit the client; its handshake has to finish in time."""
        if self.relay.admit():
            self._waiting = True
            server = self.relay.server
            timeout = server.config.client_idle_timeout or DEFAULT_HANDSHAKE_TIMEOUT
            self._start_deadline(server.clock, timeout)

    def handshakeCompleted(self) -> None:
        """Route the client, by the server name it sent if any."""
        self._waiting = False
        self._stop_deadline()
        name = self.transport.getHandle().get_servername()
        self.relay.route(name.decode("ascii", "replace") if name else None)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Count a handshake that failed or timed out, then end as any client does."""
        self._stop_deadline()
        if self._waiting and (self._timed_out or reason.check(SSL.Error)):
            server = self.relay.server
            server.counters.tls_failures += 1
            self.relay.ends_because(TLS_TIMEOUT if self._timed_out else TLS_FAILED)
            log.info(
                "{server}: TLS handshake with {client} failed: {why}",
                server=server.name,
                client=self.relay.client_address.host,
                why="timed out" if self._timed_out else reason.getErrorMessage(),
            )
        super().connectionLost(reason)


@implementer(IHandshakeListener)
class TlsBackendSide(_TlsEnd, BackendSide):
    """
    A connection to a backend over TLS: joined to its client once the
    handshake is done, which has the server's connect timeout to finish.

    @ivar sessions: where the backend's TLS session is remembered for the
        next connection to it (once the handshake is done, and again at the
        end), if anywhere.
    """

    def __init__(self, relay: Relay) -> None:
        super().__init__(relay)
        self._joined = False
        self.sessions: ResumingCreator | None = None

    def tcp_transport(self) -> Any:
        """
        The TCP transport under TLS: a PROXY header written there goes in
        clear, before the ClientHello (the TLS transport tells its protocol
        of the connection before it starts its handshake).
        """
        return self.transport.transport

    def ready(self) -> None:
        """TCP is up (a PROXY header, if any, is already sent); the handshake has the connect timeout to finish."""
        server = self.relay.server
        self._start_deadline(server.clock, server.connect_timeout)

    def handshakeCompleted(self) -> None:
        """Join the client, unless the relay gave up on this attempt meanwhile."""
        self._stop_deadline()
        if self.factory.relay is None:
            self.transport.abortConnection()
            return
        self._joined = True
        self._remember_session()
        self.relay.backend_connected(self)

    def _remember_session(self) -> None:
        if self.sessions is not None:
            self.sessions.remember(self.transport.getHandle())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """Before the handshake finished, this is a failed connect; after, the end of the relay's backend."""
        self._stop_deadline()
        if self._joined:
            self._remember_session()
            super().connectionLost(reason)
            return
        attempt = self.factory
        if attempt.relay is not None:
            if self._timed_out:
                reason = Failure(TimeoutError("TLS handshake timed out"))
            attempt.relay.connect_failed(attempt, reason)


class RelayTLSFactory(TLSMemoryBIOFactory):
    """
    TLS around a relay's side, without Twisted's aggregation of small
    writes (C{BufferingTLSTransport}, its default): a relay writes each read
    of the other side as one chunk, which becomes TLS records at once and
    goes to the TCP transport (itself writing once per turn of the
    reactor), instead of waiting for a timer of its own to the next turn.
    """

    protocol = TLSMemoryBIOProtocol

    def __init__(self, creator: Any, isClient: bool, wrappedFactory: Any, clock: Any = None) -> None:
        """
        As Twisted's; C{creator} is kept as L{creator} (for a data path
        that terminates TLS on its own, L{balancer.proxy.tls_path}).
        """
        super().__init__(creator, isClient, wrappedFactory, clock)
        self.creator = creator


class BackendTLSFactory(RelayTLSFactory):
    """
    TLS around one connect attempt (an L{Attempt} building a L{TlsBackendSide}).

    An attempt the relay gave up on builds no protocol, so the connection
    is closed at once, as for plain TCP.
    """

    wrappedFactory: Attempt

    def __init__(self, creator: IOpenSSLClientConnectionCreator, attempt: Attempt, clock: Any) -> None:
        super().__init__(creator, True, attempt, clock)
        self.sessions = creator if isinstance(creator, ResumingCreator) else None

    def buildProtocol(self, addr: Any) -> TLSMemoryBIOProtocol | None:  # type: ignore[override]
        """TLS around the attempt's L{TlsBackendSide} (none if the relay gave up on it)."""
        side = self.wrappedFactory.build(TlsBackendSide)
        if side is None:
            return None
        assert isinstance(side, TlsBackendSide)
        side.sessions = self.sessions
        return self.protocol(self, side)
