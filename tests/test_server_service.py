"""
L{ServerService} and L{BalancerService} on a memory reactor: listeners,
graceful stop, removal, balancing through the relay, and the backend pool.
"""

from __future__ import annotations

import collections
from typing import Any

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from balancer.backends import ACTIVE, DRAIN, MAINTENANCE, Pool
from balancer.config.addresses import HostPort, parse_backend_line
from balancer.config.overrides import OverrideConfig
from balancer.config.schema import Config, DefaultsConfig
from balancer.proxy.listener import IListener
from balancer.proxy.tcp import RelayFactory
from balancer.root_service import BalancerService
from balancer.listening import BindError
from balancer.server_service import ServerService
from balancer.stats import RateClock
from tests.support.reactors import ListeningReactor
from tests.support.relays import accept, attempted, connect, lose, make_server, server_config


def two_servers(grace: float = 10.0) -> Config:
    """A configuration of servers "a" (port 3000) and "b" (port 3001)."""
    return Config(
        defaults=DefaultsConfig(shutdown_grace=grace),
        servers={
            "a": server_config(bind=HostPort("127.0.0.1", 3000)),
            "b": server_config(bind=HostPort("127.0.0.1", 3001)),
        },
    )


class ListenerTests(SynchronousTestCase):
    """A server listens on its bind address; failing to is an error naming both."""

    def test_listensOnConfiguredAddress(self) -> None:
        reactor = ListeningReactor()
        server = ServerService("web", server_config(bind=HostPort("127.0.0.1", 3000)), reactor, RateClock(reactor))
        server.privilegedStartService()
        [(port, factory, backlog, interface)] = reactor.tcpServers
        self.assertEqual((port, interface), (3000, "127.0.0.1"))
        self.assertIsInstance(factory, RelayFactory)
        self.assertEqual(server.address, "127.0.0.1:3000")

    def test_providesWhatItsRelaysNeed(self) -> None:
        """The server is its relays' L{IListener}: they need nothing else of it."""
        self.assertTrue(verifyObject(IListener, make_server()))

    def test_bindFailureNamesServerAndAddress(self) -> None:
        reactor = ListeningReactor(taken=(3000,))
        server = ServerService("web", server_config(bind=HostPort("127.0.0.1", 3000)), reactor, RateClock(reactor))
        error = self.assertRaises(BindError, server.privilegedStartService)
        self.assertIn('server "web": cannot listen on 127.0.0.1:3000: ', str(error))

    def test_oneBindFailureUnbindsTheOthers(self) -> None:
        reactor = ListeningReactor(taken=(3001,))
        balancer = BalancerService(two_servers(), reactor)
        error = self.assertRaises(BindError, balancer.privilegedStartService)
        self.assertIn('server "b"', str(error))
        self.assertEqual([p.stopped for p in reactor.ports], [True])


class GracefulStopTests(SynchronousTestCase):
    """Stopping: the listener closes at once, relays get the grace period, then are closed."""

    def setUp(self) -> None:
        self.reactor = ListeningReactor()
        self.server = make_server(self.reactor, grace=10.0)
        self.relay, self.client = accept(self.server)
        self.side, self.backend = connect(self.server)

    def test_listenerClosesAtOnce(self) -> None:
        stopped = self.server.stopService()
        self.assertTrue(self.reactor.ports[0].stopped)
        self.assertNoResult(stopped)
        self.assertFalse(self.client.disconnecting)

    def test_relayFinishingWithinGrace(self) -> None:
        stopped = self.server.stopService()
        self.reactor.advance(9)
        self.relay.client.dataReceived(b"still relaying")
        self.assertEqual(self.backend.value(), b"still relaying")
        lose(self.relay.client)
        lose(self.side)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertFalse(self.client.aborted)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_relayClosedAtGraceDeadline(self) -> None:
        stopped = self.server.stopService()
        self.reactor.advance(9.75)
        self.assertFalse(self.client.aborted)
        self.reactor.advance(0.25)
        self.assertTrue(self.client.aborted and self.backend.aborted)
        self.assertNoResult(stopped)
        lose(self.relay.client)
        lose(self.side)
        self.assertIsNone(self.successResultOf(stopped))

    def test_pendingConnectClosedAtGraceDeadline(self) -> None:
        relay, client = accept(self.server)
        stopped = self.server.stopService()
        self.reactor.advance(10)
        self.assertTrue(client.aborted)
        self.assertTrue(self.reactor.connectors[-1].stoppedConnecting)
        lose(relay.client)
        lose(self.relay.client)
        lose(self.side)
        self.assertIsNone(self.successResultOf(stopped))
        self.assertEqual([b.counters.active_connections for b in self.server.pool], [0, 0, 0])

    def test_noGraceClosesAtOnce(self) -> None:
        self.server.grace = 0.0
        stopped = self.server.stopService()
        self.assertTrue(self.client.aborted and self.backend.aborted)
        lose(self.relay.client)
        lose(self.side)
        self.assertIsNone(self.successResultOf(stopped))

    def test_withoutRelaysStopsWhenListenerCloses(self) -> None:
        lose(self.relay.client)
        lose(self.side)
        self.assertIsNone(self.successResultOf(self.server.stopService()))


class BalancerServiceTests(SynchronousTestCase):
    """The root service: one ServerService per server, each with its own listener."""

    def test_serverPerConfiguredServerWithItsOwnListener(self) -> None:
        reactor = ListeningReactor()
        balancer = BalancerService(two_servers(grace=3.0), reactor)
        balancer.privilegedStartService()
        balancer.startService()
        self.assertEqual([s.name for s in balancer.servers()], ["a", "b"])
        self.assertEqual([s.grace for s in balancer.servers()], [3.0, 3.0])
        self.assertEqual([port for port, *_ in reactor.tcpServers], [3000, 3001])

    def test_removeServerClosesItsRelaysAtOnce(self) -> None:
        reactor = ListeningReactor()
        balancer = BalancerService(two_servers(), reactor)
        balancer.privilegedStartService()
        balancer.startService()
        server = balancer.server("a")
        relay, client = accept(server)
        side, backend = connect(server)
        removed = balancer.remove_server("a")
        self.assertTrue(reactor.ports[0].stopped)
        self.assertFalse(reactor.ports[1].stopped)
        self.assertTrue(client.aborted and backend.aborted)
        lose(relay.client)
        lose(side)
        self.assertIsNone(self.successResultOf(removed))
        self.assertEqual([s.name for s in balancer.servers()], ["b"])

    def test_stopGivesEveryServerItsGrace(self) -> None:
        reactor = ListeningReactor()
        balancer = BalancerService(two_servers(grace=5.0), reactor)
        balancer.privilegedStartService()
        balancer.startService()
        relay, client = accept(balancer.server("b"))
        side, backend = connect(balancer.server("b"))
        stopped = balancer.stopService()
        self.assertEqual([p.stopped for p in reactor.ports], [True, True])
        reactor.advance(4.75)
        self.assertFalse(client.aborted)
        self.assertNoResult(stopped)
        reactor.advance(0.25)
        self.assertTrue(client.aborted)
        lose(relay.client)
        lose(side)
        self.successResultOf(stopped)


class BalancingTests(SynchronousTestCase):
    """Strategies applied to real relays: the connect attempts show the picks."""

    def test_weightsOneToThreeWithinTenPercentOver2000(self) -> None:
        server = make_server(backends=("10.0.0.1:80 weight=1", "10.0.0.2:80 weight=3"), balance="weight", seed=7)
        for _ in range(2000):
            accept(server)
        counts = collections.Counter(attempted(server))
        self.assertEqual(sum(counts.values()), 2000)
        ratio = counts["10.0.0.2:80"] / counts["10.0.0.1:80"]
        self.assertTrue(2.7 <= ratio <= 3.3, counts)

    def test_roundrobinExactlyEqual(self) -> None:
        server = make_server(balance="roundrobin")
        for _ in range(300):
            accept(server)
        self.assertEqual(collections.Counter(attempted(server)), {key: 100 for key in (
            "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")})

    def test_iphashSameClientSameBackend(self) -> None:
        server = make_server(balance="iphash")
        clients = [f"198.51.100.{i}" for i in range(1, 41)]
        for peer in clients + clients:
            accept(server, peer)
        picks = attempted(server)
        self.assertEqual(picks[:40], picks[40:])
        self.assertEqual(len(set(picks)), 3)

    def test_iphash1MovesOnlyTheRemovedBackendsClients(self) -> None:
        backends = ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80")
        server = make_server(backends=backends, balance="iphash1")
        clients = [f"198.51.100.{i}" for i in range(1, 201)]
        for peer in clients:
            accept(server, peer)
        before = dict(zip(clients, attempted(server)))
        server.pool.replace([parse_backend_line(b) for b in backends if b != "10.0.0.2:80"])
        for peer in clients:
            accept(server, peer)
        after = dict(zip(clients, attempted(server)[200:]))
        moved = {c for c in clients if before[c] != after[c]}
        self.assertEqual(moved, {c for c in clients if before[c] == "10.0.0.2:80"})
        self.assertTrue(moved)


class PoolTests(SynchronousTestCase):
    """The backends of a server, in C{host:port} order, sorted when membership changes."""

    def specs(self, *lines: str) -> list[Any]:
        return [parse_backend_line(line) for line in lines]

    def test_orderedByHostAndPort(self) -> None:
        pool = Pool(self.specs("10.0.0.2:80", "10.0.0.1:90", "10.0.0.1:80"))
        self.assertEqual([b.key for b in pool], ["10.0.0.1:80", "10.0.0.1:90", "10.0.0.2:80"])
        pool.replace(self.specs("10.0.0.2:80", "10.0.0.0:1", "10.0.0.1:80"))
        self.assertEqual([b.key for b in pool.candidates()], ["10.0.0.0:1", "10.0.0.1:80", "10.0.0.2:80"])

    def test_candidatesTakeNewConnections(self) -> None:
        pool = Pool(
            self.specs("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80 max_connections=1", "10.0.0.5:80")
        )
        down, drain, maintenance, full, ok = pool
        down.live = False
        drain.admin_state = DRAIN
        maintenance.admin_state = MAINTENANCE
        full.counters.active_connections = 1
        self.assertEqual(pool.candidates(), [ok])

    def test_candidatesFollowEveryChange(self) -> None:
        """The candidates are kept between new clients, and found again after any change that decides them."""
        pool = Pool(self.specs("10.0.0.1:80", "10.0.0.2:80"))
        one, two = pool
        self.assertEqual(pool.candidates(), [one, two])
        one.live = False
        self.assertEqual(pool.candidates(), [two])
        one.live = True
        two.admin_state = MAINTENANCE
        self.assertEqual(pool.candidates(), [one])
        two.admin_state = ACTIVE
        two.discovered = False
        self.assertEqual(pool.candidates(), [one])
        pool.replace(self.specs("10.0.0.2:80", "10.0.0.3:80"))
        self.assertEqual([b.key for b in pool.candidates()], ["10.0.0.2:80", "10.0.0.3:80"])
        pool.set_overrides({"10.0.0.2:80": OverrideConfig(max_connections=1)})
        two.counters.active_connections = 1
        self.assertEqual([b.key for b in pool.candidates()], ["10.0.0.3:80"])
        pool.set_overrides({})
        self.assertEqual([b.key for b in pool.candidates()], ["10.0.0.2:80", "10.0.0.3:80"])

    def test_candidateUnderItsOwnLimit(self) -> None:
        pool = Pool(self.specs("10.0.0.1:80 max_connections=2"))
        (limited,) = pool
        limited.counters.active_connections = 1
        self.assertEqual(pool.candidates(), [limited])
        limited.counters.active_connections = 2
        self.assertEqual(pool.candidates(), [])

    def test_replaceKeepsStatisticsOfStayingBackends(self) -> None:
        pool = Pool(self.specs("10.0.0.1:80", "10.0.0.2:80"))
        first = pool.get("10.0.0.1:80")
        first.counters.total_connections = 5
        pool.replace(self.specs("10.0.0.1:80 weight=4"))
        self.assertIs(pool.get("10.0.0.1:80"), first)
        self.assertEqual((first.spec.weight, first.counters.total_connections), (4, 5))
        self.assertEqual([b.key for b in pool], ["10.0.0.1:80"])

    def test_leavingBackendKeptWhileBusyThenForgotten(self) -> None:
        pool = Pool(self.specs("10.0.0.1:80", "10.0.0.2:80"))
        busy = pool.get("10.0.0.2:80")
        busy.counters.active_connections = 1
        pool.replace(self.specs("10.0.0.1:80"))
        self.assertEqual([b.key for b in pool], ["10.0.0.1:80", "10.0.0.2:80"])
        self.assertEqual([b.key for b in pool.candidates()], ["10.0.0.1:80"])
        busy.counters.active_connections = 0
        pool.forget_if_gone(busy)
        self.assertEqual([b.key for b in pool], ["10.0.0.1:80"])
