"""
The UDP proxy (C{protocol = "udp"}): gobetween's sessions over datagrams.

A client (its address and port) has one current session.  Its first datagram
picks a backend and opens a connected UDP socket to it; the client's
datagrams go to the backend through that socket, and whatever the backend
sends back goes to the client from the server's own address, so the client
sees answers from where it sent.  Bytes count as C{tx} (client to backend)
and C{rx} (backend to client) on the backend and the server; each session
counts as one connection of each.

A session ends:

  - after C{client_idle_timeout} without a datagram from the client, or
    C{backend_idle_timeout} without one from the backend (whichever are
    set; with neither, after L{DEFAULT_IDLE_TIMEOUT} without traffic either
    way, so sessions cannot pile up: gobetween requires one of the four
    limits, and this default makes a session with only C{max_*} limits end
    too);
  - right after the C{max_responses}-th datagram from the backend
    (C{max_responses = 1} for DNS: one answer, then the socket closes);
  - when the backend refuses (ICMP port unreachable), counted in its
    C{refused_connections}.

Each session ended is published as a L{FinishedConnection} (protocol
C{udp}, its connect time the time to open its socket to the backend) when
anyone subscribed (the access log, the metrics); else no record is made.

Admission: a datagram from a client without a session opens one only while
the server has fewer live sessions (those past C{max_requests} included,
since each holds a socket) than its limit: C{max_connections} when set,
else C{[defaults] udp_max_sessions}.  Past it the datagram is dropped and
counted in the server's C{over_limit}.  gobetween 0.8's UDP server ignores
C{max_connections}; here it bounds the sockets a flood of (spoofable)
source addresses can make the balancer open.

After C{max_requests} datagrams from the client the session takes no more
from it: the client's next datagram opens a new session (and may pick
another backend), while the old one still relays answers until one of the
endings above.  gobetween documents the same ("accepts no more requests than
max_requests and closes session"); its code instead sends single datagrams
without reading answers when C{max_requests = 1} and does not enforce larger
values.
"""

from __future__ import annotations

import errno
import functools
import socket
from typing import Any, Callable

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancer.backends import Backend, Pool
from balancer.config.addresses import is_loopback
from balancer.config.schema import ServerConfig, UdpConfig
from balancer.proxy.access import AccessRules
from balancer.proxy.admission import Admission
from balancer.proxy.finished import (
    BACKEND_IDLE,
    CLIENT_IDLE,
    CLOSED_BY_BALANCER,
    CONNECT_FAILED,
    IDLE_TIMEOUT,
    RESPONSES_DONE,
    SHUTDOWN,
    FinishedConnection,
    FinishedConnections,
    address_text,
)
from balancer.proxy.udp_idle import IdleQueue
from balancer.proxy.udp_links import MAX_DATAGRAM, CannotOpen, Link, LinkPoller, dropped, link_opener
from balancer.stats import ServerCounters

log = Logger()

DEFAULT_IDLE_TIMEOUT = 30.0
"""Seconds without traffic after which a session ends when no idle timeout is configured."""

_MAX_PENDING = 64
"""Client datagrams kept while a backend's host name resolves; more are dropped."""

Address = tuple[str, int]


@functools.lru_cache(maxsize=1024)
def is_ip_address(host: str) -> bool:
    """Whether C{host} is an IPv4 or IPv6 address rather than a name (remembered: a backend's host is asked per session)."""
    return isIPAddress(host) or isIPv6Address(host)


#: The hosts a listener bound to every interface reports.
WILDCARDS = frozenset({"0.0.0.0", "::", ""})

#: Errors of a send to a client that lose only that datagram (UDP gives no
#: delivery guarantee; Twisted's port would raise them out of the read loop).
_CLIENT_DROPS = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.EMSGSIZE, errno.EINTR, errno.ECONNREFUSED})


def client_sender(transport: Any) -> Callable[[bytes, Address], object]:
    """
    What sends a datagram to a client through the listening C{transport}:
    its socket's C{sendto} when it has one (a Twisted UDP port: it then
    skips the port's checks of the address, which came from C{recvfrom}),
    else C{transport.write}.  Its caller drops the datagram on an error of
    L{_CLIENT_DROPS} (a full buffer...).
    """
    sock = getattr(transport, "socket", None)
    if not isinstance(sock, socket.socket):
        return transport.write
    return sock.sendto


class UdpSession:
    """
    One client's exchange with one backend.

    @ivar client: the client's C{(host, port)}.
    @ivar backend: the backend chosen for it.
    @ivar requests: datagrams received from the client.
    @ivar responses: datagrams relayed from the backend.
    @ivar tx: bytes sent to the backend.
    @ivar rx: bytes relayed to the client.
    @ivar connect_seconds: how long opening its socket to the backend took
        (resolving its host included), or C{None} before.
    @ivar ended: whether the session is over.
    """

    # Slots: a session of a request/response service lives for one answer,
    # and its attributes are set and freed without a dictionary.
    __slots__ = (
        "proxy", "client", "backend", "started_at", "requests", "responses", "tx", "rx", "connect_seconds",
        "ended", "_traffic", "_link", "_pending", "_on_client", "_on_backend",
    )

    def __init__(self, proxy: UdpProxy, client: Address, backend: Backend, first: bytes) -> None:
        """
        Open the session of C{client}'s C{first} datagram: count it as a
        connection of C{backend} and of the server, start its idle timers,
        open its socket to the backend (resolving its host first if needed)
        and send C{first}.  All in this one call: for a C{max_responses = 1}
        service it runs for every request.
        """
        self.proxy = proxy
        self.client = client
        self.backend = backend
        self.started_at = started = proxy.clock.seconds()
        self.requests = 0
        self.responses = 0
        self.tx = 0
        self.rx = 0
        self.connect_seconds: float | None = None
        self.ended = False
        counters = backend.counters
        server = proxy.counters
        self._traffic = (counters.traffic, server.traffic)
        self._link: Link | None = None
        self._pending: list[bytes] | None = None
        proxy.sessions[client] = self
        counters.active_connections += 1
        counters.total_connections += 1
        server.active_connections += 1  # the admission's count, as Admission.take counts a client taken
        server.total_connections += 1
        on_client, on_backend = self._on_client, self._on_backend = proxy.idle
        if on_client is not None:  # on_client.add(self, started), without its call
            on_client.members[self] = started
            if on_client.call is None:
                on_client.arm()
        if on_backend is not None and on_backend is not on_client:
            on_backend.members[self] = started
            if on_backend.call is None:
                on_backend.arm()
        spec = backend.spec
        host = spec.host
        if not is_ip_address(host):
            self.from_client(first, True)
            proxy.reactor.resolve(host).addCallbacks(self._connect, self._unresolved)
            return
        try:
            self._link = link = proxy.open_link(self, host, spec.port)
        except CannotOpen as e:
            self.end(str(e), CONNECT_FAILED)
            return
        self.connect_seconds = proxy.clock.seconds() - started
        # from_client(first, True), without its call and checks:
        self.requests = 1
        try:
            link.send(first)
        except OSError as e:
            self._unsent(e)
        else:
            self.tx = size = len(first)
            counters.traffic.tx += size
            server.traffic.tx += size
        if proxy.max_requests == 1:
            proxy.retire(self)

    def _connect(self, ip: str) -> None:
        if self.ended:
            return
        proxy = self.proxy
        try:
            self._link = proxy.open_link(self, ip, self.backend.spec.port)
        except CannotOpen as e:
            self.end(str(e), CONNECT_FAILED)
            return
        self.connect_seconds = proxy.clock.seconds() - self.started_at
        pending, self._pending = self._pending, None
        for data in pending or ():
            if self.ended:
                break
            self._send(data)

    def _unresolved(self, reason: Failure) -> None:
        self.end(f"cannot resolve {self.backend.host}: {reason.getErrorMessage()}", CONNECT_FAILED)

    def from_client(self, data: bytes, first: bool = False) -> None:
        """
        A datagram from the client: send it to the backend.

        @param first: whether it is the session's first (its idle timers
            started with it: no need to tell them).
        """
        if self.ended:
            return
        self.requests += 1
        if not first and self._on_client is not None:
            self._on_client.touch(self)
        link = self._link
        if link is not None:
            try:  # as _send does, without a call of its own per datagram
                link.send(data)
            except OSError as e:
                self._unsent(e)
            else:
                size = len(data)
                self.tx += size
                backend, server = self._traffic
                backend.tx += size
                server.tx += size
        else:
            pending = self._pending
            if pending is None:
                self._pending = [data]
            elif len(pending) < _MAX_PENDING:
                pending.append(data)
        limit = self.proxy.max_requests
        if limit and self.requests >= limit:
            self.proxy.retire(self)

    def _send(self, data: bytes) -> None:
        try:
            self._link.send(data)  # type: ignore[union-attr]
        except OSError as e:
            self._unsent(e)
            return
        size = len(data)
        self.tx += size
        backend, server = self._traffic
        backend.tx += size
        server.tx += size

    def _unsent(self, error: OSError) -> None:
        """
        Sending a datagram to the backend raised C{error}: a refusal ends
        the session, a full buffer loses the datagram, anything else is raised.
        """
        if isinstance(error, ConnectionRefusedError):
            self.refused()
        elif not dropped(error):
            raise error

    def from_backend(self, data: bytes) -> None:
        """A datagram from the backend: relay it to the client (an error of L{_CLIENT_DROPS} loses it)."""
        if self.ended:
            return
        proxy = self.proxy
        try:
            proxy.to_client(data, self.client)
        except OSError as e:
            if e.errno not in _CLIENT_DROPS:
                raise
        size = len(data)
        self.rx += size
        backend, server = self._traffic
        backend.rx += size
        server.rx += size
        self.responses += 1
        limit = proxy.max_responses
        if limit and self.responses >= limit:
            self.end("max_responses reached", RESPONSES_DONE)
        elif self._on_backend is not None:
            self._on_backend.touch(self)

    def refused(self) -> None:
        """The backend's host said nothing listens on its port (ICMP unreachable)."""
        if self.ended:
            return
        self.backend.counters.refused_connections += 1
        self.end("backend refused", CONNECT_FAILED)

    def socket_closed(self) -> None:
        """
        The backend socket closed.  Unasked, that is an ICMP error that the
        reactor reported as a closed socket (epoll does), so it counts as a refusal.
        """
        self._link = None
        self.refused()

    def end(self, why: str, reason: str = CLOSED_BY_BALANCER) -> None:
        """
        Close the backend socket, stop counting this session and publish it
        (when anyone subscribed: else no record is made).

        @param why: what ended it, for the debug log when it is a failure
            (the access log has every session and its reason).
        @param reason: why it ended, a reason of L{balancer.proxy.finished}.
        """
        if self.ended:
            return
        self.ended = True
        on_client, on_backend = self._on_client, self._on_backend
        if on_client is not None:  # on_client.remove(self), without its call
            members = on_client.members
            members.pop(self, None)
            if not members:
                on_client.disarm()
        if on_backend is not None and on_backend is not on_client:
            members = on_backend.members
            members.pop(self, None)
            if not members:
                on_backend.disarm()
        proxy = self.proxy
        link = self._link
        if link is not None:
            self._link = None
            poller = proxy.poller
            if poller is not None:
                del poller.links[link.fileno()]  # type: ignore[attr-defined]  # a plain socket
            closing = link.close()
            if closing is not None and not closing.called:
                proxy.closing(closing)
        self._pending = None
        if reason == CONNECT_FAILED:
            log.debug("{server}: UDP session {client} -> {backend} ended: {why}",
                      server=proxy.name, client=self.client, backend=self.backend.key, why=why)
        client = self.client
        sessions = proxy.sessions
        if sessions.get(client) is self:
            del sessions[client]
        backend = self.backend
        backend.counters.active_connections -= 1
        proxy.counters.active_connections -= 1  # the admission's count (Admission.ended)
        released = proxy.released
        if released is not None:
            released(backend)
        finished = proxy.finished
        if finished.wanted:
            finished.publish(
                FinishedConnection(
                    server=proxy.name,
                    protocol="udp",
                    client=address_text(*client),
                    backend=backend.key,
                    started=self.started_at,
                    connect_seconds=self.connect_seconds,
                    duration_seconds=proxy.clock.seconds() - self.started_at,
                    rx=self.rx,
                    tx=self.tx,
                    reason=reason,
                )
            )

    def client_idle(self) -> None:
        """No datagram from the client for its C{client_idle_timeout}."""
        self.end("client idle", CLIENT_IDLE)

    def backend_idle(self) -> None:
        """No datagram from the backend for its C{backend_idle_timeout}."""
        self.end("backend idle", BACKEND_IDLE)

    def idle(self) -> None:
        """No datagram either way for L{DEFAULT_IDLE_TIMEOUT}."""
        self.end("session idle", IDLE_TIMEOUT)


IdleQueues = tuple["IdleQueue[UdpSession] | None", "IdleQueue[UdpSession] | None"]


class UdpProxy(DatagramProtocol):
    """
    A UDP server's listening protocol: listen with
    C{reactor.listenUDP(port, proxy, interface=host)}.

    @ivar sessions: each client's current session, by C{(host, port)}.
    @ivar counters: the server's statistics, updated as datagrams move.
    @ivar admission: its access rules and limit of live sessions.
    @ivar poller: the epoll set of its sessions' sockets, or C{None} when
        its reactor needs Twisted ports for them.
    @ivar open_link: opens a session's socket (L{link_opener}).
    @ivar to_client: sends a datagram to a client (L{client_sender}).
    @ivar idle: the idle queues a session opened now joins: its client's
        and its backend's (C{None} for a timeout not set), or with neither
        set, the same queue of L{DEFAULT_IDLE_TIMEOUT} twice; found again
        when a timeout changes, not once per session.
    @ivar transport: the listening UDP port (an C{IUDPTransport}, and its
        C{maxPacketSize}, which no interface names: hence C{Any}).
    """

    transport: Any

    noisy = False

    def __init__(
        self,
        choose: Callable[[str], Backend | None],
        counters: ServerCounters,
        *,
        reactor: Any,
        clock: IReactorTime | None = None,
        name: str = "udp",
        max_requests: int = 0,
        max_responses: int = 0,
        client_idle_timeout: float = 0.0,
        backend_idle_timeout: float = 0.0,
        access: AccessRules | None = None,
        released: Callable[[Backend], None] | None = None,
        max_sessions: int = 0,
        udp_max_sessions: int = 0,
        finished: FinishedConnections | None = None,
        backends: Pool | None = None,
    ) -> None:
        """
        @param choose: picks the backend for a new session from the client's
            IP (the server's strategy over its candidates), C{None} if none.
        @param counters: the server's counters.
        @param reactor: listens and resolves (C{IReactorUDP}, C{IReactorCore}).
        @param clock: runs the idle timers; the reactor when not given.
        @param name: the server's name, for the log.
        @param max_requests: datagrams a session takes from its client (0: no limit).
        @param max_responses: datagrams a session relays from its backend (0: no limit).
        @param client_idle_timeout: seconds (0: none), see the module docstring.
        @param backend_idle_timeout: seconds (0: none).
        @param access: client rules; a refused client's datagrams are dropped.
        @param released: called with the backend when a session ends.
        @param max_sessions: live sessions at most (0: no limit); see the module docstring.
        @param udp_max_sessions: C{[defaults] udp_max_sessions}, what
            L{configure} takes as the limit for a server without C{max_connections}.
        @param finished: where each session ended is published (by default, a publisher of its own).
        @param backends: the server's backends (a datagram from one of their
            L{addresses<Pool.addresses>} opens no session).
        """
        self.choose = choose
        self.backends = backends if backends is not None else Pool()
        self.loops_refused = 0
        # The listener's own (host, port); no port matches -1 before it listens.
        self._own: tuple[str, int] = ("", -1)
        self.counters = counters
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.name = name
        self.max_requests = max_requests
        self.max_responses = max_responses
        self.admission = Admission(counters, name, access=access, limit=max_sessions)
        self.released = released
        self.udp_max_sessions = udp_max_sessions
        self.finished = finished if finished is not None else FinishedConnections()
        self.sessions: dict[Address, UdpSession] = {}
        self._queues: dict[tuple[str, float], IdleQueue[UdpSession]] = {}
        self._client_idle_timeout = client_idle_timeout
        self._backend_idle_timeout = backend_idle_timeout
        self.idle: IdleQueues = self._idle_queues()
        self.poller = LinkPoller.for_reactor(reactor)
        self.open_link = link_opener(reactor, self.poller)
        self.to_client: Callable[[bytes, Address], object] = self._write_to_client
        self._closing: set[Deferred[None]] = set()

    @classmethod
    def from_config(
        cls,
        config: ServerConfig,
        choose: Callable[[str], Backend | None],
        counters: ServerCounters,
        *,
        reactor: Any,
        clock: IReactorTime | None = None,
        name: str = "udp",
        released: Callable[[Backend], None] | None = None,
        udp_max_sessions: int = 0,
        finished: FinishedConnections | None = None,
        backends: Pool | None = None,
    ) -> UdpProxy:
        """
        The proxy for a C{protocol = "udp"} server (with C{[defaults]} applied).

        @param udp_max_sessions: C{[defaults] udp_max_sessions}, the limit
            when C{config} has no C{max_connections}.
        """
        proxy = cls(choose, counters, reactor=reactor, clock=clock, name=name, released=released,
                    udp_max_sessions=udp_max_sessions, finished=finished, backends=backends)
        proxy.configure(config)
        return proxy

    def configure(self, config: ServerConfig) -> None:
        """
        Take the limits, idle timeouts and access rules of C{config} (a
        server reconfigured in place); sessions already open keep their timeouts.
        """
        udp = config.udp if config.udp is not None else UdpConfig()
        self.max_requests = udp.max_requests
        self.max_responses = udp.max_responses
        self.client_idle_timeout = config.client_idle_timeout or 0.0
        self.backend_idle_timeout = config.backend_idle_timeout or 0.0
        self.admission.configure(config, self.udp_max_sessions)

    @property
    def client_idle_timeout(self) -> float:
        """Seconds without a datagram from the client that end a session (0: none), for sessions opened from now on."""
        return self._client_idle_timeout

    @client_idle_timeout.setter
    def client_idle_timeout(self, seconds: float) -> None:
        self._client_idle_timeout = seconds
        self.idle = self._idle_queues()

    @property
    def backend_idle_timeout(self) -> float:
        """Seconds without a datagram from the backend that end a session (0: none), for sessions opened from now on."""
        return self._backend_idle_timeout

    @backend_idle_timeout.setter
    def backend_idle_timeout(self, seconds: float) -> None:
        self._backend_idle_timeout = seconds
        self.idle = self._idle_queues()

    def startProtocol(self) -> None:
        """Read datagrams of any size, not Twisted's default 8 KiB; answer clients through the socket itself."""
        self.transport.maxPacketSize = MAX_DATAGRAM
        self.to_client = client_sender(self.transport)
        own = self.transport.getHost()
        self._own = (own.host, own.port)

    def _write_to_client(self, data: bytes, client: Address) -> None:
        self.transport.write(data, client)

    def stopProtocol(self) -> None:
        """The listener closed: end every session."""
        self.close_all()

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """A datagram from a client (C{addr}, its C{(host, port)}): to its session, opening one if needed."""
        session = self.sessions.get(addr)
        if session is not None:
            session.from_client(datagram)
            return
        host, port = addr[0], addr[1]
        # loops_back() only where it could be true (the pool's addresses hold the forms
        # sockets report): a call less per session.
        if (port == self._own[1] or addr in self.backends.addresses) and self.loops_back(host, port):
            self.loops_refused += 1
            if self.loops_refused & (self.loops_refused - 1) == 0:  # the 1st, 2nd, 4th, 8th...
                log.warn("{server}: dropped a datagram from {client} (port {port}), this server's own address "
                         "or a backend's: its answers would come back as requests, forever ({count} so far)",
                         server=self.name, client=host, port=port, count=self.loops_refused)
            return
        admission = self.admission
        limit = admission.limit
        # Admission.refusal only when it could refuse: a call less per session.
        if admission.access is not None or (limit and self.counters.active_connections >= limit):
            if admission.refusal(host) is not None:
                return
        backend = self.choose(host)
        if backend is None:
            self.counters.no_backend += 1
            log.warn("{server}: no backend for UDP client {client}", server=self.name, client=host)
            return
        UdpSession(self, addr, backend, datagram)

    def loops_back(self, host: str, port: int) -> bool:
        """
        Whether a session for a client at C{host}, C{port} would relay to
        itself: the client's address (forged: UDP sources are not checked)
        is this listener's own, or one of the server's backends', so that
        answers sent to it would come back as the client's requests.
        """
        own = self._own
        if port == own[1] and (host == own[0] or (own[0] in WILDCARDS and is_loopback(host))):
            return True
        return (host, port) in self.backends.addresses

    def _idle_queues(self) -> IdleQueues:
        client, backend = self._client_idle_timeout, self._backend_idle_timeout
        if not (client or backend):
            default = self._queue("session", DEFAULT_IDLE_TIMEOUT, UdpSession.idle)
            return default, default
        return (
            self._queue("client", client, UdpSession.client_idle) if client else None,
            self._queue("backend", backend, UdpSession.backend_idle) if backend else None,
        )

    def _queue(self, which: str, timeout: float, on_idle: Callable[[UdpSession], None]) -> IdleQueue[UdpSession]:
        queue = self._queues.get((which, timeout))
        if queue is None:
            queue = self._queues[which, timeout] = IdleQueue(self.clock, timeout, on_idle)
        return queue

    def retire(self, session: UdpSession) -> None:
        """C{session} takes no more client datagrams: the client's next one opens a new session."""
        if self.sessions.get(session.client) is session:
            del self.sessions[session.client]

    def closing(self, closed: Deferred[None]) -> None:
        """A session's backend socket is closing: L{close_all} waits for C{closed} to fire."""
        self._closing.add(closed)
        closed.addBoth(self._socket_closed, closed)

    def _socket_closed(self, result: object, closed: Deferred[None]) -> object:
        self._closing.discard(closed)
        return result

    def live_sessions(self) -> list[UdpSession]:
        """
        Every session not yet ended, including those past C{max_requests}:
        each is in one idle queue at least from its start to its end (so no
        set of its own is kept, for a call less per session either way).
        """
        return list(dict.fromkeys(session for queue in self._queues.values() for session in queue.members))

    def close_all(self) -> Deferred[None]:
        """End every session now; fires once every backend socket is closed."""
        for session in self.live_sessions():
            session.end("closed", SHUTDOWN)
        if self.poller is not None:
            self.poller.close()
        return gatherResults(list(self._closing), consumeErrors=True).addCallback(lambda _: None)
