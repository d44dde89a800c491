"""
Listener kinds (docs/architecture.md): how a server listens, by the kind its
configuration says: plain TCP (L{tcp}), TCP routed by the SNI of the
client's ClientHello (L{sni}), TLS terminated (L{tls}), or UDP (L{udp}).
Each kind is one module with a C{listen(server)} and one line of L{KINDS};
the TCP kinds also say what serves their clients (C{factory(server)}, a line
of L{FACTORIES}), so another server can take over a listening socket
(L{balancer.listeners.handover}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from balancer.config.schema import ServerConfig
from balancer.listeners import sni, tcp, tls, udp

if TYPE_CHECKING:
    from balancer.server_service import ServerService

#: Each kind's C{listen(server)}: starts listening as C{server.config} says,
#: for C{server}'s clients, and returns the listening port.
KINDS: dict[str, Callable[[ServerService], Any]] = {
    "tcp": tcp.listen,
    "sni": sni.listen,
    "tls": tls.listen,
    "udp": udp.listen,
}

#: Each TCP kind's C{factory(server)}: what serves C{server}'s clients on
#: its listening socket (the UDP kind's is the server's datagram proxy).
FACTORIES: dict[str, Callable[[ServerService], Any]] = {
    "tcp": tcp.factory,
    "sni": sni.factory,
    "tls": tls.factory,
}


def kind_of(config: ServerConfig) -> str:
    """The listener kind of a server of C{config} (a key of L{KINDS})."""
    if config.protocol in ("tls", "udp"):
        return config.protocol
    return "sni" if config.sni is not None else "tcp"


def listen(server: ServerService) -> Any:
    """
    Listen for C{server}'s clients as its kind does; returns the port.

    @raise twisted.internet.error.CannotListenError: if the address cannot be bound.
    @raise balancer.tlsfiles.TLSError: if a TLS listener's files cannot be used.
    """
    return KINDS[kind_of(server.config)](server)
