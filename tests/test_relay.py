"""
The TCP relay (L{balancer.proxy.tcp}) on fakes: a L{MemoryReactorClock} for
connects and time, and string transports for both ends of each relay
(L{tests.support.relays}).
"""

from __future__ import annotations

from twisted.internet.error import ConnectionLost, TimeoutError, UserError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from balancer.config.addresses import parse_backend_line
from balancer.proxy.finished import CLIENT_CLOSED, CLOSED_BY_BALANCER, CONNECT_FAILED, FinishedConnection
from balancer.proxy.tcp import IdleTimer, Relay
from balancer.server_service import DEFAULT_CONNECT_TIMEOUT, ServerService
from tests.support.relays import BACKENDS, accept, attempted, connect, fail, lose, make_server, relayed


class ConnectTests(SynchronousTestCase):
    """A client waits, paused, for a backend; then the two transports are joined."""

    def test_clientPausedUntilBackendConnects(self) -> None:
        server = make_server()
        relay, client = accept(server)
        self.assertEqual(client.producerState, "paused")
        self.assertEqual(attempted(server), ["10.0.0.1:80"])
        side, backend = connect(server)
        self.assertEqual(client.producerState, "producing")
        self.assertIs(relay.backend_side, side)

    def test_eachTransportIsTheOthersStreamingProducer(self) -> None:
        server, relay, client, side, backend = relayed()
        self.assertEqual((client.producer, client.streaming), (backend, True))
        self.assertEqual((backend.producer, backend.streaming), (client, True))

    def test_connectUsesBackendConnectionTimeout(self) -> None:
        server = make_server(backend_connection_timeout=2.5)
        accept(server)
        self.assertEqual(server.reactor.tcpClients[0][3], 2.5)

    def test_connectTimeoutZeroIsTheDefault(self) -> None:
        """0 is documented as the default of 30 seconds; Twisted would read 0 as "fail at once"."""
        server = make_server(backend_connection_timeout=0.0)
        accept(server)
        self.assertEqual(server.reactor.tcpClients[0][3], DEFAULT_CONNECT_TIMEOUT)
        self.assertEqual(DEFAULT_CONNECT_TIMEOUT, 30.0)

    def test_backendCountsActiveFromConnectAndTotalOnSuccess(self) -> None:
        server = make_server()
        accept(server)
        first = server.pool.get("10.0.0.1:80")
        self.assertEqual((first.counters.active_connections, first.counters.total_connections), (1, 0))
        connect(server)
        self.assertEqual((first.counters.active_connections, first.counters.total_connections), (1, 1))


class RelayBytesTests(SynchronousTestCase):
    """Bytes go through unchanged and are counted once, where they move."""

    def test_bothWaysCountedExactly(self) -> None:
        server, relay, client, side, backend = relayed()
        relay.client.dataReceived(b"hello")
        relay.client.dataReceived(b" world")
        side.dataReceived(b"answer!")
        self.assertEqual(backend.value(), b"hello world")
        self.assertEqual(client.value(), b"answer!")
        counters = server.pool.get("10.0.0.1:80").counters.traffic
        self.assertEqual((relay.tx, relay.rx), (11, 7))
        self.assertEqual((server.counters.traffic.tx, server.counters.traffic.rx), (11, 7))
        self.assertEqual((counters.tx, counters.rx), (11, 7))

    def test_earlyDataGoesFirst(self) -> None:
        """A transport that delivers bytes while paused (TLS may) loses none of them."""
        server = make_server()
        relay, client = accept(server)
        relay.client.dataReceived(b"early ")
        self.assertEqual(relay.tx, 0)
        side, backend = connect(server)
        relay.client.dataReceived(b"late")
        self.assertEqual(backend.value(), b"early late")
        self.assertEqual(server.counters.traffic.tx, 10)


class HalfCloseTests(SynchronousTestCase):
    """A shut-down write side is passed on; the other direction keeps flowing."""

    def test_clientHalfCloseReachesBackendAndAnswerStillFlows(self) -> None:
        server, relay, client, side, backend = relayed()
        relay.client.dataReceived(b"request")
        relay.client.readConnectionLost()
        self.assertTrue(backend.write_closed)
        self.assertFalse(backend.disconnecting)
        self.assertFalse(client.disconnecting or client.write_closed)
        side.dataReceived(b"the whole answer")
        self.assertEqual(client.value(), b"the whole answer")
        side.readConnectionLost()
        # The client finished sending before: done both ways, it is closed, not half-closed.
        self.assertTrue(client.disconnecting)
        self.assertFalse(client.write_closed)
        side.writeConnectionLost()
        self.assertTrue(backend.disconnecting)

    def test_backendHalfCloseReachesClientAndRequestStillFlows(self) -> None:
        server, relay, client, side, backend = relayed()
        side.dataReceived(b"banner")
        side.readConnectionLost()
        self.assertTrue(client.write_closed)
        self.assertFalse(backend.disconnecting or backend.write_closed)
        relay.client.dataReceived(b"request")
        self.assertEqual(backend.value(), b"request")
        relay.client.writeConnectionLost()
        relay.client.readConnectionLost()
        # The backend finished sending before: done both ways, it is closed, not half-closed.
        self.assertTrue(backend.disconnecting)
        self.assertFalse(backend.write_closed)
        self.assertTrue(client.disconnecting)

    def test_noProducerIsLeftRegisteredOnAClosingTransport(self) -> None:
        """A transport whose (paused) producer stays registered would never close."""
        server, relay, client, side, backend = relayed()
        relay.client.readConnectionLost()
        side.readConnectionLost()
        side.writeConnectionLost()
        relay.client.writeConnectionLost()
        self.assertEqual(backend.producer_at_close, [None, None])
        self.assertEqual(client.producer_at_close, [None, None])

    def test_finishWritingUnregistersFirst(self) -> None:
        server, relay, client, side, backend = relayed()
        self.assertIsNotNone(client.producer)
        relay.client.finish(half=True)
        relay.client.finish(half=False)
        self.assertEqual(client.producer_at_close, [None, None])
        self.assertTrue(client.write_closed and client.disconnecting)


class EndingTests(SynchronousTestCase):
    """Closing one end closes the other after a flush; the relay is forgotten once both are gone."""

    def test_clientGoneClosesBackendGracefully(self) -> None:
        server, relay, client, side, backend = relayed()
        lose(relay.client)
        self.assertTrue(backend.disconnecting)
        self.assertFalse(backend.aborted)
        self.assertEqual(list(server.relays), [relay.id])
        lose(side)
        self.assertEqual(server.relays, {})
        self.assertEqual(server.counters.active_connections, 0)
        self.assertEqual(server.pool.get("10.0.0.1:80").counters.active_connections, 0)

    def test_backendGoneClosesClientGracefully(self) -> None:
        server, relay, client, side, backend = relayed()
        side.dataReceived(b"last words")
        lose(side)
        self.assertTrue(client.disconnecting)
        self.assertFalse(client.aborted)
        self.assertEqual(server.pool.get("10.0.0.1:80").counters.active_connections, 0)
        self.assertEqual(server.counters.active_connections, 1)
        lose(relay.client)
        self.assertEqual((server.relays, server.counters.active_connections), ({}, 0))

    def test_closeAbortsBoth(self) -> None:
        server, relay, client, side, backend = relayed()
        relay.close()
        self.assertTrue(client.aborted and backend.aborted)

    def test_undiscoveredBackendForgottenAfterLastConnection(self) -> None:
        server, relay, client, side, backend = relayed()
        server.pool.replace([parse_backend_line("10.0.0.2:80")])
        self.assertFalse(server.pool.get("10.0.0.1:80").discovered)
        lose(relay.client)
        lose(side)
        self.assertIsNone(server.pool.get("10.0.0.1:80"))


class RetryTests(SynchronousTestCase):
    """A refused or timed-out connect is counted and the next backend is tried."""

    def test_refusedCountedAndNextTried(self) -> None:
        server = make_server()
        relay, client = accept(server)
        fail(server)
        first = server.pool.get("10.0.0.1:80")
        self.assertEqual(attempted(server), ["10.0.0.1:80", "10.0.0.2:80"])
        self.assertEqual((first.counters.refused_connections, first.counters.active_connections), (1, 0))
        self.assertTrue(first.live)
        self.assertFalse(client.disconnecting)
        connect(server)
        relay.client.dataReceived(b"x")
        self.assertEqual(server.pool.get("10.0.0.2:80").counters.traffic.tx, 1)

    def test_timedOutConnectMovesOn(self) -> None:
        server = make_server(backend_connection_timeout=2.0)
        accept(server)
        self.assertEqual(server.reactor.tcpClients[0][3], 2.0)
        fail(server, reason=TimeoutError())
        self.assertEqual(server.pool.get("10.0.0.1:80").counters.refused_connections, 1)
        self.assertEqual(attempted(server), ["10.0.0.1:80", "10.0.0.2:80"])

    def test_everyBackendOnceThenClientClosed(self) -> None:
        server = make_server()
        relay, client = accept(server)
        for _ in BACKENDS:
            fail(server)
        self.assertEqual(attempted(server), list(BACKENDS))
        self.assertTrue(client.disconnecting)
        self.assertEqual(server.counters.no_backend, 1)
        self.assertEqual([b.counters.refused_connections for b in server.pool], [1, 1, 1])
        self.assertEqual([b.counters.active_connections for b in server.pool], [0, 0, 0])
        lose(relay.client)
        self.assertEqual((server.relays, server.counters.active_connections), ({}, 0))

    def test_noBackendAtAll(self) -> None:
        server = make_server(backends=())
        relay, client = accept(server)
        self.assertTrue(client.disconnecting)
        self.assertEqual(server.counters.no_backend, 1)

    def test_clientGoneWhileConnectingIsNotARefusal(self) -> None:
        server = make_server()
        relay, client = accept(server)
        lose(relay.client)
        first = server.pool.get("10.0.0.1:80")
        self.assertTrue(server.reactor.connectors[0].stoppedConnecting)
        self.assertEqual((first.counters.active_connections, first.counters.refused_connections), (0, 0))
        self.assertEqual((server.relays, server.counters.active_connections), ({}, 0))
        fail(server, 0, UserError())
        self.assertEqual((first.counters.active_connections, first.counters.refused_connections), (0, 0))
        self.assertEqual(len(server.reactor.tcpClients), 1)

    def test_lateConnectOfAnAbandonedAttemptIsClosed(self) -> None:
        server = make_server()
        relay, client = accept(server)
        relay.close()
        self.assertTrue(client.aborted)
        self.assertIsNone(server.reactor.tcpClients[0][2].buildProtocol(None))
        self.assertEqual(server.pool.get("10.0.0.1:80").counters.total_connections, 0)


class ClientGoneWhileConnectingTests(SynchronousTestCase):
    """
    A client that sent bytes and ended cleanly before its backend was
    connected (on Twisted's TLS transports a C{close_notify} ends the
    connection: there is no half-close) still has its bytes delivered:
    the connect goes on, the backend gets them and then the end of its
    input, and the relay ends when the backend does.  Before the fix the
    connect was abandoned and the bytes dropped.
    """

    def gone_with_bytes(self) -> tuple[ServerService, Relay, list[FinishedConnection]]:
        server = make_server()
        records: list[FinishedConnection] = []
        server.finished.subscribe(records.append)
        relay, client = accept(server)
        relay.client.dataReceived(b"request ")
        relay.client.dataReceived(b"and more")
        lose(relay.client)
        return server, relay, records

    def test_bytesReachTheBackendThenItsInputEnds(self) -> None:
        server, relay, records = self.gone_with_bytes()
        self.assertFalse(server.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(list(server.relays), [relay.id])
        side, backend = connect(server)
        self.assertEqual(backend.value(), b"request and more")
        self.assertTrue(backend.write_closed)
        side.writeConnectionLost()
        self.assertFalse(backend.disconnecting or backend.aborted)
        self.assertEqual((relay.tx, server.counters.traffic.tx), (16, 16))
        # Its answer has no one to go to: dropped, not counted.
        side.dataReceived(b"an answer")
        self.assertEqual((relay.rx, server.counters.traffic.rx), (0, 0))
        self.assertEqual(records, [])
        side.readConnectionLost()
        self.assertTrue(backend.disconnecting)
        lose(side)
        self.assertEqual((server.relays, server.counters.active_connections), ({}, 0))
        self.assertEqual(server.pool.get("10.0.0.1:80").counters.active_connections, 0)
        self.assertEqual(server.pool.get("10.0.0.1:80").counters.total_connections, 1)
        [record] = records
        self.assertEqual((record.tx, record.rx, record.reason, record.backend), (16, 0, CLIENT_CLOSED, "10.0.0.1:80"))

    def test_backendIdleTimeoutBoundsTheWaitForItsEnd(self) -> None:
        server = make_server(backend_idle_timeout=5.0)
        relay, client = accept(server)
        relay.client.dataReceived(b"request")
        lose(relay.client)
        side, backend = connect(server)
        side.dataReceived(b"an answer")
        server.reactor.advance(5.0)
        self.assertTrue(backend.aborted)
        lose(side)
        self.assertEqual(server.relays, {})

    def test_refusedEverywhereEndsTheRelay(self) -> None:
        server, relay, records = self.gone_with_bytes()
        for index in range(len(BACKENDS)):
            fail(server, index)
        self.assertEqual(len(server.reactor.tcpClients), len(BACKENDS))
        self.assertEqual((server.relays, server.counters.active_connections), ({}, 0))
        self.assertEqual(server.counters.no_backend, 1)
        [record] = records
        self.assertEqual((record.tx, record.reason), (0, CONNECT_FAILED))

    def test_closedByTheBalancerWhileConnecting(self) -> None:
        server, relay, records = self.gone_with_bytes()
        relay.close()
        self.assertTrue(server.reactor.connectors[0].stoppedConnecting)
        self.assertEqual((server.relays, server.counters.active_connections), ({}, 0))
        self.assertEqual(server.pool.get("10.0.0.1:80").counters.active_connections, 0)
        self.assertEqual([r.reason for r in records], [CLOSED_BY_BALANCER])

    def test_resetClientStillAbandonsTheConnect(self) -> None:
        server = make_server()
        relay, client = accept(server)
        relay.client.dataReceived(b"request")
        relay.client.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(server.reactor.connectors[0].stoppedConnecting)
        self.assertEqual(server.relays, {})


class LimitTests(SynchronousTestCase):
    """max_connections per server and per backend."""

    def test_clientOverServerLimitClosedAtOnceAndCounted(self) -> None:
        server = make_server(max_connections=2)
        accept(server)
        accept(server)
        relay, client = accept(server)
        self.assertTrue(client.disconnecting)
        self.assertEqual(server.counters.over_limit, 1)
        self.assertEqual((len(server.relays), len(server.reactor.tcpClients)), (2, 2))
        lose(relay.client)
        self.assertEqual(server.counters.active_connections, 2)

    def test_slotFreedByAnEndedRelay(self) -> None:
        server = make_server(max_connections=1)
        first, _ = accept(server)
        lose(first.client)
        relay, client = accept(server)
        self.assertFalse(client.disconnecting)
        self.assertEqual(server.counters.over_limit, 0)

    def test_fullBackendSkipped(self) -> None:
        server = make_server(
            backends=("10.0.0.1:80 weight=1 priority=1 max_connections=1", "10.0.0.2:80 priority=2"), balance="weight"
        )
        first, _ = accept(server)
        accept(server)
        self.assertEqual(attempted(server), ["10.0.0.1:80", "10.0.0.2:80"])
        lose(first.client)
        accept(server)
        self.assertEqual(attempted(server)[-1], "10.0.0.1:80")


class IdleTimeoutTests(SynchronousTestCase):
    """client_idle_timeout and backend_idle_timeout on the reactor's clock."""

    def test_clientIdleClosesAtDeadlineNotBefore(self) -> None:
        server, relay, client, side, backend = relayed(client_idle_timeout=10.0)
        server.reactor.advance(9.75)
        self.assertFalse(client.aborted)
        server.reactor.advance(0.25)
        self.assertTrue(client.aborted and backend.aborted)

    def test_clientActivityPushesDeadline(self) -> None:
        server, relay, client, side, backend = relayed(client_idle_timeout=10.0)
        server.reactor.advance(6)
        relay.client.dataReceived(b"ping")
        side.dataReceived(b"backend traffic does not count for the client")
        server.reactor.advance(9.75)
        self.assertFalse(client.aborted)
        server.reactor.advance(0.25)
        self.assertTrue(client.aborted)

    def test_backendIdleClosesAtDeadlineAndActivityPushesIt(self) -> None:
        server, relay, client, side, backend = relayed(backend_idle_timeout=5.0)
        server.reactor.advance(4)
        side.dataReceived(b"pong")
        relay.client.dataReceived(b"client traffic does not count for the backend")
        server.reactor.advance(4.75)
        self.assertFalse(backend.aborted)
        server.reactor.advance(0.25)
        self.assertTrue(client.aborted and backend.aborted)

    def test_noTimeoutNoTimer(self) -> None:
        server, relay, client, side, backend = relayed()
        self.assertEqual(server.reactor.getDelayedCalls(), [])

    def test_finishedDirectionCannotBeIdle(self) -> None:
        """A client that sent its request and shut down its write side waits for the answer."""
        server, relay, client, side, backend = relayed(client_idle_timeout=10.0, backend_idle_timeout=30.0)
        relay.client.readConnectionLost()
        server.reactor.advance(29)
        self.assertFalse(client.aborted)
        server.reactor.advance(1)
        self.assertTrue(client.aborted)

    def test_timersStopWhenRelayEnds(self) -> None:
        server, relay, client, side, backend = relayed(client_idle_timeout=10.0, backend_idle_timeout=10.0)
        lose(relay.client)
        lose(side)
        self.assertEqual(server.reactor.getDelayedCalls(), [])


class IdleTimerTests(SynchronousTestCase):
    """The timer behind both idle timeouts."""

    def test_firesOnceAfterTimeoutWithoutTouch(self) -> None:
        clock = MemoryReactorClock()
        fired: list[float] = []
        IdleTimer(clock, 3.0, lambda: fired.append(clock.seconds()))
        clock.advance(2)
        clock.advance(1)
        clock.advance(10)
        self.assertEqual(fired, [3.0])

    def test_touchMovesDeadline(self) -> None:
        clock = MemoryReactorClock()
        fired: list[float] = []
        timer = IdleTimer(clock, 3.0, lambda: fired.append(clock.seconds()))
        clock.advance(2)
        timer.touch()
        clock.advance(2.5)
        self.assertEqual(fired, [])
        clock.advance(0.5)
        self.assertEqual(fired, [5.0])

    def test_cancel(self) -> None:
        clock = MemoryReactorClock()
        timer = IdleTimer(clock, 3.0, self.fail)
        timer.cancel()
        clock.advance(5)
        self.assertEqual(clock.getDelayedCalls(), [])
