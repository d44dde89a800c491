"""
The control interface: changes apply, persist to the state file, and roll
back when they cannot persist; statistics add up the worker processes.
"""

from __future__ import annotations

import os

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from admin.gobetween import server_stats
from balancer.config.errors import ConfigError
from balancer.config.load import parse_config
from balancer.control.controller import Controller
from balancer.control.errors import UnknownServer
from balancer.root_service import BalancerService
from balancer.state import StateFile
from balancer.stats import SERVER_COUNTERS, server_report

from tests.support.paths import scratch_directory

CONFIG = """
[state]
path = "{state}"
[servers.web]
bind = "127.0.0.1:0"
balance = "roundrobin"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:9001"]
"""


class UpdateServerTests(SynchronousTestCase):
    """update_server: validated, applied in place, persisted."""

    def setUp(self) -> None:
        directory = scratch_directory(self)
        self.state = os.path.join(directory, "state.toml")
        config = parse_config(CONFIG.format(state=self.state).encode(), "x")
        self.balancer = BalancerService(config, MemoryReactorClock())
        self.balancer.privilegedStartService()
        self.balancer.startService()
        self.control = Controller(self.balancer, config, "x", MemoryReactorClock())

    def definition(self, **changes: object) -> dict[str, object]:
        base: dict[str, object] = {
            "bind": "127.0.0.1:0",
            "balance": "roundrobin",
            "discovery": {"kind": "static", "static_list": ["127.0.0.1:9001", "127.0.0.1:9002"]},
        }
        base.update(changes)
        return base

    def test_appliedAndPersisted(self) -> None:
        revision = self.control.revision
        result = self.successResultOf(self.control.update_server("web", self.definition(balance="leastconn")))
        self.assertEqual(result["balance"], "leastconn")
        self.assertEqual([b.key for b in self.balancer.server("web").pool], ["127.0.0.1:9001", "127.0.0.1:9002"])
        self.assertEqual(StateFile(self.state).load().servers["web"]["balance"], "leastconn")
        self.assertEqual(self.control.revision, revision + 1)

    def test_invalidChangesNothing(self) -> None:
        failure = self.failureResultOf(self.control.update_server("web", self.definition(balance="fastest")), ConfigError)
        self.assertIn("servers.web.balance", failure.value.render())
        self.assertEqual(self.balancer.server("web").config.balance, "roundrobin")
        self.assertFalse(os.path.exists(self.state))

    def test_unknownServer(self) -> None:
        self.failureResultOf(self.control.update_server("nope", self.definition()), UnknownServer)

    def test_unwritableStateRollsBack(self) -> None:
        os.makedirs(self.state)  # a directory where the file should go: the rename fails
        self.failureResultOf(self.control.update_server("web", self.definition(balance="leastconn")), OSError)
        self.assertEqual(self.balancer.server("web").config.balance, "roundrobin")
        self.assertEqual([b.key for b in self.balancer.server("web").pool], ["127.0.0.1:9001"])


class StatisticsTests(SynchronousTestCase):
    """stats (gobetween's document) and statistics (/v1 and /metrics), over worker 0 and its workers' reports."""

    def setUp(self) -> None:
        config = parse_config(CONFIG.format(state=os.path.abspath(self.mktemp())).encode(), "x")
        self.balancer = BalancerService(config, MemoryReactorClock())
        self.control = Controller(self.balancer, config, "x", MemoryReactorClock())
        server = self.balancer.server("web")
        for number, key in enumerate(("active_connections", *SERVER_COUNTERS), 1):
            setattr(server.counters, key, number)
        server.counters.traffic.rx_second = 10
        backend = server.pool.get("127.0.0.1:9001")
        assert backend is not None
        backend.counters.refused_connections = 3
        self.reports: list[dict[str, object]] = []
        self.control.peers.add_source(lambda name: self.reports)

    def report(self, **counters: int) -> dict[str, object]:
        """A worker's report of server "web": worker 0's with C{counters} as its server counters."""
        return {**server_report(self.balancer.server("web")), **counters}

    def test_withoutWorkersWorker0sOwn(self) -> None:
        self.assertEqual(self.control.service("web").statistics, server_report(self.balancer.server("web")))

    def test_everyServerCounterAndBackendFigureIsSummed(self) -> None:
        self.reports[:] = [self.report(), self.report(over_limit=100, sni_failures=70)]
        statistics = self.control.service("web").statistics
        self.assertEqual({key: statistics[key] for key in ("active_connections", "rx_second", *SERVER_COUNTERS)},
                         {"active_connections": 3, "rx_second": 30, "total_connections": 6, "over_limit": 3 + 3 + 100,
                          "no_backend": 12, "denied": 15, "tls_failures": 18, "sni_failures": 7 + 7 + 70})
        self.assertEqual(statistics["backends"][0]["stats"]["refused_connections"], 9)

    def test_gobetweensDocumentKeepsItsFields(self) -> None:
        """Workers report more than gobetween's fields; stats still has exactly those, summed."""
        own = self.balancer.server("web").stats()
        self.reports[:] = [self.report()]
        stats = server_stats(self.control, "web")
        self.assertEqual((set(stats), stats["rx_second"]), (set(own), 20))

    def test_unknownServer(self) -> None:
        self.assertRaises(UnknownServer, self.control.service, "nope")
