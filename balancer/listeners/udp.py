"""UDP listeners (C{protocol = "udp"}): the server's L{UdpProxy<balancer.proxy.udp.UdpProxy>} reads the datagrams."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from balancer.proxy.udp import MAX_DATAGRAM
from balancer.reuseport import listen_udp

if TYPE_CHECKING:
    from balancer.server_service import ServerService


def listen(server: ServerService) -> Any:
    """Listen with the server's UDP proxy, for datagrams of any size."""
    proxy = server.udp
    assert proxy is not None, "a UDP server has its proxy from the start"
    bind = server.config.bind
    if server.reuse_port:
        return listen_udp(server.reactor, bind.port, proxy, bind.listen_host, MAX_DATAGRAM)
    return server.reactor.listenUDP(bind.port, proxy, interface=bind.listen_host, maxPacketSize=MAX_DATAGRAM)
