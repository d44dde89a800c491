"""
Listening sockets that several processes share (C{[defaults] workers} > 1).

Each worker process opens its own socket on the same address with
C{SO_REUSEPORT}, and the kernel spreads new TCP connections (and UDP
datagrams, by their source address and port) across them.  The socket is
created here and handed to the reactor with C{adoptStreamPort} or
C{adoptDatagramPort}, which duplicate it; our copy is closed at once.

A failure raises L{CannotListenError}, as C{listenTCP} and C{listenUDP} do,
so callers report it the same way.  Linux lets a socket share a port only
with sockets that also set C{SO_REUSEPORT} under the same user: binding
where another program listens still fails.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.abstract import isIPv6Address
from twisted.internet.error import CannotListenError

#: The listen backlog, as C{listenTCP} is given without workers.
BACKLOG = 1024


def bound_socket(kind: int, host: str, port: int, *, share: bool = True) -> socket.socket:
    """
    A non-blocking socket of C{kind} bound to C{host:port} with C{SO_REUSEADDR}
    (as Twisted's ports set it) and, to C{share} the port, C{SO_REUSEPORT}
    (and listening, for TCP).

    @raise CannotListenError: naming the address and the socket error.
    """
    family = socket.AF_INET6 if isIPv6Address(host) else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if share:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise CannotListenError(host, port, e) from e
    return sock


def listen_tcp(reactor: Any, port: int, factory: Any, interface: str) -> Any:
    """
    Listen on C{interface:port} with C{factory}, sharing the port with other
    processes; returns the reactor's port.

    @raise CannotListenError: if the address cannot be bound.
    """
    sock = bound_socket(socket.SOCK_STREAM, interface, port)
    with sock:
        return reactor.adoptStreamPort(sock.fileno(), sock.family, factory)


def listen_udp(reactor: Any, port: int, protocol: Any, interface: str, max_packet_size: int) -> Any:
    """
    Receive datagrams on C{interface:port} with C{protocol}, sharing the port
    with other processes; returns the reactor's port.

    @raise CannotListenError: if the address cannot be bound.
    """
    sock = bound_socket(socket.SOCK_DGRAM, interface, port)
    with sock:
        return reactor.adoptDatagramPort(sock.fileno(), sock.family, protocol, max_packet_size)
