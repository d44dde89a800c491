"""
A UDP session's connected socket to its backend (its I{link}).

Each session has its own socket, C{connect()}ed to the backend, so the
kernel delivers the backend's answers on it (and drops datagrams from any
other address), and an ICMP port unreachable from the backend's host comes
back on it as a refusal.

Two kinds, chosen by L{link_opener}:

  - L{SocketLink}: a plain non-blocking socket in the epoll set of its
    proxy's L{LinkPoller}, for a reactor that polls real descriptors (every
    L{PosixReactorBase}, on Linux).  Opening and closing it makes no Twisted
    port, so no log line, no address checks per datagram and no deferred
    close, and a ready socket is read without the reactor's dispatch: the
    per-session cost that dominates request/response traffic
    (C{max_responses = 1}, one session per query).
  - L{PortLink}: a Twisted UDP port (C{IReactorUDP.listenUDP}) connected to
    the backend, for any other reactor (the test kit's memory reactors).

Both tell their session of a datagram (C{from_backend}) and of a refusal
(C{refused}); a L{PortLink} tells it too of its port closing (C{socket_closed}).
"""

from __future__ import annotations

import errno
import functools
import select
import socket
from typing import Any, Callable, Protocol

from twisted.internet.abstract import isIPv6Address
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

log = Logger()

MAX_DATAGRAM = 65535
"""The largest datagram read, on the listening socket and on backend sockets."""

READS_PER_EVENT = 64
"""Datagrams a link reads at most per turn of the reactor before letting other descriptors have theirs."""

#: A datagram socket created non-blocking (one system call, not three; a
#: L{SocketLink} exists only with epoll, so on Linux, which has the flag).
_NON_BLOCKING_DATAGRAMS = socket.SOCK_DGRAM | socket.SOCK_NONBLOCK

#: Errors of a send that lose only the datagram (a full buffer, a datagram too large for the path).
_DROPPED = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.EMSGSIZE, errno.EINTR})


class LinkUser(Protocol):
    """What a link tells its session."""

    def from_backend(self, data: bytes) -> None:
        """A datagram from the backend."""

    def refused(self) -> None:
        """The backend's host said nothing listens on its port (ICMP unreachable)."""

    def socket_closed(self) -> None:
        """The socket closed: asked for by L{Link.close} (a L{PortLink} tells that too), or not (an error closed it)."""


class Link(Protocol):
    """A session's socket to its backend."""

    def send(self, data: bytes) -> bool:
        """Send C{data} to the backend; whether it went (a refusal is reported to the session too)."""

    def close(self) -> Deferred[None] | None:
        """Close the socket; a deferred firing once it is closed, or C{None} if it already is."""


class CannotOpen(Exception):
    """The socket could not be opened or connected; the message says which and why."""


def link_opener(reactor: Any, poller: LinkPoller | None) -> Callable[[LinkUser, str, int], Link]:
    """
    What opens a session's socket to a backend, called with the session, the
    backend's IP and port: a L{SocketLink} read by C{poller} when there is
    one, else a L{PortLink} of C{reactor} (a C{functools.partial} of the
    class: no call of its own per session).  Either raises L{CannotOpen}
    when the socket cannot be opened or connected.
    """
    if poller is not None:
        return functools.partial(SocketLink, poller)
    return functools.partial(PortLink, reactor)


@implementer(IReadDescriptor)
class LinkPoller:
    """
    The epoll set of one proxy's L{SocketLink}s, itself one descriptor of
    the reactor: readable when any of them is.  Each turn of the reactor that
    finds it readable reads every ready link, without the reactor's own
    dispatch (its log context and checks) per link; a link leaving closes its
    socket, which leaves the set.

    Only where the reactor polls real descriptors (a L{PosixReactorBase})
    and C{select.epoll} exists: see L{for_reactor}.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.links: dict[int, SocketLink] = {}
        self._epoll: select.epoll | None = None

    @classmethod
    def for_reactor(cls, reactor: Any) -> LinkPoller | None:
        """A poller for C{reactor}, or C{None} when its sessions need Twisted ports."""
        if isinstance(reactor, PosixReactorBase) and hasattr(select, "epoll"):
            return cls(reactor)
        return None

    def fileno(self) -> int:
        """The epoll descriptor (-1 when closed)."""
        return self._epoll.fileno() if self._epoll is not None else -1

    def logPrefix(self) -> str:
        """For the reactor's log of an error in L{doRead}."""
        return "UdpLinkPoller"

    def add(self, link: SocketLink) -> None:
        """Read C{link} from now on (the first opens the epoll set, which the reactor then reads until L{close})."""
        epoll = self._epoll
        if epoll is None:
            epoll = self._epoll = select.epoll()
            self.reactor.addReader(self)
        fd = link.fd
        epoll.register(fd, select.EPOLLIN)
        self.links[fd] = link

    def doRead(self) -> None:
        """
        Read one datagram from every link that is ready and relay it to the
        link's session, and again while some are (at most
        L{READS_PER_EVENT} rounds): a round that finds none costs one
        C{epoll_wait} for all the links, where reading each link until
        C{EAGAIN} would cost a failed C{recv} (and its exception) per link.
        An error queued on a socket instead of a datagram (ICMP port or
        host unreachable) is a refusal.
        """
        epoll = self._epoll
        links = self.links
        for _ in range(READS_PER_EVENT):
            if epoll is None:
                return
            ready = epoll.poll(0, len(links) or 1)
            if not ready:
                return
            for fd, _events in ready:
                link = links.get(fd)
                if link is not None:
                    try:
                        try:
                            data = link.socket.recv(MAX_DATAGRAM)
                        except (BlockingIOError, InterruptedError):
                            continue
                        except OSError:
                            link.session.refused()
                        else:
                            link.session.from_backend(data)
                    except Exception:
                        # As a Twisted port does: log it and lose only this
                        # datagram, not the set with every other session.
                        log.failure("relaying a UDP datagram from {backend} failed", backend=link.peer)
            epoll = self._epoll

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped the set (it never should): end every link as refused, close the set."""
        for link in list(self.links.values()):
            link.session.refused()
        self._close()

    def close(self) -> None:
        """Stop reading and close the epoll set once no link is left (a later L{add} opens another)."""
        if self._epoll is not None and not self.links:
            self.reactor.removeReader(self)
            self._close()

    def _close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None


class SocketLink:
    """
    A non-blocking socket connected to the backend, read by its proxy's
    L{LinkPoller} one datagram at a time.

    The socket is a plain C{socket.SocketType} (the C type under
    C{socket.socket}): a link needs none of the Python wrapper's features,
    whose C{__init__} and C{close} cost three Python calls per session.

    @ivar socket: the socket (closed once the link is).
    @ivar fd: the socket's descriptor, -1 once closed.
    """

    def __init__(self, poller: LinkPoller, session: LinkUser, ip: str, port: int) -> None:
        """
        @raise CannotOpen: when the socket cannot be opened or connected.
        """
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET  # ip is an address, not a name
        try:
            sock = socket.SocketType(family, _NON_BLOCKING_DATAGRAMS)
        except OSError as e:
            raise CannotOpen(f"cannot open a socket to the backend: {e}") from e
        peer = (ip, port)
        try:
            sock.connect(peer)
        except OSError as e:
            sock.close()
            raise CannotOpen(f"cannot reach the backend: {e}") from e
        self.poller = poller
        self.session = session
        self.peer = peer
        self.socket = sock
        self.fd = sock.fileno()
        poller.add(self)

    def fileno(self) -> int:
        """The socket's descriptor, -1 once closed."""
        return self.fd

    def send(self, data: bytes) -> bool:
        """Send C{data} to the backend; a full buffer drops it."""
        try:
            self.socket.send(data)
        except ConnectionRefusedError:
            self.session.refused()
            return False
        except OSError as e:
            if e.errno in _DROPPED:
                return False
            raise
        return True

    def close(self) -> None:
        """Stop reading and close the socket, now (the session asked: it is not told)."""
        if self.fd < 0:
            return None
        del self.poller.links[self.fd]  # closing the socket takes it out of the epoll set
        self.fd = -1
        self.socket.close()
        return None


class PortLink(DatagramProtocol):
    """A Twisted UDP port connected to the backend, for reactors without real descriptors."""

    noisy = False

    def __init__(self, reactor: Any, session: LinkUser, ip: str, port: int) -> None:
        """
        @raise CannotOpen: when the port cannot be opened or connected.
        """
        self.session = session
        self._closing: Deferred[None] | None = None
        interface = "::" if isIPv6Address(ip) else "0.0.0.0"
        try:
            self.port: Any = reactor.listenUDP(0, self, interface=interface, maxPacketSize=MAX_DATAGRAM)
        except CannotListenError as e:
            raise CannotOpen(f"cannot open a socket to the backend: {e.socketError}") from e
        try:
            self.port.connect(ip, port)
        except OSError as e:
            self.close()
            raise CannotOpen(f"cannot reach the backend: {e}") from e

    def send(self, data: bytes) -> bool:
        """Send C{data} to the backend."""
        self.port.write(data)
        return True

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """A datagram from the backend."""
        self.session.from_backend(datagram)

    def connectionRefused(self) -> None:
        """ICMP port unreachable."""
        self.session.refused()

    def stopProtocol(self) -> None:
        """The port closed, asked or not."""
        if self._closing is None:
            self._closing = succeed(None)
        self.session.socket_closed()

    def close(self) -> Deferred[None] | None:
        """Stop the port; fires once it is closed."""
        if self._closing is None:
            self._closing = maybeDeferred(self.port.stopListening).addCallback(lambda _: None)
        return self._closing
