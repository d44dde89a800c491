"""
TLS listeners (C{protocol = "tls"}): TLS terminated with C{[tls]}; each
client is routed once its handshake is done (by the server name it sent,
with C{[sni]}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.protocols.tls import TLSMemoryBIOFactory

from balancer.proxy.tcp import RelayFactory
from balancer.proxy.tls import server_context
from balancer.proxy.tls_relay import TlsClientSide

if TYPE_CHECKING:
    from balancer.server_service import ServerService


def factory(server: ServerService) -> Any:
    """
    What serves the listener's clients: TLS around a relay per client, with
    C{[tls]}'s certificate files read now.

    @raise balancer.proxy.tls.TLSError: if C{[tls]}'s files or settings cannot be used.
    """
    config = server.config
    assert config.tls is not None
    return TLSMemoryBIOFactory(server_context(config.tls), False, RelayFactory(server, TlsClientSide), server.clock)


def listen(server: ServerService) -> Any:
    """
    Listen on the server's data path with TLS around a relay per client.

    @raise balancer.tlsfiles.TLSError: if C{[tls]}'s files or settings cannot be used.
    """
    bind = server.config.bind
    return server.path.listen(bind.port, factory(server), bind.listen_host, server.reuse_port)
