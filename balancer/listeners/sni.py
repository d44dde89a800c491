"""
TCP listeners with C{[sni]}: each client's relay reads its ClientHello and
routes by the server name in it, TLS staying end to end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from balancer.proxy.sni import SniClientSide
from balancer.proxy.tcp import RelayFactory

if TYPE_CHECKING:
    from balancer.server_service import ServerService


def factory(server: ServerService) -> Any:
    """What serves the listener's clients: a relay per client that reads the SNI first."""
    return RelayFactory(server, SniClientSide)


def listen(server: ServerService) -> Any:
    """Listen on the server's data path with a relay per client that reads the SNI first."""
    bind = server.config.bind
    return server.path.listen(bind.port, factory(server), bind.listen_host, server.reuse_port)
