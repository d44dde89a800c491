"""
Changing a running server: in place (strategy, backends, checks) or with a
new listener (bind, protocol); and the discovery and health checks it runs.
"""

from __future__ import annotations

import attrs
from twisted.internet import reactor as global_reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from balancer.config.addresses import HostPort, parse_backend_line
from balancer.config.schema import Config, DefaultsConfig, DiscoveryConfig, HealthcheckConfig
from balancer.proxy.engine.path import EnginePath
from balancer.proxy.twisted_path import TwistedPath
from balancer.root_service import BalancerService
from balancer.listening import BindError
from balancer.strategies import IPHashStrategy, RoundRobinStrategy
from tests.support.reactors import ListeningReactor
from tests.support.relays import accept, make_server, server_config
from tests.support.skips import NO_ENGINE


def with_backends(config, *lines: str):  # type: ignore[no-untyped-def]
    """C{config} with a new static list."""
    specs = tuple(parse_backend_line(line) for line in lines)
    return attrs.evolve(config, discovery=DiscoveryConfig(kind="static", static_list=specs))


class ReconfigureInPlaceTests(SynchronousTestCase):
    """Changes that keep the listener keep the live relays too."""

    def test_strategyChanges(self) -> None:
        server = make_server()
        self.assertIsInstance(server.strategy, RoundRobinStrategy)
        server.reconfigure(attrs.evolve(server.config, balance="iphash"))
        self.assertIsInstance(server.strategy, IPHashStrategy)

    def test_backendsThatStayKeepTheirStatistics(self) -> None:
        server = make_server(backends=("127.0.0.1:9001", "127.0.0.1:9002"))
        kept = server.pool.get("127.0.0.1:9001")
        assert kept is not None
        kept.counters.total_connections = 5
        server.reconfigure(with_backends(server.config, "127.0.0.1:9001 weight=3", "127.0.0.1:9003"))
        self.assertEqual([b.key for b in server.pool], ["127.0.0.1:9001", "127.0.0.1:9003"])
        self.assertIs(server.pool.get("127.0.0.1:9001"), kept)
        self.assertEqual((kept.counters.total_connections, kept.spec.weight), (5, 3))

    def test_liveRelaysSurvive(self) -> None:
        server = make_server()
        relay, _ = accept(server)
        server.reconfigure(attrs.evolve(server.config, max_connections=10))
        self.assertIn(relay.id, server.relays)
        self.assertEqual(server.config.max_connections, 10)

    def test_healthcheckStartsOnReconfigure(self) -> None:
        """Switching checks on makes the monitor connect to every backend within one interval."""
        reactor = MemoryReactorClock()
        server = make_server(reactor, backends=("127.0.0.1:9001", "127.0.0.1:9002"))
        checks = HealthcheckConfig(kind="ping", interval=2.0, timeout=1.0)
        server.reconfigure(attrs.evolve(server.config, healthcheck=checks))
        before = len(reactor.tcpClients)
        reactor.advance(2.0)
        probed = {(host, port) for host, port, *_ in reactor.tcpClients[before:]}
        self.assertEqual(probed, {("127.0.0.1", 9001), ("127.0.0.1", 9002)})


class HealthWiringTests(SynchronousTestCase):
    """A started server runs its health checks; a stopped one does not."""

    def test_pingChecksRunAndStopWithTheServer(self) -> None:
        reactor = MemoryReactorClock()
        server = make_server(
            reactor, backends=("127.0.0.1:9001",), healthcheck=HealthcheckConfig(kind="ping", interval=1.0)
        )
        reactor.advance(1.0)
        self.assertEqual([(h, p) for h, p, *_ in reactor.tcpClients], [("127.0.0.1", 9001)])
        server.stopService()
        reactor.advance(5.0)
        self.assertEqual(len(reactor.tcpClients), 1)

    def test_unhealthyInitialStatus(self) -> None:
        server = make_server(
            backends=("127.0.0.1:9001",),
            healthcheck=HealthcheckConfig(kind="ping", interval=1.0, initial_status="unhealthy"),
        )
        self.assertEqual([b.live for b in server.pool], [False])
        self.assertIsNone(server.choose_backend("192.0.2.1", set()))


class NewListenerTests(SynchronousTestCase):
    """Changing bind replaces the listener: the new binds first; a failure keeps the old."""

    def balancer(self, reactor: ListeningReactor) -> BalancerService:
        config = Config(servers={"web": server_config(("127.0.0.1:9001",), bind=HostPort("127.0.0.1", 3000))})
        balancer = BalancerService(config, reactor)
        balancer.privilegedStartService()
        balancer.startService()
        return balancer

    def test_newBindReplacesListener(self) -> None:
        reactor = ListeningReactor()
        balancer = self.balancer(reactor)
        old = balancer.server("web")
        new_config = attrs.evolve(old.config, bind=HostPort("127.0.0.1", 3001))
        self.successResultOf(balancer.update_server("web", new_config))
        self.assertIsNot(balancer.server("web"), old)
        self.assertEqual(balancer.server("web").port, 3001)
        self.assertTrue(reactor.ports[0].stopped)
        self.assertFalse(old.running)

    def test_bindFailureKeepsOldServer(self) -> None:
        reactor = ListeningReactor(taken=(3001,))
        balancer = self.balancer(reactor)
        old = balancer.server("web")
        new_config = attrs.evolve(old.config, bind=HostPort("127.0.0.1", 3001))
        self.failureResultOf(balancer.update_server("web", new_config), BindError)
        self.assertIs(balancer.server("web"), old)
        self.assertTrue(old.running)
        self.assertFalse(reactor.ports[0].stopped)


class SpliceSwitchTests(SynchronousTestCase):
    """[defaults] splice = false keeps every relay on the normal path (Twisted's transports)."""

    def test_defaultOn(self) -> None:
        balancer = BalancerService(Config(servers={"web": server_config()}), global_reactor)
        server = balancer.server("web")
        self.assertIsNotNone(balancer.engine)
        self.assertIsInstance(server.path, EnginePath)
        assert isinstance(server.path, EnginePath)
        self.assertIs(server.path.engine, balancer.engine)

    test_defaultOn.skip = NO_ENGINE  # type: ignore[attr-defined]

    def test_switchedOff(self) -> None:
        config = Config(defaults=DefaultsConfig(splice=False), servers={"web": server_config()})
        server = BalancerService(config, global_reactor).server("web")
        self.assertIsInstance(server.path, TwistedPath)

    def test_noEngineOnAReactorThatDoesNotPoll(self) -> None:
        balancer = BalancerService(Config(servers={"web": server_config()}), MemoryReactorClock())
        self.assertIsNone(balancer.engine)
        self.assertIsInstance(balancer.server("web").path, TwistedPath)
