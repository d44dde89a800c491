"""
The relay's protocol features on fakes (L{MemoryReactorClock}, string
transports): access rules at admission, the SNI-reading client side, PROXY
protocol headers, the TLS sides of a relay, and how a server listens for
each protocol.
"""

from __future__ import annotations

import os
import random
from typing import Any

import attrs
from OpenSSL import SSL
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from balancer.config.schema import (
    AccessConfig,
    BackendsTlsConfig,
    ProxyProtocolConfig,
    SniConfig,
    TlsConfig,
    UdpConfig,
)
from balancer.proxy.sni import SniClientSide
from balancer.proxy.tcp import ClientSide, Relay, RelayFactory
from balancer.proxy.tls_relay import DEFAULT_HANDSHAKE_TIMEOUT, BackendTLSFactory, TlsBackendSide, TlsClientSide
from balancer.proxy.udp import MAX_DATAGRAM, UdpProxy
from balancer.listening import BindError
from balancer.server_service import ServerService, listener_keys_changed
from balancer.stats import RateClock
from tests.support.certs import make_certificates
from tests.support.hellos import client_hello
from tests.support.proxy_protocol_peer import ProxyProtocolPeer
from tests.support.reactors import UdpReactor
from tests.support.relays import FakeTransport, accept, attempted, connect, fail, lose, make_server, server_config

SNI_BACKENDS = ("10.0.0.1:443 sni=a.test", "10.0.0.2:443 sni=b.test", "10.0.0.3:443")


def accept_with(server: ServerService, side: type[ClientSide], transport: FakeTransport) -> ClientSide:
    """A client arrives through a listener whose relays have client sides of class C{side}."""
    client = RelayFactory(server, side).buildProtocol(transport.getPeer())
    client.makeConnection(transport)
    return client


def parsed(data: bytes) -> ProxyProtocolPeer:
    """What a PROXY protocol backend makes of C{data}."""
    peer = ProxyProtocolPeer()
    peer.makeConnection(StringTransport())
    peer.dataReceived(data)
    return peer


class AccessTests(SynchronousTestCase):
    """C{[access]} is checked at admission, before limits and before any backend is chosen."""

    def test_deniedClientClosedAtOnceCountedAndNeverRouted(self) -> None:
        server = make_server(access=AccessConfig(default="deny", rules=("allow 192.0.2.0/24",)))
        relay, transport = accept(server, "198.51.100.7")
        self.assertTrue(transport.disconnecting)
        self.assertEqual((server.counters.denied, server.counters.total_connections), (1, 0))
        self.assertEqual((attempted(server), server.relays), ([], {}))
        relay, transport = accept(server, "192.0.2.9")
        self.assertFalse(transport.disconnecting)
        self.assertEqual(attempted(server), ["10.0.0.1:80"])

    def test_deniedIsNotOverLimit(self) -> None:
        server = make_server(max_connections=1, access=AccessConfig(rules=("deny 198.51.100.7",)))
        accept(server)
        accept(server, "198.51.100.7")
        self.assertEqual((server.counters.denied, server.counters.over_limit), (1, 0))

    def test_rulesChangeInPlace(self) -> None:
        server = make_server()
        server.reconfigure(attrs.evolve(server.config, access=AccessConfig(default="deny")))
        relay, transport = accept(server)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(server.counters.denied, 1)


class SniSideTests(SynchronousTestCase):
    """A TCP server with C{[sni]} reads the ClientHello, routes by it and relays it untouched."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def arrive(self, peer: str = "192.0.2.1", **sni: Any) -> tuple[ServerService, SniClientSide, FakeTransport]:
        server = make_server(self.reactor, SNI_BACKENDS, sni=SniConfig(**sni))
        transport = FakeTransport(peer)
        client = accept_with(server, SniClientSide, transport)
        assert isinstance(client, SniClientSide)
        return server, client, transport

    def test_readsTheWholeHelloThenRoutesByItsName(self) -> None:
        server, client, transport = self.arrive()
        hello = client_hello(b"b.test")
        client.dataReceived(hello[:40])
        self.assertEqual((transport.producerState, attempted(server)), ("producing", []))
        client.dataReceived(hello[40:])
        self.assertEqual((transport.producerState, attempted(server)), ("paused", ["10.0.0.2:443"]))
        self.assertEqual(client.relay.server_name, "b.test")
        side, backend = connect(server)
        self.assertEqual(backend.value(), hello)
        client.dataReceived(b"after")
        self.assertEqual(backend.value(), hello + b"after")
        self.assertEqual((client.relay.tx, server.counters.traffic.tx), (len(hello) + 5, len(hello) + 5))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_helloWithoutNameGoesToBackendsWithoutSni(self) -> None:
        server, client, transport = self.arrive()
        client.dataReceived(client_hello())
        self.assertEqual(attempted(server), ["10.0.0.3:443"])

    def test_notAHelloClosedAndCounted(self) -> None:
        server, client, transport = self.arrive()
        client.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertTrue(transport.disconnecting)
        self.assertEqual((server.counters.sni_failures, attempted(server)), (1, []))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_silenceClosedAtReadTimeoutAndCounted(self) -> None:
        server, client, transport = self.arrive(read_timeout=2.0)
        client.dataReceived(client_hello(b"a.test")[:10])
        self.reactor.advance(1.999)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.001)
        self.assertTrue(transport.disconnecting)
        self.assertEqual((server.counters.sni_failures, attempted(server)), (1, []))

    def test_readTimeoutZeroWaitsForever(self) -> None:
        server, client, transport = self.arrive(read_timeout=0.0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_readTimeoutZeroWaitsTheClientIdleTimeout(self) -> None:
        """A silent client is idle: without a read_timeout, client_idle_timeout bounds the wait for its hello."""
        server = make_server(self.reactor, SNI_BACKENDS, sni=SniConfig(read_timeout=0.0), client_idle_timeout=2.0)
        transport = FakeTransport()
        accept_with(server, SniClientSide, transport)
        self.reactor.advance(1.999)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.001)
        self.assertTrue(transport.disconnecting)
        self.assertEqual((server.counters.sni_failures, attempted(server)), (1, []))

    def test_clientLeavingBeforeItsHelloIsNotCounted(self) -> None:
        server, client, transport = self.arrive()
        client.dataReceived(client_hello(b"a.test")[:10])
        lose(client)
        self.assertEqual((server.counters.sni_failures, server.relays), (0, {}))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_rejectedNameClosedAndCounted(self) -> None:
        server, client, transport = self.arrive(unexpected_hostname_strategy="reject")
        client.dataReceived(client_hello(b"c.test"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual((server.counters.sni_failures, attempted(server)), (1, []))

    def test_retriesStayWithinTheBackendsOfTheName(self) -> None:
        server = make_server(self.reactor, ("10.0.0.1:443 sni=a.test", "10.0.0.2:443 sni=a.test", "10.0.0.3:443"),
                             sni=SniConfig())
        client = accept_with(server, SniClientSide, FakeTransport())
        client.dataReceived(client_hello(b"a.test"))
        fail(server)
        fail(server)
        self.assertEqual(attempted(server), ["10.0.0.1:443", "10.0.0.2:443"])
        self.assertEqual(server.counters.no_backend, 1)

    def test_deniedClientIsNotRead(self) -> None:
        server = make_server(self.reactor, SNI_BACKENDS, sni=SniConfig(), access=AccessConfig(default="deny"))
        transport = FakeTransport()
        accept_with(server, SniClientSide, transport)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class ProxyProtocolTests(SynchronousTestCase):
    """C{[proxy_protocol]}: the header goes to each backend first and is not counted as client bytes."""

    def test_headerFirstThenClientBytes(self) -> None:
        for version in ("1", "2"):
            server = make_server(proxy_protocol=ProxyProtocolConfig(version=version))
            relay, client = accept(server, "192.0.2.7")
            side, backend = connect(server)
            relay.from_client(b"hello")
            peer = parsed(backend.value())
            self.assertEqual((peer.version, peer.protocol), (int(version), "TCP4"))
            self.assertEqual((peer.source, peer.destination), (("192.0.2.7", 40000), ("10.0.0.1", 12345)))
            self.assertEqual(peer.received, b"hello")
            self.assertEqual((relay.tx, server.counters.traffic.tx), (5, 5))

    def test_everyAttemptGetsTheHeader(self) -> None:
        server = make_server(proxy_protocol=ProxyProtocolConfig(version="1"))
        accept(server)
        fail(server)
        side, backend = connect(server)
        self.assertTrue(backend.value().startswith(b"PROXY TCP4 192.0.2.1 10.0.0.1 40000 12345\r\n"))

    def test_headerBeforeTheSniHello(self) -> None:
        server = make_server(None, SNI_BACKENDS[:1], sni=SniConfig(), proxy_protocol=ProxyProtocolConfig(version="2"))
        client = accept_with(server, SniClientSide, FakeTransport())
        hello = client_hello(b"a.test")
        client.dataReceived(hello)
        side, backend = connect(server)
        peer = parsed(backend.value())
        self.assertEqual((peer.version, peer.received), (2, hello))

    def test_noSectionNoHeader(self) -> None:
        server = make_server()
        relay, client = accept(server)
        side, backend = connect(server)
        relay.from_client(b"hello")
        self.assertEqual(backend.value(), b"hello")


class FakeTlsTransport(FakeTransport):
    """A client transport as a terminating TLS layer shows it to the relay: with the server name received."""

    def __init__(self, server_name: bytes | None = None) -> None:
        super().__init__()
        self.server_name = server_name

    def getHandle(self) -> FakeTlsTransport:
        return self

    def get_servername(self) -> bytes | None:
        return self.server_name


class TlsClientSideTests(SynchronousTestCase):
    """C{protocol = "tls"}: clients are admitted at once and routed after their handshake."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def arrive(
        self, server_name: bytes | None = None, **options: Any
    ) -> tuple[ServerService, TlsClientSide, FakeTlsTransport]:
        server = make_server(self.reactor, SNI_BACKENDS, **options)
        transport = FakeTlsTransport(server_name)
        client = accept_with(server, TlsClientSide, transport)
        assert isinstance(client, TlsClientSide)
        return server, client, transport

    def test_routedOnlyOnceTheHandshakeIsDone(self) -> None:
        server, client, transport = self.arrive()
        self.assertEqual((server.counters.active_connections, attempted(server)), (1, []))
        client.handshakeCompleted()
        self.assertEqual((transport.producerState, attempted(server)), ("paused", ["10.0.0.1:443"]))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_routedByTheNameTheTlsLayerReceived(self) -> None:
        server, client, transport = self.arrive(b"b.test", sni=SniConfig())
        client.handshakeCompleted()
        self.assertEqual(attempted(server), ["10.0.0.2:443"])

    def test_handshakeTimeoutIsClientIdleTimeout(self) -> None:
        server, client, transport = self.arrive(client_idle_timeout=5.0)
        self.reactor.advance(4.9)
        self.assertFalse(transport.aborted)
        self.reactor.advance(0.1)
        self.assertTrue(transport.aborted)
        client.connectionLost(Failure(ConnectionLost()))
        self.assertEqual((server.counters.tls_failures, server.relays), (1, {}))

    def test_defaultHandshakeTimeout(self) -> None:
        self.arrive()
        [call] = self.reactor.getDelayedCalls()
        self.assertEqual(call.getTime(), DEFAULT_HANDSHAKE_TIMEOUT)

    def test_failedHandshakeCounted(self) -> None:
        server, client, transport = self.arrive()
        client.connectionLost(Failure(SSL.Error([("SSL routines", "", "wrong version number")])))
        self.assertEqual((server.counters.tls_failures, server.relays), (1, {}))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_clientLeavingDuringItsHandshakeNotCounted(self) -> None:
        server, client, transport = self.arrive()
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((server.counters.tls_failures, server.relays), (0, {}))

    def test_endOfBackendClosesTheTlsClientWithReadingResumed(self) -> None:
        server, client, transport = self.arrive()
        client.handshakeCompleted()
        side, backend = connect(server)
        transport.pauseProducing()
        side.readConnectionLost()
        self.assertEqual((transport.producerState, transport.disconnecting, transport.write_closed),
                         ("producing", True, False))


class BackendTlsTests(SynchronousTestCase):
    """C{[backends_tls]}: a backend is joined once its handshake is done; a failed one is a refusal."""

    def setUp(self) -> None:
        self.server = make_server(backends_tls=BackendsTlsConfig(ignore_verify=True))
        self.relay, self.client = accept(self.server)

    def tls_connect(self, index: int = -1) -> tuple[Any, FakeTransport]:
        """The TCP connection of attempt C{index} is made; returns the TLS protocol and its raw transport."""
        factory = self.server.reactor.tcpClients[index][2]
        self.assertIsInstance(factory, BackendTLSFactory)
        protocol = factory.buildProtocol(None)
        transport = FakeTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    def test_joinedAfterTheHandshake(self) -> None:
        protocol, transport = self.tls_connect()
        self.assertTrue(transport.value().startswith(b"\x16\x03"))
        self.assertIsNone(self.relay.backend_side)
        side = protocol.wrappedProtocol
        self.assertIsInstance(side, TlsBackendSide)
        side.handshakeCompleted()
        self.assertIs(self.relay.backend_side, side)
        self.assertEqual([b.counters.total_connections for b in self.server.pool], [1, 0, 0])

    def test_failedHandshakeIsARefusalAndTheNextBackendIsTried(self) -> None:
        protocol, transport = self.tls_connect()
        protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        counters = [b.counters for b in self.server.pool]
        self.assertEqual([c.refused_connections for c in counters], [1, 0, 0])
        self.assertEqual([c.active_connections for c in counters], [0, 1, 0])
        self.assertEqual(attempted(self.server), ["10.0.0.1:80", "10.0.0.2:80"])

    def test_handshakeNotDoneWithinTheConnectTimeoutIsARefusal(self) -> None:
        server = make_server(backends_tls=BackendsTlsConfig(ignore_verify=True), backend_connection_timeout=2.0)
        accept(server)
        protocol = server.reactor.tcpClients[-1][2].buildProtocol(None)
        transport = FakeTransport()
        protocol.makeConnection(transport)
        server.reactor.advance(1.9)
        self.assertFalse(transport.aborted)
        server.reactor.advance(0.1)
        self.assertTrue(transport.aborted)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([b.counters.refused_connections for b in server.pool], [1, 0, 0])
        self.assertEqual(attempted(server), ["10.0.0.1:80", "10.0.0.2:80"])

    def test_clientLeavingDuringTheHandshakeAbortsItWithoutARefusal(self) -> None:
        protocol, transport = self.tls_connect()
        lose(self.relay.client)
        self.assertTrue(transport.aborted)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([b.counters.refused_connections for b in self.server.pool], [0, 0, 0])
        self.assertEqual([b.counters.active_connections for b in self.server.pool], [0, 0, 0])
        self.assertEqual(self.server.relays, {})

    def test_lateConnectOfAnAbandonedAttemptBuildsNothing(self) -> None:
        lose(self.relay.client)
        factory = self.server.reactor.tcpClients[-1][2]
        self.assertIsNone(factory.buildProtocol(None))

    def test_proxyHeaderInClearBeforeTheClientHello(self) -> None:
        server = make_server(backends_tls=BackendsTlsConfig(ignore_verify=True),
                             proxy_protocol=ProxyProtocolConfig(version="1"))
        accept(server, "192.0.2.7")
        protocol = server.reactor.tcpClients[-1][2].buildProtocol(None)
        transport = FakeTransport()
        protocol.makeConnection(transport)
        header, _, rest = transport.value().partition(b"\r\n")
        self.assertEqual(header, b"PROXY TCP4 192.0.2.7 10.0.0.1 40000 12345")
        self.assertTrue(rest.startswith(b"\x16\x03"))


class ListenerTests(SynchronousTestCase):
    """How each protocol listens."""

    def test_tcpRelaysPlainClientSides(self) -> None:
        server = make_server()
        [(_, factory, _, _)] = server.reactor.tcpServers
        self.assertIsInstance(factory, RelayFactory)
        self.assertIs(factory.side, ClientSide)

    def test_tcpWithSniReadsTheHelloFirst(self) -> None:
        server = make_server(sni=SniConfig())
        [(_, factory, _, _)] = server.reactor.tcpServers
        self.assertIs(factory.side, SniClientSide)

    def test_tlsTerminates(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        pair = make_certificates(directory).server
        server = make_server(protocol="tls", tls=TlsConfig(cert_path=pair.cert_path, key_path=pair.key_path))
        [(_, factory, _, _)] = server.reactor.tcpServers
        self.assertIsInstance(factory, TLSMemoryBIOFactory)
        self.assertIs(factory.wrappedFactory.side, TlsClientSide)

    def test_unreadableCertificateIsABindErrorNamingKeyAndFile(self) -> None:
        reactor = MemoryReactorClock()
        tls = TlsConfig(cert_path="/nonexistent/c.pem", key_path="/nonexistent/k.pem")
        config = server_config(protocol="tls", tls=tls)
        server = ServerService("web", config, reactor, RateClock(reactor))
        error = self.assertRaises(BindError, server.bind)
        self.assertIn('server "web": tls.cert_path: cannot read "/nonexistent/c.pem"', str(error))
        self.assertEqual(reactor.tcpServers, [])

    def test_udpListensWithAUdpProxy(self) -> None:
        reactor = UdpReactor()
        config = server_config(protocol="udp", udp=UdpConfig(max_responses=1), client_idle_timeout=3.0)
        server = ServerService("dns", config, reactor, RateClock(reactor), rng=random.Random(0))
        server.startService()
        [(port, proxy, interface, size)] = reactor.udpServers
        self.assertEqual((port, interface, size), (0, "127.0.0.1", MAX_DATAGRAM))
        self.assertIs(proxy, server.udp)
        self.assertIsInstance(proxy, UdpProxy)
        self.assertEqual((proxy.max_responses, proxy.client_idle_timeout, proxy.admission.access), (1, 3.0, None))
        self.assertEqual(reactor.tcpServers, [])
        self.assertEqual(server.address, "127.0.0.1:0")

    def test_udpDeniedDatagramsDroppedAndCounted(self) -> None:
        reactor = UdpReactor()
        config = server_config(protocol="udp", access=AccessConfig(rules=("deny 192.0.2.0/24",)))
        server = ServerService("dns", config, reactor, RateClock(reactor))
        server.startService()
        assert server.udp is not None
        server.udp.datagramReceived(b"q", ("192.0.2.1", 5353))
        self.assertEqual((server.counters.denied, server.stats()["active_connections"]), (1, 0))
        self.assertEqual(len(reactor.udpServers), 1)

    def test_udpReconfiguredInPlace(self) -> None:
        reactor = UdpReactor()
        config = server_config(protocol="udp")
        server = ServerService("dns", config, reactor, RateClock(reactor))
        server.startService()
        server.reconfigure(attrs.evolve(config, access=AccessConfig(default="deny"), backend_idle_timeout=4.0))
        proxy = server.udp
        assert proxy is not None and proxy.admission.access is not None
        self.assertEqual((proxy.admission.access.default, proxy.backend_idle_timeout), (False, 4.0))

    def test_listenerKeys(self) -> None:
        udp = server_config(protocol="udp")
        self.assertTrue(listener_keys_changed(udp, attrs.evolve(udp, udp=UdpConfig(max_requests=1))))
        self.assertTrue(listener_keys_changed(udp, attrs.evolve(udp, protocol="tcp")))
        self.assertTrue(listener_keys_changed(server_config(), attrs.evolve(server_config(), sni=SniConfig())))
        self.assertFalse(listener_keys_changed(udp, attrs.evolve(udp, access=AccessConfig(default="deny"))))
        self.assertFalse(
            listener_keys_changed(server_config(), attrs.evolve(server_config(), proxy_protocol=ProxyProtocolConfig()))
        )


class RelayClassTests(SynchronousTestCase):
    """A relay's client side is of the class its factory was given."""

    def test_sideClass(self) -> None:
        server = make_server()
        self.assertIsInstance(Relay(server, SniClientSide).client, SniClientSide)
        self.assertIsInstance(Relay(server).client, ClientSide)
