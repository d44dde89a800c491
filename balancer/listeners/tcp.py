"""Plain TCP listeners: each client gets a relay to a backend at once."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from balancer.proxy.tcp import RelayFactory

if TYPE_CHECKING:
    from balancer.server_service import ServerService


def factory(server: ServerService) -> Any:
    """What serves the listener's clients: a relay per client."""
    return RelayFactory(server)


def listen(server: ServerService) -> Any:
    """Listen on the server's data path with a relay per client."""
    bind = server.config.bind
    return server.path.listen(bind.port, factory(server), bind.listen_host, server.reuse_port)
