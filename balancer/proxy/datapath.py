"""
L{IDataPath}: how a listener's relays reach the network (docs/architecture.md).

A data path listens for clients, connects to backends, and, once a relay
has both connections, joins them: moves the bytes between the two until
they end.  There are two: Twisted's transports
(L{balancer.proxy.twisted_path}), for every kind of listener, and the relay
engine (L{balancer.proxy.engine.path}), for plain TCP at both ends.  Each
listener is given one when it is made (L{balancer.proxy.paths}); the relay
(L{balancer.proxy.tcp}) is the same on both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import ClientFactory
from zope.interface import Interface

if TYPE_CHECKING:
    from balancer.proxy.tcp import BackendSide, ClientSide, Relay


class IDataPath(Interface):
    """Listening, connecting and relaying bytes, for the relays of one listener."""

    def listen(port: int, factory: IProtocolFactory, interface: str, reuse_port: bool) -> Any:
        """
        Listen on C{interface:port}; each client gets a protocol from C{factory}.

        @param reuse_port: share the port with other processes (C{SO_REUSEPORT}).
        @return: the listening port: an C{IListeningPort}, or what a server
            uses of one (C{getHost}, C{stopListening}).
        @raise twisted.internet.error.CannotListenError: if the address cannot be bound.
        """

    def connect(host: str, port: int, factory: ClientFactory, timeout: float) -> Any:
        """
        Connect to C{host:port} as C{connectTCP} does: C{factory} builds the
        protocol once connected, or hears of the failure (refused, an error,
        C{timeout} seconds passed) in C{clientConnectionFailed}.

        @return: the connector (C{stopConnecting}).
        """

    def join(relay: Relay, client: ClientSide, backend: BackendSide) -> None:
        """
        Move the bytes between C{relay}'s two connected sides from now on,
        counted with C{relay.count_tx} and C{relay.count_rx}; what the client
        sent before (C{relay.early_data}) goes first, and a client that
        already ended its stream has that end passed on.  The paused client
        is read again.
        """
