"""
Tests for L{balancer.proxy.udp}: real UDP sockets on 127.0.0.1 (port 0) for
the datagrams, a L{task.Clock} for the idle timeouts.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import DatagramProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancer.backends import Backend, Pool
from balancer.config.addresses import BackendSpec, HostPort
from balancer.config.schema import AccessConfig, DiscoveryConfig, ServerConfig, UdpConfig
from balancer.proxy.access import AccessRules
from balancer.proxy.udp import DEFAULT_IDLE_TIMEOUT, MAX_DATAGRAM, UdpProxy
from balancer.stats import ServerCounters
from balancer.strategies import STRATEGIES, make_strategy
from tests.support.peers import Address, DatagramPeer, listen_proxy
from tests.support.reactors import UdpReactor


class UdpTestCase(TestCase):
    """Starts backends, a proxy and clients on 127.0.0.1 and closes them after each test."""

    timeout = 10

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.counters = ServerCounters()
        self.released: list[Backend] = []

    def listen(self, protocol: DatagramProtocol) -> int:
        """Listen with C{protocol} on 127.0.0.1, port 0; return the port."""
        port = reactor.listenUDP(0, protocol, interface="127.0.0.1", maxPacketSize=MAX_DATAGRAM)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def backend(self, replies: int = 1, host: str = "127.0.0.1") -> tuple[DatagramPeer, Backend]:
        """A listening test backend and the L{Backend} pointing at it."""
        peer = DatagramPeer(replies)
        return peer, Backend(BackendSpec(host, self.listen(peer)))

    def proxy(self, choose: Callable[[str], Backend | None], **options: Any) -> tuple[UdpProxy, Address]:
        """A listening L{UdpProxy} and its address; closed with all its sessions after the test."""
        proxy = UdpProxy(choose, self.counters, reactor=reactor, clock=self.clock, released=self.released.append, **options)
        return proxy, listen_proxy(self, proxy)

    def client(self) -> DatagramPeer:
        """A listening test client."""
        peer = DatagramPeer()
        self.listen(peer)
        return peer

    @inlineCallbacks
    def ask(self, client: DatagramPeer, address: Address, datagram: bytes, answers: int = 1):  # type: ignore[no-untyped-def]
        """Send C{datagram} from C{client} to C{address}; wait for C{answers} more datagrams."""
        expected = len(client.received) + answers
        client.transport.write(datagram, address)
        yield client.wait_for(expected)


class RelayTests(UdpTestCase):
    """Datagrams go both ways and are counted."""

    @inlineCallbacks
    def test_requestResponseWithMaxResponses1(self):  # type: ignore[no-untyped-def]
        server, backend = self.backend(replies=1)
        proxy, address = self.proxy(lambda host: backend, max_responses=1)
        client = self.client()
        yield self.ask(client, address, b"query")
        self.assertEqual(client.received, [(b"0:query", address)])
        self.assertEqual(server.data(), [b"query"])
        self.assertEqual((backend.counters.traffic.tx, backend.counters.traffic.rx), (5, 7))
        self.assertEqual((self.counters.traffic.tx, self.counters.traffic.rx), (5, 7))
        self.assertEqual((backend.counters.total_connections, backend.counters.active_connections), (1, 0))
        self.assertEqual((self.counters.total_connections, self.counters.active_connections), (1, 0))
        self.assertEqual(proxy.sessions, {})
        self.assertEqual(self.released, [backend])

    @inlineCallbacks
    def test_eachRequestGetsASessionWithMaxResponses1(self):  # type: ignore[no-untyped-def]
        server, backend = self.backend(replies=1)
        _, address = self.proxy(lambda host: backend, max_responses=1)
        client = self.client()
        yield self.ask(client, address, b"one")
        yield self.ask(client, address, b"two")
        self.assertEqual(client.data(), [b"0:one", b"0:two"])
        self.assertNotEqual(server.sources()[0], server.sources()[1])
        self.assertEqual(backend.counters.total_connections, 2)

    @inlineCallbacks
    def test_streamOfResponses(self):  # type: ignore[no-untyped-def]
        _, backend = self.backend(replies=5)
        proxy, address = self.proxy(lambda host: backend, client_idle_timeout=10.0)
        client = self.client()
        yield self.ask(client, address, b"x", answers=5)
        self.assertEqual(sorted(client.data()), [b"0:x", b"1:x", b"2:x", b"3:x", b"4:x"])
        self.assertEqual(backend.counters.traffic.rx, 15)
        self.assertEqual(self.counters.active_connections, 1)
        (session,) = proxy.sessions.values()
        self.assertEqual((session.requests, session.responses, session.tx, session.rx), (1, 5, 1, 15))

    @inlineCallbacks
    def test_maxResponsesEndsAStream(self):  # type: ignore[no-untyped-def]
        _, backend = self.backend(replies=5)
        proxy, address = self.proxy(lambda host: backend, max_responses=2)
        client = self.client()
        yield self.ask(client, address, b"x", answers=2)
        self.assertEqual(proxy.live_sessions(), [])
        self.assertEqual(backend.counters.traffic.rx, 6)
        self.assertEqual(backend.counters.active_connections, 0)

    @inlineCallbacks
    def test_maxRequestsStartsANewSession(self):  # type: ignore[no-untyped-def]
        server, backend = self.backend(replies=1)
        proxy, address = self.proxy(lambda host: backend, max_requests=2, client_idle_timeout=10.0)
        client = self.client()
        for datagram in (b"a", b"b", b"c"):
            yield self.ask(client, address, datagram)
        self.assertEqual(client.data(), [b"0:a", b"0:b", b"0:c"])
        first, second, third = server.sources()
        self.assertEqual(first, second)
        self.assertNotEqual(second, third)
        self.assertEqual(backend.counters.total_connections, 2)
        self.assertEqual(len(proxy.live_sessions()), 2)
        self.clock.advance(10.0)
        self.assertEqual((backend.counters.active_connections, self.counters.active_connections), (0, 0))

    @inlineCallbacks
    def test_retiredSessionStillRelaysAnswers(self):  # type: ignore[no-untyped-def]
        _, backend = self.backend(replies=3)
        proxy, address = self.proxy(lambda host: backend, max_requests=1, max_responses=3)
        client = self.client()
        yield self.ask(client, address, b"q", answers=3)
        self.assertEqual(len(client.received), 3)
        self.assertEqual(proxy.live_sessions(), [])

    @inlineCallbacks
    def test_twoClientsGetSeparateSessions(self):  # type: ignore[no-untyped-def]
        server, backend = self.backend(replies=1)
        proxy, address = self.proxy(lambda host: backend, client_idle_timeout=10.0)
        one, two = self.client(), self.client()
        yield self.ask(one, address, b"from one")
        yield self.ask(two, address, b"from two")
        yield self.ask(one, address, b"one again")
        self.assertEqual(one.data(), [b"0:from one", b"0:one again"])
        self.assertEqual(two.data(), [b"0:from two"])
        sources = server.sources()
        self.assertEqual(sources[0], sources[2])
        self.assertNotEqual(sources[0], sources[1])
        self.assertEqual(len(proxy.sessions), 2)
        self.assertEqual(self.counters.active_connections, 2)

    @inlineCallbacks
    def test_largeDatagrams(self):  # type: ignore[no-untyped-def]
        server, backend = self.backend(replies=1)
        _, address = self.proxy(lambda host: backend, max_responses=1)
        client = self.client()
        big = bytes(range(256)) * 120
        yield self.ask(client, address, big)
        self.assertEqual(server.data(), [big])
        self.assertEqual(client.data(), [b"0:" + big])

    @inlineCallbacks
    def test_backendByHostName(self):  # type: ignore[no-untyped-def]
        server, backend = self.backend(replies=1, host="localhost")
        _, address = self.proxy(lambda host: backend, max_responses=1)
        client = self.client()
        yield self.ask(client, address, b"resolved")
        self.assertEqual(client.data(), [b"0:resolved"])

    @inlineCallbacks
    def test_allStrategies(self):  # type: ignore[no-untyped-def]
        peers = [self.backend(replies=1) for _ in range(2)]
        pool = Pool(backend.spec for _, backend in peers)
        for name in STRATEGIES:
            strategy = make_strategy(name)
            _, address = self.proxy(lambda host: strategy.choose(pool.candidates(), host), max_responses=1)
            client = self.client()
            yield self.ask(client, address, name.encode())
            self.assertEqual(client.data(), [b"0:" + name.encode()], name)
        self.assertEqual(sum(len(peer.received) for peer, _ in peers), len(STRATEGIES))


class EndingTests(UdpTestCase):
    """Sessions end on idle timeouts, on refusal and on close."""

    @inlineCallbacks
    def test_clientIdleTimeout(self):  # type: ignore[no-untyped-def]
        server, backend = self.backend(replies=1)
        proxy, address = self.proxy(lambda host: backend, client_idle_timeout=5.0)
        client = self.client()
        yield self.ask(client, address, b"a")
        self.clock.advance(4.9)
        self.assertEqual(self.counters.active_connections, 1)
        self.clock.advance(0.1)
        self.assertEqual(self.counters.active_connections, 0)
        self.assertEqual(proxy.sessions, {})
        yield self.ask(client, address, b"b")
        self.assertEqual(backend.counters.total_connections, 2)
        self.assertNotEqual(server.sources()[0], server.sources()[1])

    @inlineCallbacks
    def test_clientTrafficKeepsClientIdleAway(self):  # type: ignore[no-untyped-def]
        _, backend = self.backend(replies=1)
        _, address = self.proxy(lambda host: backend, client_idle_timeout=5.0)
        client = self.client()
        yield self.ask(client, address, b"a")
        self.clock.advance(4.0)
        yield self.ask(client, address, b"b")
        self.clock.advance(4.0)
        self.assertEqual(self.counters.active_connections, 1)
        self.clock.advance(1.0)
        self.assertEqual(self.counters.active_connections, 0)

    @inlineCallbacks
    def test_backendIdleTimeoutIgnoresClientTraffic(self):  # type: ignore[no-untyped-def]
        server, backend = self.backend(replies=0)
        _, address = self.proxy(lambda host: backend, backend_idle_timeout=3.0)
        client = self.client()
        client.transport.write(b"a", address)
        yield server.wait_for(1)
        self.clock.advance(2.0)
        client.transport.write(b"b", address)
        yield server.wait_for(2)
        self.assertEqual(self.counters.active_connections, 1)
        self.clock.advance(1.0)
        self.assertEqual(self.counters.active_connections, 0)

    @inlineCallbacks
    def test_defaultIdleTimeout(self):  # type: ignore[no-untyped-def]
        _, backend = self.backend(replies=1)
        _, address = self.proxy(lambda host: backend)
        client = self.client()
        yield self.ask(client, address, b"a")
        self.clock.advance(DEFAULT_IDLE_TIMEOUT - 1)
        self.assertEqual(self.counters.active_connections, 1)
        self.clock.advance(1)
        self.assertEqual(self.counters.active_connections, 0)

    @inlineCallbacks
    def test_refusedByBackend(self):  # type: ignore[no-untyped-def]
        closed = DatagramPeer()
        port = reactor.listenUDP(0, closed, interface="127.0.0.1")
        backend = Backend(BackendSpec("127.0.0.1", port.getHost().port))
        yield port.stopListening()
        ended: Deferred[Backend] = Deferred()
        proxy, address = self.proxy(lambda host: backend, client_idle_timeout=10.0)
        proxy.released = ended.callback
        self.client().transport.write(b"anyone?", address)
        yield ended
        self.assertEqual(backend.counters.refused_connections, 1)
        self.assertEqual(backend.counters.active_connections, 0)

    @inlineCallbacks
    def test_closeAll(self):  # type: ignore[no-untyped-def]
        _, backend = self.backend(replies=1)
        proxy, address = self.proxy(lambda host: backend, client_idle_timeout=10.0)
        yield self.ask(self.client(), address, b"a")
        yield self.ask(self.client(), address, b"b")
        self.assertEqual(len(proxy.live_sessions()), 2)
        yield proxy.close_all()
        self.assertEqual(proxy.live_sessions(), [])
        self.assertEqual((self.counters.active_connections, backend.counters.active_connections), (0, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])


def fake_proxy(choose: Callable[[str], Backend | None], counters: ServerCounters, **options: Any) -> UdpProxy:
    """A proxy that is not listening, for the decisions made before any socket opens."""
    return UdpProxy(choose, counters, reactor=reactor, clock=task.Clock(), **options)


class AdmissionTests(SynchronousTestCase):
    """Datagrams that open no session."""

    def test_deniedByAccessRules(self) -> None:
        counters = ServerCounters()
        chosen: list[str] = []
        proxy = fake_proxy(
            lambda host: chosen.append(host) and None,  # type: ignore[func-returns-value]
            counters,
            access=AccessRules.from_config(AccessConfig(default="allow", rules=("deny 10.0.0.0/8",))),
        )
        proxy.datagramReceived(b"x", ("10.1.2.3", 5000))
        self.assertEqual((counters.denied, counters.total_connections, chosen), (1, 0, []))
        self.assertEqual(proxy.sessions, {})

    def test_noBackend(self) -> None:
        counters = ServerCounters()
        chosen: list[str] = []
        proxy = fake_proxy(lambda host: chosen.append(host) and None, counters)  # type: ignore[func-returns-value]
        proxy.datagramReceived(b"x", ("192.0.2.1", 5000))
        self.assertEqual((counters.no_backend, counters.total_connections, chosen), (1, 0, ["192.0.2.1"]))
        self.assertEqual(proxy.sessions, {})

    def test_fromConfig(self) -> None:
        config = ServerConfig(
            bind=HostPort("127.0.0.1", 0),
            discovery=DiscoveryConfig(kind="static", static_list=(BackendSpec("127.0.0.1", 53),)),
            protocol="udp",
            udp=UdpConfig(max_requests=3, max_responses=1),
            client_idle_timeout=2.0,
            access=AccessConfig(default="deny", rules=("allow 127.0.0.1",)),
        )
        proxy = UdpProxy.from_config(config, lambda host: None, ServerCounters(), reactor=reactor, name="dns")
        self.assertEqual(
            (proxy.max_requests, proxy.max_responses, proxy.client_idle_timeout, proxy.backend_idle_timeout, proxy.name),
            (3, 1, 2.0, 0.0, "dns"),
        )
        access = proxy.admission.access
        assert access is not None
        self.assertEqual((access.allows("127.0.0.1"), access.allows("127.0.0.2")), (True, False))

    def test_fromConfigWithoutUdpSection(self) -> None:
        config = ServerConfig(
            bind=HostPort("127.0.0.1", 0),
            discovery=DiscoveryConfig(kind="static", static_list=(BackendSpec("127.0.0.1", 53),)),
            protocol="udp",
        )
        proxy = UdpProxy.from_config(config, lambda host: None, ServerCounters(), reactor=reactor)
        self.assertEqual((proxy.max_requests, proxy.max_responses, proxy.admission.access), (0, 0, None))


class SessionLimitTests(SynchronousTestCase):
    """
    Admission by C{max_connections}, else C{[defaults] udp_max_sessions}:
    gobetween 0.8's UDP server ignores C{max_connections}, and every session
    holds a socket, so spoofed source ports could fill the descriptor table.
    """

    def proxy(self, counters: ServerCounters, reactor: UdpReactor, **options: Any) -> UdpProxy:
        backend = Backend(BackendSpec("127.0.0.1", 9))
        return UdpProxy(lambda host: backend, counters, reactor=reactor, clock=task.Clock(), **options)

    def flood(self, proxy: UdpProxy, ports: int) -> None:
        for port in range(1000, 1000 + ports):
            proxy.datagramReceived(b"q", ("192.0.2.7", port))

    def test_maxConnectionsCountsSessions(self) -> None:
        counters, reactor = ServerCounters(), UdpReactor()
        proxy = self.proxy(counters, reactor, max_sessions=100)
        self.flood(proxy, 500)
        self.assertEqual((len(proxy.live_sessions()), reactor.open, counters.active_connections), (100, 100, 100))
        self.assertEqual((counters.over_limit, counters.total_connections), (400, 100))
        proxy.datagramReceived(b"again", ("192.0.2.7", 1000))
        self.assertEqual(counters.over_limit, 400)
        proxy.live_sessions()[0].end("test")
        proxy.datagramReceived(b"q", ("192.0.2.8", 1))
        self.assertEqual((len(proxy.live_sessions()), counters.over_limit, counters.total_connections), (100, 400, 101))

    def test_retiredSessionsStillCount(self) -> None:
        """A session past C{max_requests} still holds its socket while it relays answers."""
        counters, reactor = ServerCounters(), UdpReactor()
        proxy = self.proxy(counters, reactor, max_sessions=3, max_requests=1)
        for _ in range(5):
            proxy.datagramReceived(b"q", ("192.0.2.7", 1000))
        self.assertEqual((reactor.open, counters.over_limit, proxy.sessions), (3, 2, {}))

    def test_configTakesMaxConnectionsElseUdpMaxSessions(self) -> None:
        config = ServerConfig(
            bind=HostPort("127.0.0.1", 0),
            discovery=DiscoveryConfig(kind="static", static_list=(BackendSpec("127.0.0.1", 53),)),
            protocol="udp",
            max_connections=0,
        )
        proxy = UdpProxy.from_config(config, lambda host: None, ServerCounters(), reactor=reactor, udp_max_sessions=7)
        self.assertEqual(proxy.admission.limit, 7)
        proxy.configure(attrs.evolve(config, max_connections=100))
        self.assertEqual(proxy.admission.limit, 100)
        proxy.configure(config)
        self.assertEqual(proxy.admission.limit, 7)
