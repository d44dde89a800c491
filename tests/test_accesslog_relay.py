"""
Every ending of a client connection becomes one L{FinishedConnection} with
the right reason (L{balancer.proxy.finished}): TCP relays on fakes (a
L{MemoryReactorClock}, string transports), TLS ends, SNI reading and UDP
sessions.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL
from twisted.internet.defer import fail as failed
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost, TimeoutError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from balancer.backends import Backend
from balancer.config.addresses import BackendSpec
from balancer.config.schema import AccessConfig, BackendsTlsConfig, SniConfig
from balancer.proxy import finished as reasons
from balancer.proxy.finished import FinishedConnection, FinishedConnections
from balancer.proxy.sni import SniClientSide
from balancer.proxy.tcp import ClientSide, RelayFactory
from balancer.proxy.tls_relay import TlsClientSide
from balancer.proxy.udp import DEFAULT_IDLE_TIMEOUT, UdpProxy
from balancer.server_service import ServerService
from balancer.stats import RateClock, ServerCounters
from tests.support.hellos import client_hello
from tests.support.reactors import UdpReactor
from tests.support.relays import FakeTransport, accept, connect, fail, lose, make_server, server_config

SNI_BACKENDS = ("10.0.0.1:443 sni=a.test", "10.0.0.2:443 sni=b.test")


def recorded(server: ServerService) -> list[FinishedConnection]:
    """What C{server} publishes from now on."""
    records: list[FinishedConnection] = []
    server.finished.subscribe(records.append)
    return records


def aborted(*sides: Any) -> None:
    """The connections of C{sides}, which the relay aborted, are lost."""
    for side in sides:
        side.connectionLost(Failure(ConnectionAborted()))


class TcpRecordTests(SynchronousTestCase):
    """What a finished TCP relay's record holds besides its reason."""

    def test_oneRecordOnceBothSidesAreClosed(self) -> None:
        reactor = MemoryReactorClock()
        reactor.advance(1000.0)
        server = make_server(reactor)
        records = recorded(server)
        relay, client = accept(server, "192.0.2.7")
        reactor.advance(0.25)
        side, backend = connect(server)
        relay.client.dataReceived(b"hello")
        side.dataReceived(b"answer!")
        reactor.advance(1.0)
        side.readConnectionLost()
        lose(side)
        self.assertEqual(records, [])
        lose(relay.client)
        self.assertEqual(
            records,
            [
                FinishedConnection(
                    server="web",
                    protocol="tcp",
                    client="192.0.2.7:40000",
                    backend="10.0.0.1:80",
                    started=1000.0,
                    connect_seconds=0.25,
                    duration_seconds=1.25,
                    rx=7,
                    tx=5,
                    reason=reasons.BACKEND_CLOSED,
                )
            ],
        )
        lose(relay.client)
        self.assertEqual(len(records), 1)

    def test_noRecordIsMadeWithoutSubscribers(self) -> None:
        """With nobody subscribed (no access log, no metrics), an ending relay builds no record."""
        import balancer.proxy.tcp

        def no_record(**fields: Any) -> FinishedConnection:
            raise AssertionError("a record was made for nobody")

        self.patch(balancer.proxy.tcp, "FinishedConnection", no_record)
        server = make_server()
        self.assertFalse(server.finished.wanted)
        relay, client = accept(server, "192.0.2.7")
        side, backend = connect(server)
        lose(side)
        lose(relay.client)
        self.assertEqual(server.relays, {})

    def test_wantedOnlyWhileSomeoneSubscribed(self) -> None:
        finished = FinishedConnections()
        unsubscribe = finished.subscribe(lambda connection: None)
        self.assertTrue(finished.wanted)
        unsubscribe()
        self.assertFalse(finished.wanted)

    def test_connectTimeIsThatOfTheAttemptThatSucceeded(self) -> None:
        server = make_server()
        records = recorded(server)
        relay, client = accept(server)
        server.reactor.advance(2.0)
        fail(server)
        server.reactor.advance(0.5)
        side, backend = connect(server)
        lose(relay.client)
        lose(side)
        [record] = records
        self.assertEqual((record.backend, record.connect_seconds, record.duration_seconds), ("10.0.0.2:80", 0.5, 2.5))

    def test_clientLeavingWhileConnectingNamesTheBackendTried(self) -> None:
        server = make_server()
        records = recorded(server)
        relay, client = accept(server)
        lose(relay.client)
        [record] = records
        self.assertEqual((record.reason, record.backend, record.connect_seconds), (reasons.CLIENT_CLOSED, "10.0.0.1:80", None))

    def test_ipv6ClientInBrackets(self) -> None:
        server = make_server()
        records = recorded(server)
        relay, client = accept(server, "2001:db8::1")
        lose(relay.client)
        self.assertEqual(records[0].client, "[2001:db8::1]:40000")


class TcpReasonTests(SynchronousTestCase):
    """The reason of a TCP relay: the first cause, else the side that ended first."""

    def relayed(self, **options: Any) -> tuple[ServerService, Any, FakeTransport, Any, FakeTransport, list[FinishedConnection]]:
        server = make_server(**options)
        records = recorded(server)
        relay, client = accept(server)
        side, backend = connect(server)
        return server, relay, client, side, backend, records

    def reason(self, records: list[FinishedConnection]) -> str:
        [record] = records
        return record.reason

    def test_clientClosed(self) -> None:
        server, relay, client, side, backend, records = self.relayed()
        relay.client.readConnectionLost()
        self.assertTrue(backend.write_closed)
        side.readConnectionLost()
        lose(side)
        lose(relay.client)
        self.assertEqual(self.reason(records), reasons.CLIENT_CLOSED)

    def test_backendClosed(self) -> None:
        server, relay, client, side, backend, records = self.relayed()
        side.readConnectionLost()
        relay.client.readConnectionLost()
        lose(relay.client)
        lose(side)
        self.assertEqual(self.reason(records), reasons.BACKEND_CLOSED)

    def test_clientReset(self) -> None:
        server, relay, client, side, backend, records = self.relayed()
        relay.client.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(backend.aborted)
        aborted(side)
        self.assertEqual(self.reason(records), reasons.CLIENT_RESET)

    def test_backendReset(self) -> None:
        server, relay, client, side, backend, records = self.relayed()
        side.connectionLost(Failure(ConnectionLost()))
        aborted(relay.client)
        self.assertEqual(self.reason(records), reasons.BACKEND_RESET)

    def test_aResetAfterACleanEndWins(self) -> None:
        server, relay, client, side, backend, records = self.relayed()
        relay.client.readConnectionLost()
        side.connectionLost(Failure(ConnectionLost()))
        aborted(relay.client)
        self.assertEqual(self.reason(records), reasons.BACKEND_RESET)

    def test_clientIdle(self) -> None:
        server, relay, client, side, backend, records = self.relayed(client_idle_timeout=5.0)
        server.reactor.advance(5.0)
        self.assertTrue(client.aborted and backend.aborted)
        aborted(relay.client, side)
        self.assertEqual(self.reason(records), reasons.CLIENT_IDLE)

    def test_backendIdle(self) -> None:
        server, relay, client, side, backend, records = self.relayed(backend_idle_timeout=5.0)
        relay.client.readConnectionLost()
        server.reactor.advance(5.0)
        aborted(relay.client, side)
        self.assertEqual(self.reason(records), reasons.BACKEND_IDLE)

    def test_closedByTheBalancer(self) -> None:
        server, relay, client, side, backend, records = self.relayed()
        relay.close()
        aborted(relay.client, side)
        self.assertEqual(self.reason(records), reasons.CLOSED_BY_BALANCER)

    def test_shutdownAtTheEndOfTheGrace(self) -> None:
        server, relay, client, side, backend, records = self.relayed(grace=1.0)
        server.stopService()
        server.reactor.advance(1.0)
        aborted(relay.client, side)
        self.assertEqual(self.reason(records), reasons.SHUTDOWN)

    def test_endingInTheGraceIsTheEndingItself(self) -> None:
        server, relay, client, side, backend, records = self.relayed(grace=1.0)
        server.stopService()
        side.readConnectionLost()
        lose(side)
        lose(relay.client)
        self.assertEqual(self.reason(records), reasons.BACKEND_CLOSED)


class TcpRefusalTests(SynchronousTestCase):
    """Clients that never get a backend connection."""

    def test_connectRefused(self) -> None:
        server = make_server(backends=("10.0.0.1:80",))
        records = recorded(server)
        relay, client = accept(server)
        fail(server)
        self.assertTrue(client.disconnecting)
        lose(relay.client)
        [record] = records
        self.assertEqual((record.reason, record.backend, record.connect_seconds), (reasons.CONNECT_FAILED, "10.0.0.1:80", None))

    def test_connectTimeout(self) -> None:
        server = make_server(backends=("10.0.0.1:80",))
        records = recorded(server)
        relay, client = accept(server)
        fail(server, reason=TimeoutError())
        lose(relay.client)
        self.assertEqual(records[0].reason, reasons.CONNECT_TIMEOUT)

    def test_theLastFailureOfTheRetriesIsTheReason(self) -> None:
        server = make_server(backends=("10.0.0.1:80", "10.0.0.2:80"))
        records = recorded(server)
        relay, client = accept(server)
        fail(server, reason=TimeoutError())
        fail(server)
        lose(relay.client)
        self.assertEqual((records[0].reason, records[0].backend), (reasons.CONNECT_FAILED, "10.0.0.2:80"))

    def test_noBackend(self) -> None:
        server = make_server(backends=())
        records = recorded(server)
        relay, client = accept(server)
        lose(relay.client)
        [record] = records
        self.assertEqual((record.reason, record.backend), (reasons.NO_BACKEND, None))

    def test_denied(self) -> None:
        server = make_server(access=AccessConfig(default="deny"))
        records = recorded(server)
        relay, client = accept(server)
        lose(relay.client)
        [record] = records
        self.assertEqual((record.reason, record.backend, record.rx, record.tx), (reasons.DENIED, None, 0, 0))

    def test_overTheLimit(self) -> None:
        server = make_server(max_connections=1)
        records = recorded(server)
        accept(server)
        relay, client = accept(server)
        lose(relay.client)
        self.assertEqual([r.reason for r in records], [reasons.OVER_LIMIT])


class FakeTlsTransport(FakeTransport):
    """A client transport as a terminating TLS layer shows it to the relay: with the server name received."""

    def getHandle(self) -> FakeTlsTransport:
        return self

    def get_servername(self) -> bytes | None:
        return None


def arrive(server: ServerService, side: type[ClientSide], transport: FakeTransport) -> Any:
    """A client arrives through a listener whose relays have client sides of class C{side}."""
    client = RelayFactory(server, side).buildProtocol(transport.getPeer())
    client.makeConnection(transport)
    return client


class TlsReasonTests(SynchronousTestCase):
    """TLS at either end: a failed or slow handshake."""

    def test_clientHandshakeFailed(self) -> None:
        server = make_server(backends=SNI_BACKENDS)
        records = recorded(server)
        client = arrive(server, TlsClientSide, FakeTlsTransport())
        client.connectionLost(Failure(SSL.Error([("SSL routines", "", "wrong version number")])))
        [record] = records
        self.assertEqual((record.reason, record.backend), (reasons.TLS_FAILED, None))

    def test_clientHandshakeTimedOut(self) -> None:
        server = make_server(backends=SNI_BACKENDS, client_idle_timeout=5.0)
        records = recorded(server)
        client = arrive(server, TlsClientSide, FakeTlsTransport())
        server.reactor.advance(5.0)
        aborted(client)
        self.assertEqual(records[0].reason, reasons.TLS_TIMEOUT)

    def test_clientLeavingDuringItsHandshake(self) -> None:
        server = make_server(backends=SNI_BACKENDS)
        records = recorded(server)
        client = arrive(server, TlsClientSide, FakeTlsTransport())
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(records[0].reason, reasons.CLIENT_CLOSED)

    def test_relayedTlsClientEndsAsAnyClient(self) -> None:
        server = make_server(backends=SNI_BACKENDS)
        records = recorded(server)
        client = arrive(server, TlsClientSide, FakeTlsTransport())
        client.handshakeCompleted()
        side, backend = connect(server)
        side.readConnectionLost()
        client.connectionLost(Failure(ConnectionDone()))
        lose(side)
        self.assertEqual((records[0].reason, records[0].backend), (reasons.BACKEND_CLOSED, "10.0.0.1:443"))

    def backend_handshake(self, **options: Any) -> tuple[ServerService, list[FinishedConnection], Any]:
        server = make_server(backends=("10.0.0.1:443",), backends_tls=BackendsTlsConfig(ignore_verify=True), **options)
        records = recorded(server)
        relay, client = accept(server)
        protocol = server.reactor.tcpClients[-1][2].buildProtocol(None)
        protocol.makeConnection(FakeTransport())
        return server, records, (relay, protocol)

    def test_backendHandshakeFailedIsAFailedConnect(self) -> None:
        server, records, (relay, protocol) = self.backend_handshake()
        protocol.dataReceived(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        protocol.connectionLost(Failure(ConnectionDone()))
        lose(relay.client)
        self.assertEqual((records[0].reason, records[0].backend), (reasons.CONNECT_FAILED, "10.0.0.1:443"))

    def test_backendHandshakeTimedOutIsAConnectTimeout(self) -> None:
        server, records, (relay, protocol) = self.backend_handshake(backend_connection_timeout=2.0)
        server.reactor.advance(2.0)
        protocol.connectionLost(Failure(ConnectionDone()))
        lose(relay.client)
        self.assertEqual(records[0].reason, reasons.CONNECT_TIMEOUT)

    def test_connectTimeIncludesTheBackendHandshake(self) -> None:
        server, records, (relay, protocol) = self.backend_handshake()
        server.reactor.advance(0.5)
        protocol.wrappedProtocol.handshakeCompleted()
        lose(relay.client)
        protocol.wrappedProtocol.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(records[0].connect_seconds, 0.5)


class SniReasonTests(SynchronousTestCase):
    """A TCP server with C{[sni]}: a bad, late or rejected ClientHello."""

    def arrive(self, **sni: Any) -> tuple[ServerService, SniClientSide, list[FinishedConnection]]:
        server = make_server(backends=SNI_BACKENDS, sni=SniConfig(**sni))
        records = recorded(server)
        return server, arrive(server, SniClientSide, FakeTransport()), records

    def test_notAHello(self) -> None:
        server, client, records = self.arrive()
        client.dataReceived(b"GET / HTTP/1.1\r\n")
        lose(client)
        self.assertEqual(records[0].reason, reasons.BAD_HELLO)

    def test_noHelloWithinTheReadTimeout(self) -> None:
        server, client, records = self.arrive(read_timeout=2.0)
        server.reactor.advance(2.0)
        lose(client)
        self.assertEqual(records[0].reason, reasons.HELLO_TIMEOUT)

    def test_nameRejected(self) -> None:
        server, client, records = self.arrive(unexpected_hostname_strategy="reject")
        client.dataReceived(client_hello(b"c.test"))
        lose(client)
        self.assertEqual((records[0].reason, records[0].backend), (reasons.SNI_REJECTED, None))

    def test_clientLeavingBeforeItsHello(self) -> None:
        server, client, records = self.arrive()
        client.dataReceived(client_hello(b"a.test")[:10])
        client.readConnectionLost()
        lose(client)
        self.assertEqual(records[0].reason, reasons.CLIENT_CLOSED)


class UdpReasonTests(SynchronousTestCase):
    """One record per UDP session, when it ends."""

    def setUp(self) -> None:
        self.reactor = UdpReactor()
        self.finished = FinishedConnections()
        self.records: list[FinishedConnection] = []
        self.finished.subscribe(self.records.append)
        self.backend = Backend(BackendSpec("127.0.0.1", 5353))

    def proxy(self, **options: Any) -> UdpProxy:
        """A proxy listening on the memory reactor."""
        proxy = UdpProxy(lambda host: self.backend, ServerCounters(), reactor=self.reactor, name="dns",
                         finished=self.finished, **options)
        self.reactor.listenUDP(53, proxy)
        return proxy

    def answer(self, data: bytes, index: int = -1) -> None:
        """The backend socket of session C{index} receives C{data}."""
        self.reactor.udpServers[index][1].datagramReceived(data, ("127.0.0.1", 5353))

    def test_maxResponsesReached(self) -> None:
        proxy = self.proxy(max_responses=1)
        self.reactor.advance(10.0)
        proxy.datagramReceived(b"query", ("192.0.2.7", 1000))
        self.reactor.advance(0.5)
        self.answer(b"answer!")
        self.assertEqual(
            self.records,
            [
                FinishedConnection(
                    server="dns",
                    protocol="udp",
                    client="192.0.2.7:1000",
                    backend="127.0.0.1:5353",
                    started=10.0,
                    connect_seconds=0.0,
                    duration_seconds=0.5,
                    rx=7,
                    tx=5,
                    reason=reasons.RESPONSES_DONE,
                )
            ],
        )

    def test_idleTimeouts(self) -> None:
        for options, reason in [
            ({"client_idle_timeout": 5.0}, reasons.CLIENT_IDLE),
            ({"backend_idle_timeout": 5.0}, reasons.BACKEND_IDLE),
            ({}, reasons.IDLE_TIMEOUT),
        ]:
            del self.records[:]
            proxy = self.proxy(**options)
            proxy.datagramReceived(b"q", ("192.0.2.7", 1000))
            self.reactor.advance(DEFAULT_IDLE_TIMEOUT)
            self.assertEqual([r.reason for r in self.records], [reason], options)

    def test_backendRefused(self) -> None:
        proxy = self.proxy()
        proxy.datagramReceived(b"q", ("192.0.2.7", 1000))
        self.reactor.udpServers[-1][1].connectionRefused()
        self.assertEqual([r.reason for r in self.records], [reasons.CONNECT_FAILED])

    def test_closedByRequestAndAtShutdown(self) -> None:
        proxy = self.proxy()
        proxy.datagramReceived(b"q", ("192.0.2.7", 1000))
        proxy.datagramReceived(b"q", ("192.0.2.7", 1001))
        proxy.sessions["192.0.2.7", 1000].end("closed by request")
        proxy.close_all()
        self.assertEqual([r.reason for r in self.records], [reasons.CLOSED_BY_BALANCER, reasons.SHUTDOWN])

    def test_unresolvedBackendIsAFailedConnect(self) -> None:
        self.backend = Backend(BackendSpec("nowhere.test", 53))
        proxy = self.proxy()
        self.reactor.resolve = lambda name, timeout=(): failed(OSError("no such name"))  # type: ignore[method-assign]
        proxy.datagramReceived(b"q", ("192.0.2.7", 1000))
        self.assertEqual([(r.reason, r.connect_seconds) for r in self.records], [(reasons.CONNECT_FAILED, None)])

    def test_serverSessionsPublishToTheServersPublisher(self) -> None:
        config = server_config(("127.0.0.1:5353",), protocol="udp")
        server = ServerService("dns", config, self.reactor, RateClock(self.reactor), finished=self.finished)
        assert server.udp is not None
        server.udp.datagramReceived(b"q", ("192.0.2.7", 1000))
        server.udp.close_all()
        self.assertEqual([(r.server, r.protocol) for r in self.records], [("dns", "udp")])
