"""
End to end (issue 7): a backend that dies is taken out by its health check
and brought back when it returns; no client fails meanwhile, because a
connect to a just-died backend is retried on another.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from balancer.config.addresses import HostPort, parse_backend_line
from balancer.config.schema import Config, DiscoveryConfig, HealthcheckConfig, ServerConfig
from balancer.root_service import BalancerService
from tests.support.clients import Named, exchange
from tests.support.waiting import until

INTERVAL = 0.2
FAILS = 2
PASSES = 2
TIMEOUT = 0.1


class KillAndReviveTests(TestCase):
    """Kill one of three backends, then restart it, with clients arriving all the time."""

    timeout = 60

    def listen_named(self, name: bytes, port: int = 0) -> Any:
        factory = Factory.forProtocol(Named)
        factory.name = name
        return reactor.listenTCP(port, factory, interface="127.0.0.1")

    def start_balancer(self, ports: list[int]) -> Any:
        specs = tuple(parse_backend_line(f"127.0.0.1:{p}") for p in ports)
        server = ServerConfig(
            bind=HostPort("127.0.0.1", 0),
            balance="roundrobin",
            discovery=DiscoveryConfig(kind="static", static_list=specs),
            healthcheck=HealthcheckConfig(kind="ping", interval=INTERVAL, timeout=TIMEOUT, fails=FAILS, passes=PASSES),
        )
        balancer = BalancerService(Config(servers={"web": server}), reactor)
        balancer.privilegedStartService()
        balancer.startService()
        self.addCleanup(balancer.stopService)
        return balancer.server("web")

    @inlineCallbacks
    def clients(self, port: int, count: int) -> Any:
        """C{count} clients in a row; fires with the names that answered (every client must be served)."""
        answers = []
        for _ in range(count):
            answer = yield exchange(port, half_close=False)
            answers.append(answer)
        return answers

    @inlineCallbacks
    def test_killedBackendLeavesAndReturns(self) -> None:
        listeners = [self.listen_named(name) for name in (b"a", b"b", b"c")]
        ports = [listener.getHost().port for listener in listeners]
        for listener in listeners[:2]:
            self.addCleanup(listener.stopListening)
        server = self.start_balancer(ports)
        front = server.port
        answers = yield self.clients(front, 6)
        self.assertEqual(sorted(answers), [b"a", b"a", b"b", b"b", b"c", b"c"])

        yield listeners[2].stopListening()
        # Clients keep arriving while the checks notice: none fails (refusals are retried).
        during = yield self.clients(front, 6)
        self.assertNotIn(b"", during)
        self.assertNotIn(b"c", during)
        # Detection takes at most interval * fails + timeout; half an interval more for scheduling.
        backend_c = server.pool.get(f"127.0.0.1:{ports[2]}")
        yield until(lambda: not backend_c.live, INTERVAL * FAILS + TIMEOUT + INTERVAL / 2, "backend c marked down",
                    step=0.01)
        self.assertFalse(backend_c.live)
        refused_before = backend_c.counters.refused_connections
        after = yield self.clients(front, 9)
        self.assertEqual(sorted(set(after)), [b"a", b"b"])
        self.assertEqual(backend_c.counters.refused_connections, refused_before)

        revived = self.listen_named(b"c", ports[2])
        self.addCleanup(revived.stopListening)
        yield until(lambda: backend_c.live, INTERVAL * PASSES + INTERVAL / 2, "backend c marked up again", step=0.01)
        self.assertTrue(backend_c.live)
        back = yield self.clients(front, 6)
        self.assertEqual(sorted(back), [b"a", b"a", b"b", b"b", b"c", b"c"])
