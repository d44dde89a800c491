"""
A UDP session's connected socket to its backend (its I{link}).

Each session has its own socket, C{connect()}ed to the backend, so the
kernel delivers the backend's answers on it (and drops datagrams from any
other address), and an ICMP port unreachable from the backend's host comes
back on it as a refusal.

Two kinds, chosen by L{link_opener}:

  - a plain non-blocking socket (C{socket.SocketType}, the C type under
    C{socket.socket}) in the epoll set of its proxy's L{LinkPoller}, for a
    reactor that polls real descriptors (every L{PosixReactorBase}, on
    Linux).  Opening and closing it makes no Twisted port and no Python
    object of its own, so no log line, no address checks per datagram and no
    deferred close, and a ready socket is read without the reactor's
    dispatch: the per-session cost that dominates request/response traffic
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

from balancer.proxy.compiled import compiled

log = Logger()

#: The compiled round of L{LinkPoller.doRead} new pollers use (L{balancer.proxy.compiled}), or C{None}.
compiled_read_links: Callable[..., int] | None = compiled.read_links if compiled is not None else None

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
        """A L{PortLink}'s port closed: asked for by L{Link.close}, or not (an error closed it)."""


class Link(Protocol):
    """
    A session's socket to its backend: a plain socket, or a L{PortLink}
    that sends and closes as one does.
    """

    def send(self, data: bytes, /) -> object:
        """
        Send C{data} to the backend.

        @raise OSError: as C{socket.send} does (a full buffer, a refusal...).
        """

    def close(self) -> Deferred[None] | None:
        """Close the socket; a deferred firing once it is closed, or C{None} once it is."""


class CannotOpen(Exception):
    """The socket could not be opened or connected; the message says which and why."""


def link_opener(reactor: Any, poller: LinkPoller | None) -> Callable[[LinkUser, str, int], Link]:
    """
    What opens a session's socket to a backend, called with the session, the
    backend's IP and port: C{poller}'s L{LinkPoller.open} when there is a
    poller, else a L{PortLink} of C{reactor} (a C{functools.partial} of the
    class: no call of its own per session).  Either raises L{CannotOpen}
    when the socket cannot be opened or connected.
    """
    if poller is not None:
        return poller.open
    return functools.partial(PortLink, reactor)


def dropped(error: OSError) -> bool:
    """Whether a send that raised C{error} lost only its datagram (a full buffer, a datagram too large for the path)."""
    return error.errno in _DROPPED


def peer_name(sock: socket.SocketType) -> object:
    """The address C{sock} is connected to, for a log line (C{"?"} once it is closed)."""
    try:
        return sock.getpeername()
    except OSError:
        return "?"


@implementer(IReadDescriptor)
class LinkPoller:
    """
    The epoll set of one proxy's sessions' sockets, itself one descriptor
    of the reactor: readable when any of them is.  Each turn of the reactor
    that finds it readable reads every ready socket, without the reactor's
    own dispatch (its log context and checks) per socket; a session that
    ends takes its socket out of L{links} and closes it, which takes it out
    of the set.

    Only where the reactor polls real descriptors (a L{PosixReactorBase})
    and C{select.epoll} exists: see L{for_reactor}.

    @ivar links: each open socket and its session, by descriptor.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self.links: dict[int, tuple[socket.SocketType, LinkUser]] = {}
        self._epoll: select.epoll | None = None
        self._compiled = compiled_read_links

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

    def open(self, session: LinkUser, ip: str, port: int) -> socket.SocketType:
        """
        A non-blocking socket connected to C{ip} and C{port}, read from now
        on for C{session} (the first opens the epoll set, which the reactor
        then reads until L{close}).  Its session takes it out of L{links}
        before closing it.

        @raise CannotOpen: when the socket cannot be opened or connected.
        """
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET  # ip is an address, not a name
        try:
            sock = socket.SocketType(family, _NON_BLOCKING_DATAGRAMS)
        except OSError as e:
            raise CannotOpen(f"cannot open a socket to the backend: {e}") from e
        try:
            sock.connect((ip, port))
        except OSError as e:
            sock.close()
            raise CannotOpen(f"cannot reach the backend: {e}") from e
        fd = sock.fileno()
        try:
            epoll = self._epoll
            if epoll is None:
                epoll = self._epoll = select.epoll()
                self.reactor.addReader(self)
            epoll.register(fd, select.EPOLLIN)
        except OSError as e:  # out of descriptors or of epoll watches
            sock.close()
            raise CannotOpen(f"cannot watch the socket to the backend: {e}") from e
        self.links[fd] = (sock, session)
        return sock

    def doRead(self) -> None:
        """
        Read one datagram from every socket that is ready and relay it to
        its session, and again while some are (at most L{READS_PER_EVENT}
        rounds): a round that finds none costs one C{epoll_wait} for all the
        sockets, where reading each socket until C{EAGAIN} would cost a
        failed C{recv} (and its exception) per socket.  An error queued on
        a socket instead of a datagram (ICMP port or host unreachable) is a
        refusal.  Each round runs compiled where the extension is built
        (reading into one buffer, without a socket object's call).
        """
        epoll = self._epoll
        links = self.links
        compiled = self._compiled
        for _ in range(READS_PER_EVENT):
            if epoll is None:
                return
            if compiled is not None:
                ready = compiled(epoll.fileno(), links, len(links) or 1, self._relay_failed)
            else:
                ready = self._read_round(epoll, links)
            if not ready:
                return
            epoll = self._epoll

    def _read_round(self, epoll: select.epoll, links: dict[int, tuple[socket.SocketType, LinkUser]]) -> int:
        """
        One round of L{doRead}: the compiled C{read_links}, in Python.
        Returns how many sockets were ready.
        """
        ready = epoll.poll(0, len(links) or 1)
        for fd, _events in ready:
            link = links.get(fd)
            if link is not None:
                sock, session = link
                try:
                    try:
                        data = sock.recv(MAX_DATAGRAM)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        session.refused()
                    else:
                        session.from_backend(data)
                except Exception:
                    # As a Twisted port does: log it and lose only this
                    # datagram, not the set with every other session.
                    self._relay_failed(sock)
        return len(ready)

    def _relay_failed(self, sock: socket.SocketType) -> None:
        """Relaying a datagram of C{sock} raised: log the exception being handled."""
        log.failure("relaying a UDP datagram from {backend} failed", backend=peer_name(sock))

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped the set (it never should): end every session as refused, close the set."""
        for _, session in list(self.links.values()):
            session.refused()
        self._close()

    def close(self) -> None:
        """Stop reading and close the epoll set once no socket is left (a later L{open} opens another)."""
        if self._epoll is not None and not self.links:
            self.reactor.removeReader(self)
            self._close()

    def _close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
            self._epoll = None


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

    def send(self, data: bytes, /) -> None:
        """Send C{data} to the backend (the port reports a refusal to L{connectionRefused})."""
        self.port.write(data)

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
