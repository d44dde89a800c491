"""
L{TlsEnginePath}: TLS terminated on the relay engine (docs/architecture.md).

A C{protocol = "tls"} server whose backends speak plain TCP runs here: each
client's TLS is an OpenSSL connection on its socket
(L{balancer.proxy.engine.tls_socket}), its backend a spliced socket of the
engine, and the bytes between the two are copied through Python once each
way (decrypted from the client, encrypted to it), with no Twisted
transport, TLS protocol or memory buffer between OpenSSL and the sockets.
Handshakes, routing, counting and endings are those of Twisted's TLS
listener (L{balancer.proxy.tls_relay}).
"""

from __future__ import annotations

from typing import Any, Protocol

from OpenSSL import SSL
from zope.interface import implementer

from balancer.proxy.datapath import IDataPath
from balancer.proxy.engine import sockets
from balancer.proxy.engine.path import EnginePath
from balancer.proxy.engine.tls_socket import TlsTransports


class TlsServerFactory(Protocol):
    """What a TLS listener serves its clients with (L{balancer.proxy.tls_relay.RelayTLSFactory})."""

    #: The server's contexts (C{getContext()}: the one a connection starts with).
    creator: Any
    #: Builds the relay's client side for each client.
    wrappedFactory: Any


@implementer(IDataPath)
class TlsEnginePath(EnginePath):
    """The relay engine, for servers terminating TLS in front of plain TCP backends."""

    def listen(self, port: int, factory: TlsServerFactory, interface: str, reuse_port: bool) -> sockets.EngineListener:  # type: ignore[override]
        """
        Listen on the engine: each client accepted handshakes on its socket
        with the server's context, in front of a protocol of C{factory}'s
        wrapped factory.
        """
        return sockets.listen(
            self.engine, port, factory.wrappedFactory, interface, reuse_port=reuse_port, transport=transports(factory)
        )

    def serve_with(self, listener: sockets.EngineListener, factory: TlsServerFactory) -> None:  # type: ignore[override]
        """Serve the clients C{listener} accepts from now on with C{factory}'s relays and contexts."""
        listener.serve(factory.wrappedFactory, transports(factory))


def transports(factory: TlsServerFactory) -> TlsTransports:
    """What makes the TLS transports of C{factory}'s clients (OpenSSL frees an idle connection's buffers)."""
    context: SSL.Context = factory.creator.getContext()
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    return TlsTransports(context)
