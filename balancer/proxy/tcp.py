"""
The TCP relay: one L{Relay} per accepted client, joining a L{ClientSide}
protocol (the accepted connection) to a L{BackendSide} protocol (the
connection to the chosen backend).

The relay admits its client, chooses a backend (retrying the next one when
a connect fails), counts the bytes, relays half-closes both ways, and keeps
the idle timeouts; how the bytes move is its server's data path
(L{balancer.proxy.datapath}, docs/architecture.md), chosen once per
listener: Twisted's transports, each the producer of the other, or the
relay engine splicing socket to socket in the kernel.  The same protocols,
counting and endings are in charge on both.

The features a server may add (TLS at either end, reading the SNI before
routing, a PROXY protocol header, access rules) are chosen once per
connection, by the classes of its two sides and by what the server
computes when the client is routed; the relaying of bytes is the same for
all of them.
"""

from __future__ import annotations

import itertools
import socket
import struct
from typing import TYPE_CHECKING, Any, Callable

from twisted.internet.error import ConnectionDone, TCPTimedOutError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from balancer.proxy.finished import (
    BACKEND_CLOSED,
    BACKEND_IDLE,
    BACKEND_RESET,
    CLIENT_CLOSED,
    CLIENT_IDLE,
    CLIENT_RESET,
    CLOSED_BY_BALANCER,
    CONNECT_FAILED,
    CONNECT_TIMEOUT,
    NO_BACKEND,
    SNI_REJECTED,
    FinishedConnection,
    address_text,
)
from balancer.proxy.listener import IListener

if TYPE_CHECKING:
    from balancer.backends import Backend
    from balancer.stats import Traffic

log = Logger()
_relay_ids = itertools.count(1)
# SO_LINGER on, for 0 s: closing the socket resets the connection.
_LINGER_RESET = struct.pack("ii", 1, 0)


def reset_connection(transport: Any) -> None:
    """
    Reset C{transport}'s connection: its peer gets an RST, not an end of
    stream, and what was not sent yet is dropped.  For a transport that
    wraps another (TLS), the socket is the innermost transport's.
    """
    inner = transport
    while inner is not None:
        handle = inner.getHandle() if hasattr(inner, "getHandle") else None
        if isinstance(handle, socket.SocketType):
            try:
                handle.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            except OSError:
                pass  # already closed or reset
            break
        inner = getattr(inner, "transport", None)
    transport.abortConnection()


class IdleTimer:
    """
    Calls C{on_idle} once no activity was recorded for C{timeout} seconds.

    Activity is recorded with L{touch}, which only stores a timestamp, so the
    cost per relayed chunk is one clock read; the timer reschedules itself.
    """

    def __init__(self, clock: IReactorTime, timeout: float, on_idle: Callable[[], None]) -> None:
        self._clock = clock
        self._timeout = timeout
        self._on_idle = on_idle
        self.last = clock.seconds()
        self._call: IDelayedCall | None = clock.callLater(timeout, self._check)

    def touch(self) -> None:
        """Record activity now."""
        self.last = self._clock.seconds()

    def cancel(self) -> None:
        """Stop watching."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _check(self) -> None:
        idle = self._clock.seconds() - self.last
        if idle >= self._timeout:
            self._call = None
            self._on_idle()
        else:
            self._call = self._clock.callLater(self._timeout - idle, self._check)


@implementer(IHalfCloseableProtocol)
class _Side(Protocol):
    """
    One end of a relay; tracks its half-closed directions.

    @ivar transport: its connection: a TCP transport (an C{ITCPTransport}
        that is also a push producer and a consumer), a TLS transport around
        one, or the relay engine's C{SplicedTransport}.  No one Twisted
        interface names all that a relay uses of it, hence C{Any}.
    """

    transport: Any

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.read_closed = False
        self.write_closed = False
        self.lost = False

    def finish(self, *, half: bool) -> None:
        """
        Flush, then close this end (or only its write side, if C{half}).

        Its transport's producer is unregistered first: the peer it stood
        for has nothing more to send, and a transport with a paused producer
        would otherwise wait for that producer forever instead of closing.
        """
        transport = self.transport
        transport.unregisterProducer()
        if half:
            transport.loseWriteConnection()
        else:
            transport.loseConnection()

    def readConnectionLost(self) -> None:
        """The peer shut down its write side: pass the end-of-stream on."""
        self.read_closed = True
        self.relay.read_closed(self)

    def writeConnectionLost(self) -> None:
        """Our write side is shut; with both directions done, close."""
        self.write_closed = True
        if self.read_closed:
            self.finish(half=False)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """
        Tell the relay this end is gone, and whether in order or by a reset
        (or another error); only once (the relay may be over, and forgotten, after).
        """
        if self.lost:
            return
        self.lost = True
        self.relay.side_lost(self, reset=reason is not None and not isinstance(reason.value, ConnectionDone))


class ClientSide(_Side):
    """The accepted client connection of a relay."""

    def connectionMade(self) -> None:
        """A client arrived: admit it and route it to a backend at once."""
        if self.relay.admit():
            self.relay.route(None)

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the client go to the backend."""
        self.relay.from_client(data)


class BackendSide(_Side):
    """The connection from the balancer to the chosen backend."""

    factory: Attempt

    def connectionMade(self) -> None:
        """
        The backend accepted: the PROXY header, if any, goes first, on the
        TCP connection itself (the only place it is written); then the
        connection is L{ready}.
        """
        header = self.factory.header
        if header:
            self.tcp_transport().write(header)
        self.ready()

    def tcp_transport(self) -> Any:
        """The transport of the TCP connection (this side's own)."""
        return self.transport

    def ready(self) -> None:
        """The connection is up: start relaying."""
        self.relay.backend_connected(self)

    def dataReceived(self, data: bytes) -> None:
        """Bytes from the backend go to the client."""
        self.relay.from_backend(data)


class Attempt(ClientFactory):
    """
    One attempt to connect a relay to one backend.

    An attempt the relay gave up on (its client left, or it was closed) is
    detached: a late failure is ignored and a late success is closed at once.

    @ivar header: the PROXY protocol header to send first (empty: none).
    @ivar side: the backend side once the TCP connection is made (a TLS
        side then still has its handshake to do).
    """

    noisy = False

    def __init__(self, relay: Relay, backend: Backend, header: bytes) -> None:
        self.relay: Relay | None = relay
        self.backend = backend
        self.header = header
        self.connector: Any = None
        self.side: BackendSide | None = None

    def buildProtocol(self, addr: Any) -> BackendSide | None:  # type: ignore[override]
        """The backend side of the connection made (none if the relay gave up on it)."""
        return self.build(BackendSide)

    def build(self, side_class: type[BackendSide]) -> BackendSide | None:
        """
        A C{side_class} for the connection made (a wrapping factory, such
        as TLS, asks for its own class); none if the relay gave up on it.
        """
        if self.relay is None:
            return None
        side = self.side = side_class(self.relay)
        side.factory = self
        return side

    def cancel(self) -> None:
        """Stop connecting, or close a connection whose TLS handshake is not done."""
        if self.side is not None:
            self.side.transport.abortConnection()
        else:
            self.connector.stopConnecting()

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if self.relay is not None:
            self.relay.connect_failed(self, reason)


class Relay:
    """
    One client's session: admission, backend choice with retries, relaying,
    idle timeouts and accounting.

    The session is registered with its server from admission until both of
    its connections are closed; then, admitted or not, it is published as a
    L{FinishedConnection} to its server's C{finished}, with why it ended:
    the first cause recorded with L{ends_because} (a refusal, a timer, a
    reset, a close by the balancer...), else the side that ended first.

    @ivar id: a number unique in this process (the /v1 session id).
    @ivar backend: the backend connected (or being connected) to, if any.
    @ivar rx: bytes relayed from the backend to the client.
    @ivar tx: bytes relayed from the client to the backend.
    @ivar early_data: bytes a client transport delivered before a backend
        was connected (a TLS transport may hold already decrypted bytes; an
        SNI-routed client's ClientHello); sent first once connected.
    @ivar server_name: the TLS server name the client asked for, when its
        server routes by SNI.
    @ivar connect_seconds: how long the backend connected to took to be
        ready (from the start of its attempt), or C{None} before.
    @ivar client_host: the client's IP address as text, from its admission
        on (C{""} before).
    """

    def __init__(self, server: IListener, side: type[ClientSide] = ClientSide) -> None:
        self.id = next(_relay_ids)
        self.server = server
        self.client = side(self)
        self.server_name: str | None = None
        self.backend_side: BackendSide | None = None
        self.backend: Backend | None = None
        self.started_at = server.clock.seconds()
        self.rx = 0
        self.tx = 0
        self.early_data: list[bytes] = []
        self._tried: set[str] = set()
        self._header = b""
        self._attempt: Attempt | None = None
        self._registered = False
        self._server_traffic: Traffic = server.counters.traffic
        self._backend_traffic: Traffic | None = None
        self._to_backend: Callable[[bytes], None] | None = None
        self._to_client: Callable[[bytes], None] | None = None
        self._client_idle: IdleTimer | None = None
        self._backend_idle: IdleTimer | None = None
        self.connect_seconds: float | None = None
        self._attempt_started = 0.0
        self._last_backend: str | None = None
        self._connect_failure: str | None = None
        self._reason: str | None = None
        # A side ended cleanly: the reason, unless a side ended before or a cause is recorded later.
        self._first_end: str | None = None
        self._published = False
        self.client_host = ""

    @property
    def client_address(self) -> Any:
        """The client's address (an C{IAddress})."""
        return self.client.transport.getPeer()

    # Admission and backend choice

    def admit(self) -> bool:
        """
        Ask the server to take the client (access rules, then limits); a
        refused client is closed at once.

        @return: whether it was admitted.
        """
        self.client_host = self.client.transport.getPeer().host
        refusal = self.server.admit(self)
        if refusal is not None:
            self.ends_because(refusal)
            self.client.transport.loseConnection()
            return False
        self._registered = True
        return True

    def route(self, server_name: str | None) -> None:
        """
        Pause the client and connect it to a backend: the server's strategy
        picks among the candidates (those serving C{server_name}, when the
        server routes by SNI); a name that its C{[sni]} rejects closes the
        client, counted in C{sni_failures}.
        """
        self.client.transport.pauseProducing()
        self.server_name = server_name
        if self.server.rejects(server_name):
            self.ends_because(SNI_REJECTED)
            self.server.counters.sni_failures += 1
            log.info(
                "{server}: client {client} asked for server name {name!r}, which no backend serves",
                server=self.server.name,
                client=self.client_address.host,
                name=server_name,
            )
            self.client.finish(half=False)
            return
        self._header = self.server.proxy_header(self.client.transport)
        self._connect_next()

    def _connect_next(self) -> None:
        backend = self.server.choose_backend(self.client_host, self._tried, self.server_name)
        if backend is None:
            self.ends_because(self._connect_failure or NO_BACKEND)
            self.server.counters.no_backend += 1
            log.warn(
                "{server}: no backend could take client {client}",
                server=self.server.name,
                client=self.client_address.host,
            )
            if self.client.lost:
                self._over()
            else:
                self.client.finish(half=False)
            return
        self._tried.add(backend.key)
        self.backend = backend
        self._last_backend = backend.key
        backend.counters.active_connections += 1
        attempt = self._attempt = Attempt(self, backend, self._header)
        self._attempt_started = self.server.clock.seconds()
        attempt.connector = self.server.connect(attempt)

    def connect_failed(self, attempt: Attempt, reason: Failure) -> None:
        """The backend refused, timed out or failed its TLS handshake: count it and try the next one."""
        backend = attempt.backend
        self._detach(attempt)
        attempt.connector = None  # over; and a reference cycle with it
        timed_out = reason.check(ConnectTimeoutError, TCPTimedOutError, TimeoutError)
        self._connect_failure = CONNECT_TIMEOUT if timed_out else CONNECT_FAILED
        backend.counters.refused_connections += 1
        log.info(
            "{server}: backend {backend} refused client {client}: {why}",
            server=self.server.name,
            backend=backend.key,
            client=self.client_address.host,
            why=reason.getErrorMessage(),
        )
        self._connect_next()

    def _detach(self, attempt: Attempt) -> None:
        """Forget a connect attempt that will not become the relay's backend connection."""
        attempt.relay = None
        self._attempt = None
        self.backend = None
        self._release(attempt.backend)

    def _abandon_attempt(self) -> None:
        """Stop a pending connect (the client is gone or being closed)."""
        attempt = self._attempt
        if attempt is not None:
            self._detach(attempt)
            attempt.cancel()
            attempt.side = attempt.connector = None  # reference cycles with it

    def _release(self, backend: Backend) -> None:
        backend.counters.active_connections -= 1
        self.server.backend_released(backend)

    def backend_connected(self, side: BackendSide) -> None:
        """
        Join the two sides on the server's data path and let bytes flow;
        each direction that can still be idle gets its idle timer.
        """
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            # Done: nothing is late any more, and its links would be reference cycles.
            attempt.relay = attempt.side = attempt.connector = None
        self.backend_side = side
        backend = self.backend
        assert backend is not None
        backend.counters.total_connections += 1
        self._backend_traffic = backend.counters.traffic
        config = self.server.config
        clock = self.server.clock
        self.connect_seconds = clock.seconds() - self._attempt_started
        if config.backend_idle_timeout:
            self._backend_idle = IdleTimer(clock, config.backend_idle_timeout, self._idle("backend"))
        if self.client.lost:
            self._deliver_without_client(side)
            return
        self.server.path.join(self, self.client, side)
        if config.client_idle_timeout and not self.client.read_closed:
            self._client_idle = IdleTimer(clock, config.client_idle_timeout, self._idle("client"))

    def _deliver_without_client(self, side: BackendSide) -> None:
        """
        The client ended cleanly while its backend was being connected (on
        Twisted's TLS transports a C{close_notify} ends the connection): what
        it sent is written to the backend, whose write side is then shut.
        The backend is read to its end (or its idle timeout) so that closing
        never resets it before it took those bytes; its answer has no one to
        go to and is dropped, not counted.
        """
        write = side.transport.write
        early, self.early_data = self.early_data, []
        for data in early:
            write(data)
            self.count_tx(len(data))
        side.finish(half=True)

    def write_with(self, to_client: Callable[[bytes], None], to_backend: Callable[[bytes], None]) -> None:
        """
        From now on bytes are written with C{to_client} and C{to_backend}
        (a data path that relays them through Python says so when it joins
        the sides); the early data goes first.
        """
        self._to_client = to_client
        self._to_backend = to_backend
        early, self.early_data = self.early_data, []
        for data in early:
            self.from_client(data)

    # Bytes (the hot path: keep the work per chunk minimal)

    def from_client(self, data: bytes) -> None:
        """Send C{data} from the client to the backend; count it as tx."""
        write = self._to_backend
        if write is None:
            self.early_data.append(data)
            return
        write(data)
        self.count_tx(len(data))

    def from_backend(self, data: bytes) -> None:
        """Send C{data} from the backend to the client; count it as rx (dropped if the client is gone)."""
        to_client = self._to_client
        if to_client is None:
            return
        to_client(data)
        self.count_rx(len(data))

    def count_tx(self, size: int) -> None:
        """Count C{size} bytes relayed from the client to the backend."""
        self.tx += size
        self._server_traffic.tx += size
        self._backend_traffic.tx += size  # type: ignore[union-attr]
        if self._client_idle is not None:
            self._client_idle.touch()

    def count_rx(self, size: int) -> None:
        """Count C{size} bytes relayed from the backend to the client."""
        self.rx += size
        self._server_traffic.rx += size
        self._backend_traffic.rx += size  # type: ignore[union-attr]
        if self._backend_idle is not None:
            self._backend_idle.touch()

    # Endings

    def read_closed(self, side: _Side) -> None:
        """
        C{side}'s peer finished sending: finish sending to the other end.

        That direction can no longer be idle, so its idle timer stops.
        """
        if side is self.client:
            if self._first_end is None:
                self._first_end = CLIENT_CLOSED
            peer: _Side | None = self.backend_side
            timer, self._client_idle = self._client_idle, None
        else:
            if self._first_end is None:
                self._first_end = BACKEND_CLOSED
            peer = self.client
            timer, self._backend_idle = self._backend_idle, None
        if timer is not None:
            timer.cancel()
        if peer is not None and not peer.lost:
            # A peer that finished sending too is done both ways: close it rather than only its write side.
            peer.finish(half=not peer.read_closed)
        if side.write_closed and not side.lost:
            side.finish(half=False)

    def side_lost(self, side: _Side, reset: bool = False) -> None:
        """
        One end closed: close the other after it has sent what it holds, or,
        if this end was C{reset}, reset the other at once, so that a
        transfer cut short never looks complete to it.  Once both are
        closed, the relay is published (L{FinishedConnection}).
        """
        client = side is self.client
        if reset:
            self.ends_because(CLIENT_RESET if client else BACKEND_RESET)
        elif self._first_end is None:
            self._first_end = CLIENT_CLOSED if client else BACKEND_CLOSED
        if client:
            if self._attempt is not None:
                if not reset and self.early_data:
                    return  # its bytes still go to the backend being connected (see _deliver_without_client)
                self._abandon_attempt()
            if self._client_idle is not None or self._backend_idle is not None:
                self._stop_timers()
            peer: _Side | None = self.backend_side
        else:
            backend = self.backend
            assert backend is not None
            backend.counters.active_connections -= 1  # as _release, inlined
            self.server.backend_released(backend)
            peer = self.client
        if peer is not None and not peer.lost:
            if reset:
                reset_connection(peer.transport)
            else:
                peer.finish(half=False)
            return
        self._over()

    def _over(self) -> None:
        """Both ends are closed: the server forgets the relay, which is published."""
        if self._registered:
            self._registered = False
            self.server.relay_ended(self)
        self._publish()
        # Over: the sides forget the relay, so that reference counting frees
        # its objects (the transports forget their protocols and each other
        # when they close) and the cyclic garbage collector never has to.
        del self.client.relay
        backend_side, self.backend_side = self.backend_side, None
        if backend_side is not None:
            del backend_side.relay

    def ends_because(self, reason: str) -> None:
        """
        Record why the relay ends (a reason of L{balancer.proxy.finished}),
        unless a cause was recorded before: the first one is the reason.
        """
        if self._reason is None:
            self._reason = reason

    def _publish(self) -> None:
        """Tell the server's C{finished} subscribers of this relay (once; if there are any)."""
        if self._published:
            return
        self._published = True
        server = self.server
        if not server.finished.wanted:
            return
        peer = self.client_address
        server.finished.publish(
            FinishedConnection(
                server=server.name,
                protocol=server.config.protocol,
                client=address_text(peer.host, peer.port),
                backend=self._last_backend,
                started=self.started_at,
                connect_seconds=self.connect_seconds,
                duration_seconds=server.clock.seconds() - self.started_at,
                rx=self.rx,
                tx=self.tx,
                reason=self._reason or self._first_end or CLIENT_CLOSED,
            )
        )

    def close(self, reason: str = CLOSED_BY_BALANCER) -> None:
        """
        Close both ends now, dropping unsent data (session kill, idle, end
        of grace), for C{reason} (unless it ends for another already).
        """
        self.ends_because(reason)
        if self._attempt is not None:
            self._abandon_attempt()
            if self.client.lost:
                # It was connecting only to deliver a gone client's bytes: nothing is left to close
                # (and no idle timer: they start once a backend is connected).
                self._over()
                return
        for side in (self.client, self.backend_side):
            if side is not None and not side.lost:
                side.transport.abortConnection()

    def _idle(self, which: str) -> Callable[[], None]:
        def on_idle() -> None:
            log.info(
                "{server}: closing relay of {client}: {which} idle",
                server=self.server.name,
                client=self.client_address.host,
                which=which,
            )
            self.close(CLIENT_IDLE if which == "client" else BACKEND_IDLE)

        return on_idle

    def _stop_timers(self) -> None:
        for timer in (self._client_idle, self._backend_idle):
            if timer is not None:
                timer.cancel()
        self._client_idle = self._backend_idle = None


class RelayFactory(Factory):
    """
    Builds a L{Relay} for each client accepted on a server's listener.

    @ivar side: the class of the client side: L{ClientSide}, or one that
        reads or terminates TLS first.
    """

    noisy = False

    def __init__(self, server: IListener, side: type[ClientSide] = ClientSide) -> None:
        self.server = server
        self.side = side

    def buildProtocol(self, addr: Any) -> ClientSide:
        return Relay(self.server, self.side).client
