"""
A UDP server never relays to itself: a datagram whose source (forged, or
sent by the backend itself) is one of the server's backends or the
listener's own address opens no session, since the session's answers
would go to that address and come back as requests, forever (a review
made one such datagram relay ~60,000 datagrams a second each way until a
restart).  Real sockets on 127.0.0.1: a backend's own socket sends from
the backend's address, the listener's from its own, as a forger would.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancer.backends import Pool
from balancer.config.addresses import BackendSpec
from balancer.config.load import parse_config
from balancer.config.addresses import is_loopback
from balancer.proxy.udp import UdpProxy
from balancer.server_service import ServerService
from balancer.stats import RateClock, ServerCounters
from tests.support.peers import DatagramPeer, listen_proxy


class LoopTests(TestCase):
    """An echo backend and a proxy to it on the real reactor."""

    timeout = 10

    def setUp(self) -> None:
        self.server = DatagramPeer(replies=1)
        port = reactor.listenUDP(0, self.server, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        pool = Pool([BackendSpec("127.0.0.1", port.getHost().port)])
        (backend,) = pool
        self.proxy = UdpProxy(lambda host: backend, ServerCounters(), reactor=reactor, client_idle_timeout=10.0,
                              backends=pool)
        self.address = listen_proxy(self, self.proxy)

    @inlineCallbacks
    def answered_client(self) -> Any:
        """A client's request and its answer, after what the test sent: the proxy has read everything before it."""
        client = DatagramPeer()
        port = reactor.listenUDP(0, client, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        client.transport.write(b"q", self.address)
        yield client.wait_for(1)
        return client

    @inlineCallbacks
    def test_aDatagramFromABackendOpensNoSession(self) -> Any:
        self.server.transport.write(b"ping", self.address)
        client = yield self.answered_client()
        self.assertEqual(client.data(), [b"0:q"])
        self.assertEqual(self.server.data(), [b"q"])
        self.assertEqual(len(self.proxy.live_sessions()), 1)
        self.assertEqual(self.proxy.loops_refused, 1)
        self.assertEqual(self.proxy.counters.traffic.tx, 1)

    @inlineCallbacks
    def test_aDatagramFromTheListenerItselfOpensNoSession(self) -> Any:
        self.proxy.transport.write(b"ping", self.address)
        client = yield self.answered_client()
        self.assertEqual(self.server.data(), [b"q"])
        self.assertEqual((len(self.proxy.live_sessions()), self.proxy.loops_refused), (1, 1))
        self.assertEqual(client.data(), [b"0:q"])


class OwnAddressTests(SynchronousTestCase):
    """Which sources are the listener's own, for a listener on one address and on every interface."""

    def proxy(self, host: str, port: int) -> UdpProxy:
        proxy = UdpProxy(lambda host: None, ServerCounters(), reactor=MemoryReactorClock())
        transport: Any = type("Transport", (), {"maxPacketSize": 0, "socket": None,
                                                 "getHost": lambda self: type("Host", (), {"host": host, "port": port})(),
                                                 "write": lambda self, data, addr: None})()
        proxy.makeConnection(transport)
        return proxy

    def test_oneAddress(self) -> None:
        proxy = self.proxy("192.0.2.1", 53)
        self.assertTrue(proxy.loops_back("192.0.2.1", 53))
        self.assertFalse(proxy.loops_back("127.0.0.1", 53))
        self.assertFalse(proxy.loops_back("192.0.2.1", 54))

    def test_everyInterfaceTakesLoopbackSourcesOnItsPort(self) -> None:
        """A client elsewhere with the same port (a DNS server asking from port 53) is not the listener."""
        for wildcard in ("0.0.0.0", "::"):
            proxy = self.proxy(wildcard, 53)
            self.assertTrue(proxy.loops_back("127.0.0.1", 53))
            self.assertTrue(proxy.loops_back("::ffff:127.0.0.9", 53))
            self.assertTrue(proxy.loops_back("::1", 53))
            self.assertFalse(proxy.loops_back("192.0.2.7", 53))

    def test_loopback(self) -> None:
        self.assertEqual([is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1", "fe80::1%lo",
                                                   "10.0.0.1", "::ffff:10.0.0.1", "name")],
                         [True, True, True, True, False, False, False, False])


class BackendAddressesTests(SynchronousTestCase):
    """A server's backends by their configured address, IPv4 ones also as a dual-stack listener reports them."""

    def test_theServersPool(self) -> None:
        config = parse_config(b"""
[servers.dns]
protocol = "udp"
bind = "127.0.0.1:0"
[servers.dns.discovery]
kind = "static"
static_list = ["127.0.0.1:9201", "[2001:db8::1]:53", "dns.example:53"]
""", "test.toml")
        reactor = MemoryReactorClock()
        server = ServerService("dns", config.servers["dns"], reactor, RateClock(reactor))
        self.assertEqual(server.pool.addresses, {
            ("127.0.0.1", 9201), ("::ffff:127.0.0.1", 9201), ("2001:db8::1", 53),
            ("127.0.0.1", 9201, 0, 0), ("::ffff:127.0.0.1", 9201, 0, 0), ("2001:db8::1", 53, 0, 0)})
        assert server.udp is not None
        self.assertIs(server.udp.backends, server.pool)
        server.pool.replace([BackendSpec("127.0.0.2", 9201)])
        self.assertIn(("::ffff:127.0.0.2", 9201, 0, 0), server.pool.addresses)
        self.assertNotIn(("127.0.0.1", 9201), server.pool.addresses)
