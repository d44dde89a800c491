"""
Listening and connecting on the relay L{engine<balancer.proxy.engine.engine>}:
plain TCP clients are accepted, and connections to backends are made,
without Twisted's ports, connectors and transports; each connected socket
is a L{SplicedTransport} from the start.

Only what a relay needs is done per connection: one C{accept4} and one
C{ioctl} to make the socket non-blocking for a client (Linux gives
accepted sockets the listener's C{TCP_NODELAY}); one C{socket} (created non-blocking), one
C{setsockopt} and one C{connect} for a backend, which is connected when the
engine says the socket is writable with no error or hang-up in the event
(else one C{getsockopt} reads the error).

L{EngineListener} offers the part of C{IListeningPort} a server uses
(C{getHost}, C{stopListening}); L{EngineConnector} the part of
C{IConnector} (C{stopConnecting}).  A factory's C{buildProtocol} is all
that either uses of it; C{clientConnectionFailed} is called as by
C{connectTCP}.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from functools import lru_cache
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import TimeoutError, UserError, getConnectError
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancer.proxy.engine.splice import SplicedTransport, tcp_address
from balancer.proxy.engine.throttled import ThrottledWarning
from balancer.reuseport import bound_socket

log = Logger()

#: The most clients accepted per event of a listening socket (the others
#: wait for the next turn of the reactor, as with Twisted's ports).
ACCEPTS_PER_EVENT = 64
_ACCEPTS = range(ACCEPTS_PER_EVENT)

#: Seconds a listener stops accepting when the process is out of file
#: descriptors or memory (instead of busy-looping on the waiting clients).
ACCEPT_PAUSE = 0.1

_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
# Errors of one client, not of the listener: accept(2) says to go on with the next
# (ECONNABORTED, network errors the new connection already had, EPERM from netfilter).
_CLIENT_ERRORS = (
    errno.ECONNABORTED,
    errno.EPERM,
    errno.EPROTO,
    errno.ENOPROTOOPT,
    errno.ENETDOWN,
    errno.ENETUNREACH,
    errno.EHOSTDOWN,
    errno.EHOSTUNREACH,
    errno.ENONET,
    errno.EOPNOTSUPP,
)
_NONBLOCKING_STREAM = socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
# What each connect uses, looked up once.  The backend's socket is of the C
# socket type: socket.socket's Python __init__ and close() are frames more per connection.
_C_SOCKET = socket.SocketType
_AF_INET, _AF_INET6 = socket.AF_INET, socket.AF_INET6
_IPPROTO_TCP, _TCP_NODELAY = socket.IPPROTO_TCP, socket.TCP_NODELAY
# The bits of an event that may come with a failed connect: its error, its hang-up.
_FAILED = select.EPOLLERR | select.EPOLLHUP


@lru_cache(maxsize=1024)
def _is_ip_address(host: str) -> bool:
    """Whether C{host} is an IPv4 or IPv6 address (backends' hosts repeat: the answer is kept)."""
    return isIPAddress(host) or isIPv6Address(host)


class AcceptingSocket(socket.socket):
    """
    A socket that knows its family and type: a listening socket's C{accept}
    asks for both for each client, and each is an enum conversion in Python
    when read from the socket itself.
    """

    __slots__ = ("family", "type")
    family: socket.AddressFamily
    type: socket.SocketKind

    def __init__(self, family: int, kind: int, proto: int, fileno: int) -> None:
        super().__init__(family, kind, proto, fileno)
        self.family = socket.AddressFamily(family)
        self.type = socket.SocketKind(kind)


def accepting(sock: socket.socket) -> AcceptingSocket:
    """C{sock}, a non-blocking listening socket, as an L{AcceptingSocket} (the same descriptor)."""
    listening = AcceptingSocket(sock.family, sock.type, sock.proto, sock.detach())
    listening.setblocking(False)
    return listening


class EngineListener:
    """
    A listening TCP socket on the engine: each client accepted becomes a
    L{SplicedTransport} in front of a protocol from C{factory}.
    """

    def __init__(self, engine: Any, sock: socket.socket, factory: Any, transport: Any = SplicedTransport) -> None:
        """
        @param engine: the engine to run on.
        @param sock: a bound, listening, non-blocking socket (now owned by the listener).
        @param factory: builds a protocol for each client (C{buildProtocol(address)}).
        @param transport: makes each client's transport (called with the
            engine, the socket and the client's address): a
            L{SplicedTransport}, or another transport of the engine.
        """
        self._engine = engine
        self._socket = sock
        self._fd = sock.fileno()
        self._family = sock.family
        # The accepted clients' addresses: (host, port) or (host, port, flow, scope) as accept() gives them.
        self._address_type = IPv6Address if sock.family == socket.AF_INET6 else IPv4Address
        self._factory = factory
        self._transport = transport
        self._listening = True
        self._resume: Any = None
        self._cannot_accept = ThrottledWarning(
            log, "cannot accept clients ({error}); accepting again every {pause} s until it can "
            "({count} pauses so far; this is logged at most once a minute)"
        )
        engine.listen(self)

    def getHost(self) -> IPv4Address | IPv6Address:
        """The address listened on."""
        return tcp_address(self._family, self._socket.getsockname())

    def serve(self, factory: Any, transport: Any = SplicedTransport) -> None:
        """Serve the clients accepted from now on with C{factory} and C{transport} (see L{__init__})."""
        self._factory = factory
        self._transport = transport

    def stopListening(self) -> None:
        """Close the socket: clients not accepted yet are refused."""
        if not self._listening:
            return
        self._listening = False
        if self._resume is not None and self._resume.active():
            self._resume.cancel()
        self._engine.forget(self._fd)
        self._socket.close()

    def fileno(self) -> int:
        """The listening socket's file descriptor."""
        return self._fd

    def logPrefix(self) -> str:
        """How the log names this listener."""
        return f"{self._factory.__class__.__name__} (engine)"

    def doRead(self) -> None:
        """
        Clients wait: accept up to L{ACCEPTS_PER_EVENT} of them, each into a
        transport and a protocol from the factory; a client whose setup fails
        is closed and logged.
        """
        accept = self._socket.accept
        address_type = self._address_type
        engine = self._engine
        for _ in _ACCEPTS:
            try:
                sock, addr = accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in _CLIENT_ERRORS:
                    continue
                if e.errno in _OUT_OF_RESOURCES:
                    self._pause(e)
                    return
                raise
            try:
                sock.setblocking(False)
                address = address_type("TCP", *addr)
                protocol = self._factory.buildProtocol(address)
            except Exception:
                log.failure("could not set up an accepted client")
                sock.close()
                continue
            if protocol is None:
                sock.close()
                continue
            transport = self._transport(engine, sock, address)
            transport.protocol = protocol
            try:
                protocol.makeConnection(transport)
            except Exception:
                log.failure("could not set up an accepted client")
                transport.abortConnection()

    def connectionLost(self, reason: Failure) -> None:
        """Accepting failed in a way not foreseen (logged by the engine): stop listening."""
        self.stopListening()

    def _pause(self, error: OSError) -> None:
        self._cannot_accept.due(self._engine.reactor, error=error.strerror, pause=ACCEPT_PAUSE)
        self._engine.unlisten(self)
        self._resume = self._engine.callLater(ACCEPT_PAUSE, self._accept_again)

    def _accept_again(self) -> None:
        self._resume = None
        if self._listening:
            self._engine.listen(self)


def listen(
    engine: Any, port: int, factory: Any, interface: str, *, reuse_port: bool = False, transport: Any = SplicedTransport
) -> EngineListener:
    """
    Listen on C{interface:port} on the engine (sharing the port with other
    processes with C{reuse_port}); each client's transport is made by
    C{transport} (see L{EngineListener}).

    @raise CannotListenError: if the address cannot be bound.
    """
    sock = accepting(bound_socket(socket.SOCK_STREAM, interface, port, share=reuse_port))
    # Accepted sockets inherit it: no system call per client.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return EngineListener(engine, sock, factory, transport)


class EngineConnector:
    """
    A non-blocking connect to C{host:port} on the engine, the engine's
    writer of the socket until it is connected; then a L{SplicedTransport}
    in front of a protocol from the factory (whose C{buildProtocol} is
    given C{None}: the transport's C{getPeer} has the address).  A refusal,
    an error or the timeout calls the factory's C{clientConnectionFailed}.
    """

    def __init__(self, engine: Any, host: str, port: int, factory: Any, timeout: float) -> None:
        self._engine = engine
        self._port = port
        self._factory = factory
        self._timeout = timeout
        self._socket: Any = None
        self._fd = -1
        self._deadline: int | None = engine.deadlines.add(timeout, self)
        if _is_ip_address(host):
            self._connect(host)
        else:
            resolved: Deferred[str] = engine.reactor.resolve(host)
            resolved.addCallbacks(self._connect, self._fail)

    def stopConnecting(self) -> None:
        """Give up: the factory's C{clientConnectionFailed} is called with a C{UserError}."""
        self._fail(Failure(UserError(string="connecting stopped")))

    def deadline_passed(self) -> None:
        """The connect timed out."""
        self._fail(Failure(TimeoutError(string=f"after {self._timeout:g} s")))

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self._fd

    def logPrefix(self) -> str:
        """How the log names this connect."""
        return f"connect to {self._port}"

    def doWrite(self) -> None:
        """
        The connect finished: hand the socket to a protocol, or report the
        error.  The error is read only when the event says there may be one
        (or is not known): a socket merely writable is connected.
        """
        sock = self._socket
        engine = self._engine
        if engine.ending & _FAILED:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._fail(Failure(getConnectError((error, os.strerror(error)))))
                return
        engine.remove_writer(self._fd, self)
        engine.deadlines.remove(self._deadline, self)
        self._socket = self._deadline = None
        protocol = self._factory.buildProtocol(None)
        if protocol is None:
            engine.forget(self._fd)
            sock.close()
            return
        transport = SplicedTransport(engine, sock)
        transport.protocol = protocol
        protocol.makeConnection(transport)

    def connectionLost(self, reason: Failure) -> None:
        """Connecting failed in a way not foreseen (logged by the engine)."""
        self._fail(reason)

    def _connect(self, host: str) -> None:
        if self._deadline is None:
            return  # failed or stopped while resolving
        try:
            sock = self._socket = _C_SOCKET(_AF_INET6 if ":" in host else _AF_INET, _NONBLOCKING_STREAM)
            self._fd = sock.fileno()
            sock.setsockopt(_IPPROTO_TCP, _TCP_NODELAY, 1)
            error = sock.connect_ex((host, self._port))
        except OSError as e:  # out of file descriptors or memory, or a bad address
            error = e.errno or errno.EINVAL
        if error and error != errno.EINPROGRESS:
            self._engine.callLater(0, self._fail, Failure(getConnectError((error, os.strerror(error)))))
            return
        self._engine.add_writer(self._fd, self)

    def _fail(self, reason: Failure) -> None:
        """Close the socket (if any) and tell the factory, once."""
        if self._deadline is None:
            return
        self._engine.deadlines.remove(self._deadline, self)
        self._deadline = None
        sock, self._socket = self._socket, None
        if sock is not None:
            self._engine.forget(self._fd)
            sock.close()
        if not self._engine.watched:
            self._engine.deadlines.stop_if_idle()
        self._factory.clientConnectionFailed(self, reason)
