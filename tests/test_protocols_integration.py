"""
The protocol features of the data plane end to end, on real sockets
(127.0.0.1 and ::1, port 0): TLS termination, TLS to backends, SNI routing
without termination, PROXY protocol headers, UDP and access rules.  The
certificates are made for each test with L{tests.support.certs}.
"""

from __future__ import annotations

import socket
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet import error, reactor, ssl
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from balancer.config.addresses import HostPort
from balancer.config.schema import (
    AccessConfig,
    BackendsTlsConfig,
    Config,
    DefaultsConfig,
    ProxyProtocolConfig,
    SniConfig,
    TlsConfig,
    UdpConfig,
)
from balancer.proxy.engine import splice
from balancer.proxy.tls_path import TlsEnginePath
from balancer.proxy.udp import MAX_DATAGRAM
from balancer.root_service import BalancerService
from balancer.server_service import ServerService
from balancer.strategies import STRATEGIES
from tests.support.certs import Authority, Pair
from tests.support.clients import Echo, Named, exchange
from tests.support.paths import scratch_directory
from tests.support.peers import DatagramPeer, Peer, open_client
from tests.support.ports import refusing_port
from tests.support.proxy_protocol_peer import ProxyProtocolPeerFactory
from tests.support.relays import server_config
from tests.support.waiting import until


def has_ipv6_loopback() -> bool:
    """Whether this machine can bind C{::1}."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


class NamedEcho(Protocol):
    """Echoes every chunk prefixed with C{factory.name} and a colon."""

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(self.factory.name + b":" + data)


class Ask(Protocol):
    """
    Sends C{payload}, closes once C{size} bytes came back; C{done} fires with
    them, or fails with why the connection ended before.
    """

    def __init__(self, payload: bytes, size: int) -> None:
        self.payload = payload
        self.size = size
        self.data = b""
        self.done: Deferred[bytes] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.payload)

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if len(self.data) >= self.size:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if len(self.data) >= self.size:
            self.done.callback(self.data)
        else:
            self.done.errback(reason)


class ProtocolsTestCase(TestCase):
    """Backends, a balancer of one server "web", and certificates, all closed after each test."""

    timeout = 30

    #: C{[defaults] splice}: the relay engine where a server can run on it.
    splice = True

    def setUp(self) -> None:
        self.directory = scratch_directory(self)
        self.authority = Authority()
        self.ca_path = self.authority.write(self.directory)

    def start(self, backends: list[Any], **options: Any) -> ServerService:
        """
        A started balancer with server "web" on 127.0.0.1 port 0 (unless
        C{bind} is given) in front of C{backends}: ports on 127.0.0.1, or
        whole C{static_list} lines.
        """
        lines = tuple(f"127.0.0.1:{b}" if isinstance(b, int) else b for b in backends)
        config = Config(
            defaults=DefaultsConfig(shutdown_grace=5.0, splice=self.splice),
            servers={"web": server_config(lines, **options)},
        )
        service = self.service = BalancerService(config, reactor)
        service.privilegedStartService()
        service.startService()

        def stop() -> Deferred[Any] | None:
            if not service.running:
                return None
            for server in service.servers():
                server.grace = 0.0
            return service.stopService()

        self.addCleanup(stop)
        return service.server("web")

    def listen(self, factory: Factory, options: Any = None) -> int:
        """A backend on 127.0.0.1 port 0 (over TLS with C{options}); returns its port."""
        if options is None:
            port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        else:
            port = reactor.listenSSL(0, factory, options, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def named(self, name: bytes) -> int:
        """A backend answering every connection with C{name}."""
        factory = Factory.forProtocol(Named)
        factory.name = name  # type: ignore[attr-defined]
        return self.listen(factory)

    def issue(self, name: str, *hostnames: str, authority: Authority | None = None) -> Pair:
        """A server certificate for C{hostnames} (127.0.0.1 without any)."""
        authority = authority if authority is not None else self.authority
        if hostnames:
            return authority.issue(self.directory, name, hostnames=hostnames, ips=())
        return authority.issue(self.directory, name, hostnames=("localhost",), ips=("127.0.0.1",))

    def tls_backend(self, name: bytes, pair: Pair) -> int:
        """A backend terminating TLS with C{pair} and answering with L{NamedEcho}."""
        with open(pair.cert_path, "rb") as cert, open(pair.key_path, "rb") as key:
            options = ssl.PrivateCertificate.loadPEM(cert.read() + key.read()).options()
        factory = Factory.forProtocol(NamedEcho)
        factory.name = name  # type: ignore[attr-defined]
        return self.listen(factory, options)

    def ask_tls(self, port: int, hostname: str, payload: bytes, size: int) -> Deferred[bytes]:
        """Connect over TLS to 127.0.0.1:C{port}, verifying C{hostname} against the test CA; ask."""
        with open(self.ca_path, "rb") as f:
            trust = ssl.Certificate.loadPEM(f.read())
        endpoint = wrapClientTLS(
            ssl.optionsForClientTLS(hostname, trust), TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=10)
        )
        ask = Ask(payload, size)
        return connectProtocol(endpoint, ask).addCallback(lambda _: ask.done)

    def fails(self, d: Deferred[Any]) -> Deferred[bool]:
        """Fires with whether C{d} failed (with a connection or TLS error)."""
        return d.addCallbacks(
            lambda _: False,
            lambda f: bool(f.check(error.ConnectionDone, error.ConnectionLost, SSL.Error)) or f,
        )

    def ended(self, server: ServerService) -> Deferred[None]:
        """Fires once C{server} has no relay left."""
        return until(lambda: not server.relays)


class TlsTerminationTests(ProtocolsTestCase):
    """C{protocol = "tls"}: the balancer terminates TLS and relays plain bytes."""

    def tls_server(self, backends: list[Any], **options: Any) -> ServerService:
        pair = self.issue("balancer")
        tls = TlsConfig(cert_path=pair.cert_path, key_path=pair.key_path)
        server = self.start(backends, protocol="tls", tls=tls, **options)
        self.assertEqual(isinstance(server.path, TlsEnginePath), self.splice and splice.AVAILABLE)
        return server

    @inlineCallbacks
    def test_clientHandshakesWithTheBalancerAndGetsTheBackendsEcho(self) -> None:
        server = self.tls_server([self.listen(Factory.forProtocol(Echo))])
        answer = yield self.ask_tls(server.port, "localhost", b"ping over tls", 13)
        self.assertEqual(answer, b"ping over tls")
        yield self.ended(server)
        stats = server.stats()
        self.assertEqual((stats["tx_total"], stats["rx_total"]), (13, 13))
        self.assertEqual(server.counters.tls_failures, 0)

    @inlineCallbacks
    def test_plainBytesFailTheHandshakeNeverReachABackendAndCount(self) -> None:
        server = self.tls_server([self.listen(Factory.forProtocol(Echo))])
        answer = yield exchange(server.port, b"GET / HTTP/1.0\r\n\r\n", half_close=False)
        self.assertNotIn(b"GET", answer)
        yield self.ended(server)
        self.assertEqual(server.counters.tls_failures, 1)
        self.assertEqual([b.counters.total_connections for b in server.pool], [0])

    @inlineCallbacks
    def test_clientRefusingTheCertificateCounts(self) -> None:
        pair = self.issue("balancer", authority=Authority("unknown CA"))
        server = self.start(
            [self.listen(Factory.forProtocol(Echo))],
            protocol="tls",
            tls=TlsConfig(cert_path=pair.cert_path, key_path=pair.key_path),
        )
        self.assertTrue((yield self.fails(self.ask_tls(server.port, "localhost", b"x", 1))))
        yield until(lambda: server.counters.tls_failures == 1 and not server.relays)
        self.assertEqual([b.counters.total_connections for b in server.pool], [0])

    @inlineCallbacks
    def test_silentClientClosedAtClientIdleTimeoutAndCounted(self) -> None:
        server = self.tls_server([self.listen(Factory.forProtocol(Echo))], client_idle_timeout=0.2)
        started = reactor.seconds()
        answer = yield exchange(server.port, half_close=False)
        self.assertEqual(answer, b"")
        self.assertGreaterEqual(reactor.seconds() - started, 0.19)
        yield self.ended(server)
        self.assertEqual(server.counters.tls_failures, 1)

    @inlineCallbacks
    def test_noBackendClosesTheClientAfterItsHandshake(self) -> None:
        server = self.tls_server([refusing_port(self)])
        self.assertTrue((yield self.fails(self.ask_tls(server.port, "localhost", b"ping", 4))))
        yield self.ended(server)
        self.assertEqual((server.counters.no_backend, server.counters.tls_failures), (1, 0))
        self.assertEqual([b.counters.refused_connections for b in server.pool], [1])

    @inlineCallbacks
    def test_withSniRoutesByTheNameTheTlsLayerReceived(self) -> None:
        pair = self.issue("balancer", "a.test", "b.test")
        a, b = self.named(b"a"), self.named(b"b")
        server = self.start(
            [f"127.0.0.1:{a} sni=a.test", f"127.0.0.1:{b} sni=b.test"],
            protocol="tls",
            tls=TlsConfig(cert_path=pair.cert_path, key_path=pair.key_path),
            sni=SniConfig(),
        )
        answers = yield gatherResults([self.ask_tls(server.port, name, b"", 1) for name in ("b.test", "a.test")])
        self.assertEqual(answers, [b"b", b"a"])


class TlsTerminationOnTwistedTests(TlsTerminationTests):
    """The same, on Twisted's transports (C{[defaults] splice = false}); the tests above run on the engine."""

    splice = False


class BackendTlsTests(ProtocolsTestCase):
    """C{[backends_tls]}: the balancer speaks TLS to its backends and verifies them."""

    @inlineCallbacks
    def test_backendThatNeedsTlsGetsIt(self) -> None:
        backend = self.tls_backend(b"secure", self.issue("backend"))
        server = self.start([backend], backends_tls=BackendsTlsConfig(root_ca_cert_path=self.ca_path))
        peer = Peer()
        yield open_client(server.port, peer)
        peer.transport.write(b"ping")
        self.assertEqual((yield peer.expect(11)), b"secure:ping")
        peer.transport.loseConnection()
        yield peer.closed
        yield self.ended(server)
        self.assertEqual((server.counters.traffic.tx, server.counters.traffic.rx), (4, 11))
        self.assertEqual([b.counters.refused_connections for b in server.pool], [0])

    @inlineCallbacks
    def test_wrongCaFailsTheRelayCountedAsRefusedAndTheNextBackendServes(self) -> None:
        stranger = self.tls_backend(b"stranger", self.issue("stranger", authority=Authority("another CA")))
        trusted = self.tls_backend(b"trusted", self.issue("trusted"))
        server = self.start(
            [f"127.0.0.1:{stranger} priority=1", f"127.0.0.1:{trusted} priority=2"],
            balance="weight",
            backends_tls=BackendsTlsConfig(root_ca_cert_path=self.ca_path),
        )
        peers = [Peer() for _ in range(3)]
        for peer in peers:
            yield open_client(server.port, peer)
            peer.transport.write(b"hi")
            self.assertEqual((yield peer.expect(10)), b"trusted:hi")
            peer.transport.loseConnection()
            yield peer.closed
        yield self.ended(server)
        counters = {b.port: b.counters for b in server.pool}
        self.assertEqual((counters[stranger].refused_connections, counters[stranger].total_connections), (3, 0))
        self.assertEqual((counters[trusted].refused_connections, counters[trusted].total_connections), (0, 3))
        self.assertEqual([b.counters.active_connections for b in server.pool], [0, 0])
        self.assertEqual(server.counters.no_backend, 0)

    @inlineCallbacks
    def test_wrongCaOnlyBackendClosesTheClient(self) -> None:
        backend = self.tls_backend(b"backend", self.issue("backend"))
        other_ca = Authority("another CA").write(self.directory, "other-ca")
        server = self.start([backend], backends_tls=BackendsTlsConfig(root_ca_cert_path=other_ca))
        answer = yield exchange(server.port, b"ping", half_close=False)
        self.assertEqual(answer, b"")
        self.assertEqual([b.counters.refused_connections for b in server.pool], [1])
        self.assertEqual(server.counters.no_backend, 1)


class SniTests(ProtocolsTestCase):
    """C{[sni]} on a TCP server: routed by the ClientHello, TLS untouched end to end."""

    def sni_server(self, **sni: Any) -> tuple[ServerService, int, int]:
        a = self.tls_backend(b"a", self.issue("a", "a.test"))
        b = self.tls_backend(b"b", self.issue("b", "b.test"))
        server = self.start([f"127.0.0.1:{a} sni=a.test", f"127.0.0.1:{b} sni=b.test"], sni=SniConfig(**sni))
        return server, a, b

    @inlineCallbacks
    def test_twoHostnamesReachTwoBackendsThroughOnePort(self) -> None:
        server, a, b = self.sni_server()
        for _ in range(2):
            answers = yield gatherResults(
                [self.ask_tls(server.port, name, b"ping", 6) for name in ("a.test", "b.test", "a.test")]
            )
            self.assertEqual(answers, [b"a:ping", b"b:ping", b"a:ping"])
        yield self.ended(server)
        counters = {b.port: b.counters for b in server.pool}
        self.assertEqual((counters[a].total_connections, counters[b].total_connections), (4, 2))
        self.assertGreater(server.counters.traffic.tx, 6 * 6)
        self.assertEqual(server.counters.sni_failures, 0)

    @inlineCallbacks
    def test_rejectClosesUnknownNames(self) -> None:
        server, a, b = self.sni_server(unexpected_hostname_strategy="reject")
        self.assertTrue((yield self.fails(self.ask_tls(server.port, "c.test", b"ping", 6))))
        yield self.ended(server)
        self.assertEqual(server.counters.sni_failures, 1)
        self.assertEqual([b.counters.total_connections for b in server.pool], [0, 0])
        self.assertEqual((yield self.ask_tls(server.port, "b.test", b"ping", 6)), b"b:ping")

    @inlineCallbacks
    def test_garbageClosedAndCounted(self) -> None:
        server, a, b = self.sni_server()
        answer = yield exchange(server.port, b"GET / HTTP/1.0\r\n\r\n", half_close=False)
        self.assertEqual(answer, b"")
        yield self.ended(server)
        self.assertEqual(server.counters.sni_failures, 1)
        self.assertEqual([b.counters.total_connections for b in server.pool], [0, 0])

    @inlineCallbacks
    def test_silenceClosedAtReadTimeoutAndCounted(self) -> None:
        server, a, b = self.sni_server(read_timeout=0.2)
        started = reactor.seconds()
        answer = yield exchange(server.port, half_close=False)
        self.assertEqual(answer, b"")
        self.assertGreaterEqual(reactor.seconds() - started, 0.19)
        yield self.ended(server)
        self.assertEqual(server.counters.sni_failures, 1)
        self.assertEqual([b.counters.total_connections for b in server.pool], [0, 0])


class ProxyProtocolTests(ProtocolsTestCase):
    """C{[proxy_protocol]}: backends learn the client's real address and port."""

    @inlineCallbacks
    def client_seen(self, version: str, host: str) -> Any:
        """
        A client from C{host} (127.0.0.1 or ::1) through a balancer on the
        same host; fires with (what its backend saw, the client's address,
        the balancer's address, the server).
        """
        backends = ProxyProtocolPeerFactory()
        server = self.start(
            [self.listen(backends)], bind=HostPort(host, 0), proxy_protocol=ProxyProtocolConfig(version=version)
        )
        endpoint_class = TCP6ClientEndpoint if ":" in host else TCP4ClientEndpoint
        peer = Peer()
        yield connectProtocol(endpoint_class(reactor, host, server.port, timeout=10), peer)
        peer.transport.write(b"hello")
        self.assertEqual((yield peer.expect(5)), b"hello")
        seen = yield backends.next_peer()
        client = peer.transport.getHost()
        peer.transport.loseConnection()
        yield peer.closed
        yield self.ended(server)
        self.assertEqual(seen.received, b"hello")
        self.assertEqual((server.counters.traffic.tx, server.counters.traffic.rx), (5, 5))
        return seen, (client.host, client.port), (host, server.port)

    @inlineCallbacks
    def check(self, version: str, host: str, protocol: str) -> Any:
        seen, client, balancer = yield self.client_seen(version, host)
        self.assertEqual((seen.version, seen.command, seen.protocol), (int(version), "PROXY", protocol))
        self.assertEqual((seen.source, seen.destination), (client, balancer))

    def test_version1IPv4(self) -> Deferred[None]:
        return self.check("1", "127.0.0.1", "TCP4")

    def test_version2IPv4(self) -> Deferred[None]:
        return self.check("2", "127.0.0.1", "TCP4")

    def test_version1IPv6(self) -> Any:
        if not has_ipv6_loopback():
            # Without ::1 there is nothing to check; the condition itself must hold.
            self.assertRaises(OSError, socket.create_server, ("::1", 0), family=socket.AF_INET6)
            return None
        return self.check("1", "::1", "TCP6")

    def test_version2IPv6(self) -> Any:
        if not has_ipv6_loopback():
            self.assertRaises(OSError, socket.create_server, ("::1", 0), family=socket.AF_INET6)
            return None
        return self.check("2", "::1", "TCP6")


class UdpTests(ProtocolsTestCase):
    """C{protocol = "udp"}: sessions through a ServerService."""

    def udp_backend(self, replies: int) -> tuple[DatagramPeer, int]:
        peer = DatagramPeer(replies)
        port = reactor.listenUDP(0, peer, interface="127.0.0.1", maxPacketSize=MAX_DATAGRAM)
        self.addCleanup(port.stopListening)
        return peer, port.getHost().port

    def udp_client(self) -> DatagramPeer:
        peer = DatagramPeer()
        port = reactor.listenUDP(0, peer, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return peer

    @inlineCallbacks
    def test_requestResponseWithMaxResponses1(self) -> None:
        backend, port = self.udp_backend(replies=1)
        server = self.start([port], protocol="udp", udp=UdpConfig(max_responses=1))
        client = self.udp_client()
        for i in range(3):
            client.transport.write(b"q%d" % i, ("127.0.0.1", server.port))
            yield client.wait_for(i + 1)
            yield until(lambda: server.counters.active_connections == 0)
        self.assertEqual(client.data(), [b"0:q0", b"0:q1", b"0:q2"])
        self.assertEqual(set(client.sources()), {("127.0.0.1", server.port)})
        stats = server.stats()
        self.assertEqual((stats["tx_total"], stats["rx_total"], stats["active_connections"]), (6, 12, 0))
        backend_stats = stats["backends"][0]["stats"]
        self.assertEqual((backend_stats["total_connections"], backend_stats["active_connections"]), (3, 0))
        counters = server.counters  # what /v1 and the metrics show
        self.assertEqual((counters.total_connections, counters.no_backend, counters.over_limit, counters.denied), (3, 0, 0, 0))

    @inlineCallbacks
    def test_streamOfResponsesThenTheSessionExpires(self) -> None:
        backend, port = self.udp_backend(replies=5)
        server = self.start([port], protocol="udp", client_idle_timeout=0.2)
        client = self.udp_client()
        client.transport.write(b"stream", ("127.0.0.1", server.port))
        yield client.wait_for(5)
        self.assertEqual(client.data(), [b"%d:stream" % i for i in range(5)])
        self.assertEqual(server.counters.active_connections, 1)
        started = reactor.seconds()
        yield until(lambda: server.counters.active_connections == 0)
        self.assertGreater(reactor.seconds() - started, 0.1)
        self.assertEqual([b.counters.active_connections for b in server.pool], [0])

    @inlineCallbacks
    def test_everyStrategyServes(self) -> None:
        backends = [self.udp_backend(replies=1) for _ in range(2)]
        for balance in STRATEGIES:
            server = self.start([port for _, port in backends], protocol="udp", balance=balance,
                                udp=UdpConfig(max_responses=1))
            client = self.udp_client()
            client.transport.write(balance.encode(), ("127.0.0.1", server.port))
            yield client.wait_for(1)
            self.assertEqual(client.data(), [b"0:" + balance.encode()], balance)
            yield self.service.stopService()

    @inlineCallbacks
    def test_gracefulStopClosesSessions(self) -> None:
        backend, port = self.udp_backend(replies=1)
        server = self.start([port], protocol="udp")
        client = self.udp_client()
        client.transport.write(b"q", ("127.0.0.1", server.port))
        yield client.wait_for(1)
        self.assertEqual(server.counters.active_connections, 1)
        yield self.service.stopService()
        self.assertEqual(server.counters.active_connections, 0)
        self.assertEqual([b.counters.active_connections for b in server.pool], [0])

    @inlineCallbacks
    def test_reconfigureInPlaceThenWithANewListener(self) -> None:
        backend, port = self.udp_backend(replies=1)
        server = self.start([port], protocol="udp", udp=UdpConfig(max_responses=1))
        address = ("127.0.0.1", server.port)
        yield self.service.update_server("web", attrs.evolve(server.config, access=AccessConfig(default="deny")))
        self.assertIs(self.service.server("web"), server)
        client = self.udp_client()
        client.transport.write(b"denied", address)
        yield until(lambda: server.counters.denied == 1)
        self.assertEqual(backend.received, [])
        new_config = attrs.evolve(server.config, access=None, udp=UdpConfig(max_responses=2))
        yield self.service.update_server("web", new_config)
        replaced = self.service.server("web")
        self.assertIsNot(replaced, server)
        client.transport.write(b"again", ("127.0.0.1", replaced.port))
        yield client.wait_for(1)
        self.assertEqual(client.data(), [b"0:again"])


class AccessTests(ProtocolsTestCase):
    """C{[access]}: first matching rule wins; refused clients are closed at once and counted."""

    @inlineCallbacks
    def served_and_refused(self, rules: tuple[str, ...], default: str, **options: Any) -> Any:
        server = self.start(
            [self.listen(Factory.forProtocol(Echo))], access=AccessConfig(default=default, rules=rules), **options
        )
        answers = {}
        for host in ("127.0.0.1", "127.0.0.2", "127.0.0.3"):
            answers[host] = yield exchange(server.port, b"hi", bind_host=host)
        yield self.ended(server)
        return server, answers

    @inlineCallbacks
    def test_127002RefusedWhile127001Served(self) -> None:
        server, answers = yield self.served_and_refused(("allow 127.0.0.1", "deny 127.0.0.0/8"), "allow")
        self.assertEqual(answers, {"127.0.0.1": b"hi", "127.0.0.2": b"", "127.0.0.3": b""})
        self.assertEqual(server.counters.denied, 2)
        self.assertEqual(server.counters.total_connections, 1)
        self.assertEqual([b.counters.total_connections for b in server.pool], [1])

    @inlineCallbacks
    def test_firstMatchWinsOverALaterRule(self) -> None:
        server, answers = yield self.served_and_refused(("allow 127.0.0.0/8", "deny 127.0.0.2"), "deny")
        self.assertEqual(answers, {"127.0.0.1": b"hi", "127.0.0.2": b"hi", "127.0.0.3": b"hi"})
        self.assertEqual(server.counters.denied, 0)

    @inlineCallbacks
    def test_refusedBeforeTheTlsHandshake(self) -> None:
        pair = self.issue("balancer")
        server = self.start(
            [self.listen(Factory.forProtocol(Echo))],
            access=AccessConfig(rules=("deny 127.0.0.2",)),
            protocol="tls",
            tls=TlsConfig(cert_path=pair.cert_path, key_path=pair.key_path),
        )
        answer = yield exchange(server.port, b"\x16\x03\x01", bind_host="127.0.0.2")
        self.assertEqual(answer, b"")
        yield self.ended(server)
        counters = server.counters
        self.assertEqual((counters.denied, counters.tls_failures, counters.total_connections), (1, 0, 0))
