"""
Handing a listening socket from one server to the next (a server's new
definition changes what serves its listener, not its address).

The socket stays open throughout, so clients the kernel has queued in its
backlog are accepted by the new server instead of being reset:

 - on Twisted's transports, the port is kept and only the factory it serves
   changes (Twisted's TCP port builds each client's protocol with its
   C{factory} attribute, read at each accept);
 - on the relay engine, when the new definition runs on the same engine
   path (a TLS server whose certificate files were read again, say), the
   engine's listener serves the new server's clients from the next accept;
 - from the relay engine to Twisted's transports, and for UDP, a port of
   the reactor adopts a duplicate of the socket's descriptor and the old
   port closes its own: neither shuts the socket down, so the duplicate
   goes on listening.  A socket leaving the engine is first taken out of
   the engine's epoll set.

A server keeps the data path its listener is on: its relays in flight go on
with the path they started on (a relay calls its server's path to connect
and to join).

A port of Twisted's own C{listenTCP} shuts its socket down when it closes,
which would reset the backlog whatever else holds the socket: so a server
whose listener is on Twisted's transports stays on them, even when its new
definition could run on the engine (plain TCP again, with C{[defaults]
splice}); its next new address, or a restart, puts it back on the engine.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

from twisted.internet.address import IPv6Address
from twisted.logger import Logger

from balancer.config.schema import ServerConfig
from balancer.listeners import FACTORIES, kind_of
from balancer.proxy.datapath import IDataPath
from balancer.proxy.engine.path import EnginePath
from balancer.proxy.paths import DataPaths
from balancer.proxy.udp import MAX_DATAGRAM

if TYPE_CHECKING:
    from balancer.server_service import ServerService

log = Logger()


def same_socket(old: ServerConfig, new: ServerConfig) -> bool:
    """
    Whether a server going from C{old} to C{new} can keep its listening
    socket: the same C{bind} and the same transport (TCP, or UDP).
    """
    return old.bind == new.bind and (old.protocol == "udp") == (new.protocol == "udp")


def family_of(port: Any) -> int:
    """The address family of a listening C{port}."""
    return socket.AF_INET6 if isinstance(port.getHost(), IPv6Address) else socket.AF_INET


def hand_over(port: Any, from_path: IDataPath, server: ServerService, paths: DataPaths) -> tuple[IDataPath, Any]:
    """
    Serve C{server}'s clients on the socket C{port} listens on for another
    server of the same address and transport (L{same_socket}), whose relays
    ran on C{from_path}.  What serves the socket is built first: if that
    fails, nothing changed.

    @param paths: the data paths of the server's reactor.
    @return: the data path C{server}'s relays run on from now on, and the port that listens.
    @raise balancer.tlsfiles.TLSError: if C{server}'s listener cannot be set
        up (its C{[tls]} files); C{port} goes on serving as before.
    """
    config = server.config
    if config.protocol == "udp":
        assert server.udp is not None, "a UDP server has its proxy from the start"
        adopted = server.reactor.adoptDatagramPort(port.fileno(), family_of(port), server.udp, MAX_DATAGRAM)
        port.stopListening()
        return server.path, adopted
    factory = FACTORIES[kind_of(config)](server)
    if not isinstance(from_path, EnginePath):
        serve_with(port, factory)
        return paths.twisted, port
    if paths.choose(config) is from_path:
        from_path.serve_with(port, factory)
        return from_path, port
    # The new definition runs on another path: Twisted's transports take the socket.
    from_path.engine.unlisten(port)
    adopted = server.reactor.adoptStreamPort(port.fileno(), family_of(port), factory)
    port.stopListening()
    return paths.twisted, adopted


def serve_with(port: Any, factory: Any) -> None:
    """
    Make C{factory} what Twisted's TCP C{port} serves its next clients with,
    started before the factory it replaces is stopped (the port stops the
    last one it serves when it closes).
    """
    old = getattr(port, "factory", None)
    factory.doStart()
    port.factory = factory
    if old is not None:
        old.doStop()
