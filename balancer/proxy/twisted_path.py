"""
L{TwistedPath}: the data path on Twisted's own ports, connectors and TCP
(or TLS) transports (docs/architecture.md).

Relaying is Twisted's producer/consumer, as in
C{twisted.protocols.portforward}: each transport is registered as the
producer of the other, so a slow reader pauses the fast writer and no
buffer grows past a transport's C{bufferSize} plus one read.  The bytes go
through Python: each side's C{dataReceived} hands them to the relay, which
writes them to the other transport.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.internet.protocol import ClientFactory
from zope.interface import implementer

from balancer.proxy.datapath import IDataPath
from balancer.reuseport import listen_tcp

if TYPE_CHECKING:
    from balancer.proxy.tcp import BackendSide, ClientSide, Relay

#: The listen backlog of a server's port.
BACKLOG = 1024


@implementer(IDataPath)
class TwistedPath:
    """Twisted's transports, on C{reactor}; every kind of listener can use them."""

    def __init__(self, reactor: Any) -> None:
        """@param reactor: an C{IReactorTCP} (C{adoptStreamPort} too, to share ports)."""
        self.reactor = reactor

    def listen(self, port: int, factory: IProtocolFactory, interface: str, reuse_port: bool) -> IListeningPort:
        """Listen with C{listenTCP}, or on a shared socket adopted by the reactor (L{balancer.reuseport})."""
        listening: IListeningPort
        if reuse_port:
            listening = listen_tcp(self.reactor, port, factory, interface)
        else:
            listening = self.reactor.listenTCP(port, factory, backlog=BACKLOG, interface=interface)
        return listening

    def connect(self, host: str, port: int, factory: ClientFactory, timeout: float) -> Any:
        """Connect with C{connectTCP}."""
        return self.reactor.connectTCP(host, port, factory, timeout=timeout)

    def join(self, relay: Relay, client: ClientSide, backend: BackendSide) -> None:
        """
        Make each transport the producer of the other, with C{TCP_NODELAY}
        where it can be set; give the relay the transports' C{write}; send
        the early data; then pass on a client's end of stream, or read the
        client again.
        """
        to_client, to_backend = client.transport, backend.transport
        for transport in (to_client, to_backend):
            set_no_delay = getattr(transport, "setTcpNoDelay", None)
            if set_no_delay is not None:
                set_no_delay(True)
        to_client.registerProducer(to_backend, True)
        to_backend.registerProducer(to_client, True)
        relay.write_with(to_client.write, to_backend.write)
        if client.read_closed:
            backend.finish(half=True)
            return
        to_client.resumeProducing()
