"""
What is known of a connection once it is over, and who is told of it.

Every finished client connection (a TCP relay, a TLS or SNI relay, a UDP
session) becomes one L{FinishedConnection}, published through the
balancer's L{FinishedConnections}: the access log writes it as a line, the
metrics count it in their histograms.  The data path publishes; nothing in
it knows who listens.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

#: Why a connection ended: the reasons an access log line can give.
#: The end of a relay that nothing cut short is the side that ended first
#: (its end of stream or its close), cleanly or by a reset; a reset after a
#: clean end wins, being what went wrong.  L{IDLE_TIMEOUT} and
#: L{RESPONSES_DONE} are UDP sessions' (no idle timeout configured; the
#: C{max_responses}-th answer relayed).
CLIENT_CLOSED = "client closed"
BACKEND_CLOSED = "backend closed"
CLIENT_RESET = "client reset"
BACKEND_RESET = "backend reset"
CLIENT_IDLE = "client idle timeout"
BACKEND_IDLE = "backend idle timeout"
CONNECT_FAILED = "backend refused or unreachable"
CONNECT_TIMEOUT = "connect timeout"
NO_BACKEND = "no backend"
DENIED = "denied"
OVER_LIMIT = "over max_connections"
TLS_FAILED = "TLS failure"
TLS_TIMEOUT = "TLS handshake timeout"
SNI_REJECTED = "SNI rejected"
BAD_HELLO = "no valid ClientHello"
HELLO_TIMEOUT = "ClientHello timeout"
IDLE_TIMEOUT = "idle timeout"
RESPONSES_DONE = "max_responses reached"
CLOSED_BY_BALANCER = "closed by the balancer"
SHUTDOWN = "shutdown"


def address_text(host: str, port: int) -> str:
    """C{host:port}, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class FinishedConnection(NamedTuple):
    """
    One client connection, from accept to its last close.

    A named tuple (immutable, as its fields say what happened): one is
    built per connection when anyone listens, and a tuple is built in
    about half the time of a frozen C{attrs} class.

    @ivar server: the name of the server (C{[servers.NAME]}) it came to.
    @ivar protocol: C{"tcp"}, C{"tls"} or C{"udp"}.
    @ivar client: the client's C{host:port}.
    @ivar backend: the C{host:port} of the backend connected to, or, when
        none connected, of the last one tried; None when none was tried.
    @ivar started: when it was accepted (seconds since the epoch, the reactor's clock).
    @ivar connect_seconds: how long connecting to the backend took (from the
        start of the attempt that succeeded to the connection being ready to
        relay, over TLS its handshake included), or None when no backend connected.
    @ivar duration_seconds: from accept to the last close.
    @ivar rx: bytes relayed from the backend to the client (as a relay's and
        the statistics' C{rx}).
    @ivar tx: bytes relayed from the client to the backend (as their C{tx}).
    @ivar reason: why it ended: one of this module's constants.
    """

    server: str
    protocol: str
    client: str
    backend: str | None
    started: float
    connect_seconds: float | None
    duration_seconds: float
    rx: int
    tx: int
    reason: str


class FinishedConnections:
    """
    Publishes every L{FinishedConnection} to whoever subscribed.

    A publisher asks L{wanted} first: with nobody subscribed (no access log,
    no metrics), a connection that ends costs no record.
    """

    def __init__(self) -> None:
        self._subscribers: tuple[Callable[[FinishedConnection], None], ...] = ()

    @property
    def wanted(self) -> bool:
        """Whether anyone subscribed (else publishing is no use)."""
        return bool(self._subscribers)

    def subscribe(self, subscriber: Callable[[FinishedConnection], None]) -> Callable[[], None]:
        """Call C{subscriber} with each connection finished from now on; returns what unsubscribes it."""
        self._subscribers = (*self._subscribers, subscriber)

        def unsubscribe() -> None:
            subscribers = list(self._subscribers)
            subscribers.remove(subscriber)
            self._subscribers = tuple(subscribers)

        return unsubscribe

    def publish(self, connection: FinishedConnection) -> None:
        """Tell every subscriber of C{connection} (those subscribed when it was published)."""
        for subscriber in self._subscribers:
            subscriber(connection)
