"""
Tests for L{balancer.proxy.udp_links}: each UDP session's connected socket
to its backend, on real sockets of 127.0.0.1 (port 0), and the choice of a
Twisted port with reactors that have no real descriptors.
"""

from __future__ import annotations

import errno
import os
import select
import socket
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancer.backends import Backend
from balancer.config.addresses import BackendSpec
from balancer.proxy.finished import CONNECT_FAILED, FinishedConnection, FinishedConnections
from balancer.proxy.udp import MAX_DATAGRAM, UdpProxy, client_sender
from balancer.proxy import udp_links
from balancer.proxy.udp_links import READS_PER_EVENT, LinkPoller, PortLink
from balancer.stats import ServerCounters
from tests.support.loops import use_loop
from tests.support.peers import Address, DatagramPeer, listen_proxy
from tests.support.reactors import UdpReactor
from tests.support.waiting import until


class OtherPortBackend(DatagramProtocol):
    """A backend that answers from another socket (another port) than the one asked."""

    noisy = False

    def __init__(self, other: socket.socket) -> None:
        self.other = other
        self.received: list[bytes] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        self.received.append(datagram)
        self.other.sendto(b"from elsewhere", addr)
        self.transport.write(b"from here", addr)


REAL_EPOLL = select.epoll


class FullEpoll:
    """An epoll set that takes no more descriptors (its C{max_user_watches} reached)."""

    def __init__(self) -> None:
        self.real = REAL_EPOLL()

    def fileno(self) -> int:
        return self.real.fileno()

    def register(self, fd: int, events: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def poll(self, timeout: float, maxevents: int) -> list[tuple[int, int]]:
        return self.real.poll(timeout, maxevents)

    def close(self) -> None:
        self.real.close()


class Burst(DatagramProtocol):
    """A backend that answers each datagram with C{count} numbered datagrams."""

    noisy = False

    def __init__(self, count: int) -> None:
        self.count = count

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        for i in range(self.count):
            self.transport.write(b"%d" % i, addr)


class LinkTestCase(TestCase):
    """
    A proxy on the real reactor (its clock too), backends and clients on
    127.0.0.1; its sessions' sockets read by the Python loop (a subclass
    with C{compiled} set: the compiled one).
    """

    timeout = 10
    compiled = False

    def setUp(self) -> None:
        use_loop(self, self.compiled)
        self.counters = ServerCounters()

    def listen(self, protocol: DatagramProtocol) -> int:
        """Listen with C{protocol} on 127.0.0.1, port 0; return the port."""
        port = reactor.listenUDP(0, protocol, interface="127.0.0.1", maxPacketSize=MAX_DATAGRAM)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def proxy(self, backend: Backend, **options: Any) -> tuple[UdpProxy, Address]:
        """A listening proxy to C{backend}; its sessions closed after the test."""
        proxy = UdpProxy(lambda host: backend, self.counters, reactor=reactor, **options)
        return proxy, listen_proxy(self, proxy)

    def client(self) -> DatagramPeer:
        """A listening test client."""
        peer = DatagramPeer()
        self.listen(peer)
        return peer


class SocketLinkTests(LinkTestCase):
    """With a real reactor, each session has a plain connected socket in its proxy's epoll set."""

    @inlineCallbacks
    def test_answersArriveThroughTheSessionsConnectedSocket(self):  # type: ignore[no-untyped-def]
        server = DatagramPeer(replies=1)
        backend = Backend(BackendSpec("127.0.0.1", self.listen(server)))
        proxy, address = self.proxy(backend, client_idle_timeout=10.0)
        client = self.client()
        client.transport.write(b"q", address)
        yield client.wait_for(1)
        poller = proxy.poller
        assert poller is not None
        ((sock, session),) = poller.links.values()
        self.assertIs(type(sock), socket.SocketType)
        self.assertEqual(proxy.live_sessions(), [session])
        self.assertEqual(sock.getpeername(), ("127.0.0.1", backend.port))
        self.assertEqual(sock.getsockname(), server.sources()[0])
        self.assertEqual(client.received, [(b"0:q", address)])
        self.assertFalse(sock.getblocking())

    @inlineCallbacks
    def test_answersFromAnotherPortAreNotRelayed(self):  # type: ignore[no-untyped-def]
        """The socket is connected: the kernel drops what comes from elsewhere, as for Twisted's connected ports."""
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(other.close)
        other.bind(("127.0.0.1", 0))
        server = OtherPortBackend(other)
        backend = Backend(BackendSpec("127.0.0.1", self.listen(server)))
        proxy, address = self.proxy(backend, client_idle_timeout=10.0)
        client = self.client()
        client.transport.write(b"q", address)
        yield client.wait_for(1)
        client.transport.write(b"q2", address)
        yield client.wait_for(2)
        self.assertEqual(client.data(), [b"from here", b"from here"])
        (session,) = proxy.sessions.values()
        self.assertEqual((session.responses, session.rx), (2, 18))

    @inlineCallbacks
    def test_burstLargerThanOneTurnIsRelayedWhole(self):  # type: ignore[no-untyped-def]
        count = READS_PER_EVENT * 2 + 5
        backend = Backend(BackendSpec("127.0.0.1", self.listen(Burst(count))))
        _, address = self.proxy(backend, client_idle_timeout=10.0)
        client = self.client()
        client.transport.write(b"go", address)
        yield client.wait_for(count)
        self.assertEqual(sorted(client.data()), sorted(b"%d" % i for i in range(count)))
        self.assertEqual(backend.counters.traffic.rx, sum(len(b"%d" % i) for i in range(count)))

    @inlineCallbacks
    def test_manySessionsAtOnce(self):  # type: ignore[no-untyped-def]
        server = DatagramPeer(replies=1)
        backend = Backend(BackendSpec("127.0.0.1", self.listen(server)))
        proxy, address = self.proxy(backend, client_idle_timeout=10.0)
        clients = [self.client() for _ in range(200)]
        for i, client in enumerate(clients):
            client.transport.write(b"%d" % i, address)
        for client in clients:
            yield client.wait_for(1)
        self.assertEqual([c.data() for c in clients], [[b"0:%d" % i] for i in range(200)])
        poller = proxy.poller
        assert poller is not None
        self.assertEqual((len(proxy.live_sessions()), len(poller.links)), (200, 200))
        self.assertEqual(len(set(server.sources())), 200)
        self.assertEqual((self.counters.active_connections, backend.counters.total_connections), (200, 200))
        yield proxy.close_all()
        self.assertEqual((poller.links, poller.fileno()), ({}, -1))
        self.assertEqual(self.counters.active_connections, 0)

    @inlineCallbacks
    def test_backendGoneMidSessionIsARefusal(self):  # type: ignore[no-untyped-def]
        """ICMP port unreachable on a session's socket ends it and counts in the backend's refused connections."""
        server = DatagramPeer(replies=1)
        port = reactor.listenUDP(0, server, interface="127.0.0.1")
        backend = Backend(BackendSpec("127.0.0.1", port.getHost().port))
        proxy, address = self.proxy(backend, client_idle_timeout=10.0)
        client = self.client()
        client.transport.write(b"q", address)
        yield client.wait_for(1)
        yield port.stopListening()
        client.transport.write(b"anyone?", address)
        yield until(lambda: not proxy.live_sessions(), what="the refused session to end")
        self.assertEqual(backend.counters.refused_connections, 1)
        self.assertEqual((backend.counters.active_connections, self.counters.active_connections), (0, 0))
        poller = proxy.poller
        assert poller is not None
        self.assertEqual(poller.links, {})

    def test_socketThatCannotConnectEndsTheSession(self) -> None:
        """
        C{connect()} fails at once (the broadcast address without
        C{SO_BROADCAST}: nothing is sent): the session ends as a failed connect, no socket kept.
        """
        backend = Backend(BackendSpec("255.255.255.255", 53))
        records: list[FinishedConnection] = []
        finished = FinishedConnections()
        finished.subscribe(records.append)
        proxy, _ = self.proxy(backend, client_idle_timeout=10.0, finished=finished)
        proxy.datagramReceived(b"q", ("127.0.0.1", 5000))
        self.assertEqual([(r.reason, r.connect_seconds) for r in records], [(CONNECT_FAILED, None)])
        self.assertEqual((proxy.live_sessions(), backend.counters.active_connections), ([], 0))
        poller = proxy.poller
        assert poller is not None
        self.assertEqual(poller.links, {})

    def test_socketThatCannotBeWatchedEndsTheSession(self) -> None:
        """The epoll set takes no more descriptors: the session ends as a failed connect, its socket closed."""
        self.patch(udp_links.select, "epoll", FullEpoll)
        backend = Backend(BackendSpec("127.0.0.1", 53))
        records: list[FinishedConnection] = []
        finished = FinishedConnections()
        finished.subscribe(records.append)
        proxy, _ = self.proxy(backend, client_idle_timeout=10.0, finished=finished)
        before = len(os.listdir("/proc/self/fd"))
        proxy.datagramReceived(b"q", ("127.0.0.1", 5000))
        self.assertEqual(len(os.listdir("/proc/self/fd")), before + 1)  # the epoll set, no socket
        self.assertEqual([r.reason for r in records], [CONNECT_FAILED])
        self.assertEqual((proxy.live_sessions(), backend.counters.active_connections, self.counters.active_connections),
                         ([], 0, 0))

    @inlineCallbacks
    def test_idleSessionsExpireOnTheReactorsClock(self):  # type: ignore[no-untyped-def]
        server = DatagramPeer(replies=1)
        backend = Backend(BackendSpec("127.0.0.1", self.listen(server)))
        proxy, address = self.proxy(backend, client_idle_timeout=0.2)
        clients = [self.client() for _ in range(5)]
        for client in clients:
            client.transport.write(b"q", address)
            yield client.wait_for(1)
        self.assertEqual(len(proxy.live_sessions()), 5)
        yield until(lambda: not proxy.live_sessions(), what="the idle sessions to end")
        poller = proxy.poller
        assert poller is not None
        self.assertEqual((poller.links, self.counters.active_connections), ({}, 0))


class CompiledSocketLinkTests(SocketLinkTests):
    """The same, the sessions' sockets read by the compiled loop."""

    compiled = True

    def test_thePollerReadsWithTheCompiledRound(self) -> None:
        proxy, _ = self.proxy(Backend(BackendSpec("127.0.0.1", 9)))
        assert proxy.poller is not None
        self.assertIs(proxy.poller._compiled, udp_links.compiled_read_links)
        self.assertIsNotNone(udp_links.compiled_read_links)


class ChoiceTests(SynchronousTestCase):
    """A real reactor gets plain sockets; memory reactors, Twisted ports."""

    def test_realReactorHasAPoller(self) -> None:
        self.assertIsInstance(LinkPoller.for_reactor(reactor), LinkPoller)

    def test_memoryReactorHasNone(self) -> None:
        self.assertIsNone(LinkPoller.for_reactor(MemoryReactorClock()))

    def test_memoryReactorSessionsUseTwistedPorts(self) -> None:
        udp = UdpReactor()
        backend = Backend(BackendSpec("127.0.0.1", 5353))
        proxy = UdpProxy(lambda host: backend, ServerCounters(), reactor=udp, clock=task.Clock())
        udp.listenUDP(53, proxy)
        proxy.datagramReceived(b"q", ("192.0.2.7", 1000))
        (listener, session_port) = udp.udpPorts
        self.assertIsInstance(udp.udpServers[1][1], PortLink)
        self.assertEqual((session_port.peer, session_port.sent), (("127.0.0.1", 5353), [(("127.0.0.1", 5353), b"q")]))


class ClientSenderTests(SynchronousTestCase):
    """
    Answers go to clients through the listening socket's C{sendto}; an error
    of a full buffer loses that answer only, any other is raised.
    """

    def test_listeningSocketsSendto(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)

        class Port:
            socket = sock

        self.assertEqual(client_sender(Port()), sock.sendto)

    def test_transportWithoutSocketWrites(self) -> None:
        written: list[tuple[bytes, Address]] = []

        class Transport:
            def write(self, data: bytes, addr: Address) -> None:
                written.append((data, addr))

        client_sender(Transport())(b"answer", ("192.0.2.7", 1000))
        self.assertEqual(written, [(b"answer", ("192.0.2.7", 1000))])

    def answered(self, error: OSError) -> tuple[UdpProxy, Backend]:
        """A one-answer session whose answer to its client fails with C{error}."""
        backend = Backend(BackendSpec("127.0.0.1", 5353))
        udp = UdpReactor()
        proxy = UdpProxy(lambda host: backend, ServerCounters(), reactor=udp, clock=task.Clock(), max_responses=1)

        def to_client(data: bytes, client: Address) -> None:
            raise error

        proxy.to_client = to_client
        proxy.datagramReceived(b"q", ("192.0.2.7", 1000))
        ((_, session_link, _, _),) = udp.udpServers  # the session's port (the proxy is not listening)
        session_link.datagramReceived(b"answer", ("127.0.0.1", 5353))
        return proxy, backend

    def test_fullBufferDropsTheAnswer(self) -> None:
        """The session goes on as if it was sent: it is counted, and ends as its answer was relayed."""
        proxy, backend = self.answered(BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable"))
        self.assertEqual((proxy.live_sessions(), backend.counters.traffic.rx), ([], 6))

    def test_otherErrorsRaise(self) -> None:
        """An error that is not the buffer's is raised (to the poller, which logs it): the answer is not counted."""
        error = OSError(errno.EPERM, "not allowed")
        self.assertRaises(OSError, self.answered, error)


class ErrorTests(LinkTestCase):
    """An error relaying one session's answer is logged and costs only that datagram."""

    @inlineCallbacks
    def test_errorInOneSessionLeavesTheOthers(self):  # type: ignore[no-untyped-def]
        server = DatagramPeer(replies=1)
        backend = Backend(BackendSpec("127.0.0.1", self.listen(server)))
        proxy, address = self.proxy(backend, client_idle_timeout=10.0)
        good, bad = self.client(), self.client()
        good.transport.write(b"one", address)
        yield good.wait_for(1)
        bad_address = ("127.0.0.1", bad.transport.getHost().port)
        sessions_before = len(proxy.live_sessions())
        failing = proxy.to_client

        def to_client(data: bytes, client: Address) -> None:
            if client == bad_address:
                raise OSError(errno.EPERM, "not allowed")
            failing(data, client)

        proxy.to_client = to_client
        bad.transport.write(b"two", address)
        yield until(lambda: len(server.received) == 2, what="the backend to get the bad client's datagram")
        yield until(lambda: bool(self.flushLoggedErrors(OSError)), what="the error to be logged")
        good.transport.write(b"three", address)
        yield good.wait_for(2)
        self.assertEqual(good.data(), [b"0:one", b"0:three"])
        self.assertEqual(bad.data(), [])
        self.assertEqual(len(proxy.live_sessions()), sessions_before + 1)


class CompiledErrorTests(ErrorTests):
    """The same, the sessions' sockets read by the compiled loop."""

    compiled = True
