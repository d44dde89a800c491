"""
Runtime overrides of backends (docs/overrides.md): the C{[overrides]}
section (L{balancer.config.overrides}), pools that keep them through
discovery rounds (L{balancer.backends.Pool.set_overrides}), the control
commands that set them and close a backend's sessions
(L{balancer.control.controller.Controller}), the state file and dump that
keep them, and the worker processes that follow them (L{balancer.workers.child},
L{balancer.workers.supervisor}).
"""

from __future__ import annotations

import json
import os
import random
from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogLevel, LogLevelFilterPredicate
from twisted.trial.unittest import SynchronousTestCase

from balancer.backends import Pool
from balancer.config.addresses import BackendSpec
from balancer.config.errors import ConfigError
from balancer.config.load import parse_config
from balancer.config.overrides import OverrideConfig, backend_key
from balancer.control.controller import Controller
from balancer.control.effective import load_effective
from balancer.control.errors import NotOverridable, UnknownBackend
from balancer.root_service import BalancerService
from balancer.state import RuntimeChanges, StateFile
from balancer.strategies import WeightStrategy
from balancer.workers.child import CloseSessions, Configuration, Worker, read_message
from balancer.workers.supervisor import close_message, config_message
from tests.support.paths import scratch_directory
from tests.support.sessions import Address, FakeRelay

CONFIG = """
[servers.web]
bind = "127.0.0.1:3000"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:9001 weight=2", "127.0.0.1:9002"]

[servers.db]
bind = "127.0.0.1:3001"
[servers.db.discovery]
kind = "static"
static_list = ["127.0.0.1:9002 priority=3"]
{extra}
"""


def spec(key: str, weight: int = 1, priority: int = 1) -> BackendSpec:
    """The spec of backend C{key} (C{host:port}) with C{weight} and C{priority}."""
    host, port = key.rsplit(":", 1)
    return BackendSpec(host, int(port), weight, priority)


class SectionTests(SynchronousTestCase):
    """C{[overrides."host:port"]} in a configuration file."""

    def test_parsedByBackendAddress(self) -> None:
        config = parse_config(b'[overrides."127.0.0.1:9001"]\nweight = 0\n[overrides."[::1]:80"]\nmax_connections = 5\n',
                              "t.toml")
        self.assertEqual(config.overrides, {"127.0.0.1:9001": OverrideConfig(weight=0),
                                            "[::1]:80": OverrideConfig(max_connections=5)})

    def test_everyBadKeyAndValueNamed(self) -> None:
        text = (b'[overrides."127.0.0.1:0"]\nweight = 1\n[overrides."web"]\nweight = 1\n'
                b'[overrides."127.0.0.1:9001"]\nweight = -1\npriority = "high"\naddress = "x"\n')
        with self.assertRaises(ConfigError) as caught:
            parse_config(text, "t.toml")
        lines = caught.exception.lines()
        self.assertEqual(len(lines), 5, lines)
        joined = "\n".join(lines)
        for needle in ('overrides."127.0.0.1:0": expected a backend\'s "host:port"',
                       'overrides.web: expected a backend\'s "host:port"',
                       'overrides."127.0.0.1:9001".weight: expected an integer from 0 to 1000000000, got -1',
                       'overrides."127.0.0.1:9001".priority: expected an integer, got string "high"',
                       'overrides."127.0.0.1:9001".address: unknown key'):
            self.assertIn(needle, joined)

    def test_backendKeyIsTheFormPoolsUse(self) -> None:
        self.assertEqual([backend_key(k) for k in ("10.0.0.5:8080", "[::1]:80", "::1:80", ":80", "a:65536")],
                         ["10.0.0.5:8080", "[::1]:80", None, None, None])


class PoolTests(SynchronousTestCase):
    """A pool keeps overrides through every discovery round."""

    def test_overrideAppliesAtOnceAndSurvivesRediscovery(self) -> None:
        pool = Pool([spec("127.0.0.1:9001", weight=2), spec("127.0.0.1:9002")])
        pool.set_overrides({"127.0.0.1:9001": OverrideConfig(weight=7, max_connections=3)})
        first = pool.get("127.0.0.1:9001")
        assert first is not None
        self.assertEqual((first.spec.weight, first.spec.priority, first.spec.max_connections), (7, 1, 3))
        pool.replace([spec("127.0.0.1:9001", weight=4, priority=2), spec("127.0.0.1:9003")])
        self.assertIs(pool.get("127.0.0.1:9001"), first)
        self.assertEqual((first.spec.weight, first.spec.priority, first.spec.max_connections), (7, 2, 3))
        pool.set_overrides({})
        self.assertEqual(first.spec, spec("127.0.0.1:9001", weight=4, priority=2))

    def test_overrideWaitsForItsBackend(self) -> None:
        pool = Pool([spec("127.0.0.1:9001")])
        pool.set_overrides({"127.0.0.1:9009": OverrideConfig(priority=5)})
        pool.replace([spec("127.0.0.1:9001"), spec("127.0.0.1:9009")])
        added = pool.get("127.0.0.1:9009")
        assert added is not None
        self.assertEqual(added.spec.priority, 5)

    def test_weightStrategySeesTheOverride(self) -> None:
        pool = Pool([spec("127.0.0.1:9001"), spec("127.0.0.1:9002")])
        strategy = WeightStrategy(random.Random(1))
        pool.set_overrides({"127.0.0.1:9001": OverrideConfig(weight=0)})
        picks = {strategy.choose(pool.candidates(), "10.0.0.1").key for _ in range(50)}  # type: ignore[union-attr]
        self.assertEqual(picks, {"127.0.0.1:9002"})


class UdpSession:
    """A stand-in for a UDP session: its backend, and its end recorded in its proxy's C{ended}."""

    def __init__(self, proxy: UdpSessions, client: tuple[str, int], backend: Any) -> None:
        self.proxy = proxy
        self.client = client
        self.backend = backend if backend is not None else spec("127.0.0.1:1")

    def end(self, why: str) -> None:
        self.proxy.ended.append(self.client)
        del self.proxy.sessions[self.client]


class UdpSessions:
    """A stand-in for a server's UDP proxy: its current sessions by client, those ended."""

    def __init__(self, backends: dict[tuple[str, int], Any]) -> None:
        self.ended: list[tuple[str, int]] = []
        self.sessions = {client: UdpSession(self, client, backend) for client, backend in backends.items()}


class ControlTests(SynchronousTestCase):
    """The controller's override and session commands, with the state file."""

    def setUp(self) -> None:
        directory = scratch_directory(self)
        self.state = os.path.join(directory, "state.toml")
        self.start()

    def start(self, extra: str = "") -> None:
        """Start (again) on L{CONFIG} with C{extra} and the state file."""
        self.configured = parse_config(CONFIG.format(extra=f'[state]\npath = "{self.state}"\n{extra}').encode(), "t.toml")
        effective, changes = load_effective(self.configured, "t.toml")
        self.memory = MemoryReactorClock()
        self.balancer = BalancerService(effective, self.memory)
        self.control = Controller(self.balancer, effective, "t.toml", self.memory,
                                  configured=self.configured, changes=changes)

    def weights(self, server: str) -> dict[str, tuple[int, int, int]]:
        """Each backend's weight, priority and max_connections in server C{server}'s pool."""
        return {b.key: (b.spec.weight, b.spec.priority, b.spec.max_connections)
                for b in self.balancer.server(server).pool}

    def test_appliesToEveryPoolThatHasTheBackend(self) -> None:
        done = self.successResultOf(self.control.set_override("127.0.0.1:9002", {"weight": 5}))
        self.assertEqual(done, {"weight": 5})
        self.assertEqual(self.weights("web"), {"127.0.0.1:9001": (2, 1, 0), "127.0.0.1:9002": (5, 1, 0)})
        self.assertEqual(self.weights("db"), {"127.0.0.1:9002": (5, 3, 0)})
        view = self.control.backend("127.0.0.1:9002")
        self.assertEqual((view.overrides, view.parameters["weight"]), ({"weight": 5}, 5))

    def test_keptThroughDiscoveryAndServerChanges(self) -> None:
        self.successResultOf(self.control.set_override("127.0.0.1:9001", {"priority": 4}))
        self.balancer.server("web").set_backends([spec("127.0.0.1:9001", weight=9), spec("127.0.0.1:9005")])
        self.assertEqual(self.weights("web")["127.0.0.1:9001"], (9, 4, 0))
        definition = self.control.server_definition("web")
        self.successResultOf(self.control.update_server("web", {**definition, "bind": "127.0.0.1:3005"}))
        self.assertEqual(self.weights("web")["127.0.0.1:9001"], (2, 4, 0))

    def test_overrideOfABackendNoPoolHasIsShownAndCleared(self) -> None:
        self.successResultOf(self.control.set_override("127.0.0.1:9001", {"weight": 0}))
        self.balancer.server("web").set_backends([spec("127.0.0.1:9002")])
        view = self.control.backend("127.0.0.1:9001")
        self.assertEqual((view.entries, view.parameters, view.overrides, view.serving),
                         ((), {"address": "127.0.0.1", "port": 9001, "weight": 0}, {"weight": 0}, False))
        self.balancer.server("web").set_backends([spec("127.0.0.1:9001", weight=3)])
        self.assertEqual(self.weights("web")["127.0.0.1:9001"], (0, 1, 0))
        self.balancer.server("web").set_backends([spec("127.0.0.1:9002")])
        self.successResultOf(self.control.set_override("127.0.0.1:9001", {"weight": None}))
        self.assertNotIn("127.0.0.1:9001", self.control.backends())

    def test_nullClearsOneParameterAndOthersStay(self) -> None:
        self.successResultOf(self.control.set_override("127.0.0.1:9001", {"weight": 1, "max_connections": 10}))
        self.successResultOf(self.control.set_override("127.0.0.1:9001", {"weight": None}))
        self.assertEqual(self.weights("web")["127.0.0.1:9001"], (2, 1, 10))
        self.successResultOf(self.control.set_override("127.0.0.1:9001", {"max_connections": None}))
        self.assertEqual(self.weights("web")["127.0.0.1:9001"], (2, 1, 0))
        self.assertEqual((StateFile(self.state).load().overrides, self.control.effective_config().overrides), ({}, {}))

    def test_persistedAndReadBackAtRestart(self) -> None:
        self.successResultOf(self.control.set_override("127.0.0.1:9002", {"weight": 0, "priority": 2}))
        with open(self.state, encoding="utf-8") as f:
            self.assertIn('[overrides."127.0.0.1:9002"]\nweight = 0\npriority = 2\n', f.read())
        self.start()
        self.assertEqual(self.weights("db"), {"127.0.0.1:9002": (0, 2, 0)})
        self.assertEqual(self.control.backend("127.0.0.1:9002").overrides, {"weight": 0, "priority": 2})

    def test_dumpFedBackReproducesThem(self) -> None:
        self.successResultOf(self.control.set_override("127.0.0.1:9001", {"weight": 6}))
        dump = self.control.dump("toml")
        self.assertIn('[overrides."127.0.0.1:9001"]\nweight = 6\n', dump)
        again = parse_config(dump.encode(), "dump.toml")
        self.assertEqual(again.overrides, {"127.0.0.1:9001": OverrideConfig(weight=6)})
        memory = MemoryReactorClock()
        balancer = BalancerService(again, memory)
        Controller(balancer, again, "dump.toml", memory)
        self.assertEqual(balancer.server("web").pool.get("127.0.0.1:9001").spec.weight, 6)  # type: ignore[union-attr]
        self.assertEqual(json.loads(self.control.dump("json"))["overrides"], {"127.0.0.1:9001": {"weight": 6}})

    def test_fileOverridesApplyAndTheApiCancelsThemForGood(self) -> None:
        self.start('[overrides."127.0.0.1:9001"]\nweight = 8\n')
        self.assertEqual(self.weights("web")["127.0.0.1:9001"], (8, 1, 0))
        self.successResultOf(self.control.set_override("127.0.0.1:9001", {"weight": None}))
        self.assertEqual(self.weights("web")["127.0.0.1:9001"], (2, 1, 0))
        self.assertEqual(StateFile(self.state).load().overrides, {"127.0.0.1:9001": {}})
        self.start('[overrides."127.0.0.1:9001"]\nweight = 8\n')
        self.assertEqual(self.weights("web")["127.0.0.1:9001"], (2, 1, 0))
        self.successResultOf(self.control.set_override("127.0.0.1:9001", {"weight": 8}))
        self.assertEqual(StateFile(self.state).load().overrides, {})

    def test_refusals(self) -> None:
        failure = self.failureResultOf(self.control.set_override("127.0.0.1:9001", {"weight": -1, "port": 1}), ConfigError)
        self.assertEqual(failure.value.lines(), [
            'request body: overrides."127.0.0.1:9001".weight: expected an integer from 0 to 1000000000, got -1',
            'request body: overrides."127.0.0.1:9001".port: unknown key; only weight, priority, max_connections '
            "can be overridden",
        ])
        self.failureResultOf(self.control.set_override("127.0.0.1:1", {"weight": 1}), UnknownBackend)
        self.successResultOf(self.control.create_backend("mine", {"address": "127.0.0.1", "port": 9100}, ["web"]))
        self.failureResultOf(self.control.set_override("mine", {"weight": 1}), NotOverridable)
        self.assertEqual(StateFile(self.state).load().overrides, {})

    def test_createdBackendAtTheSameAddressKeepsItsOwnParameters(self) -> None:
        self.start('[overrides."127.0.0.1:9100"]\nweight = 9\n[servers.cache]\nbind = "127.0.0.1:3002"\n'
                   '[servers.cache.discovery]\nkind = "static"\nstatic_list = ["127.0.0.1:9100"]\n')
        self.successResultOf(self.control.create_backend("mine", {"address": "127.0.0.1", "port": 9100, "weight": 3},
                                                         ["web"]))
        self.assertEqual(self.weights("web")["127.0.0.1:9100"], (3, 1, 0))
        self.assertEqual(self.weights("cache")["127.0.0.1:9100"], (9, 1, 0))
        self.assertEqual(self.control.backend("mine").overrides, {})
        message = json.loads(config_message(self.control))
        self.assertEqual(message["overrides"], {"web": {}, "db": {}, "cache": {"127.0.0.1:9100": {"weight": 9}}})

    def test_closeBackendSessionsClosesItsRelaysInEveryServiceAndTellsTheWorkers(self) -> None:
        told: list[dict[str, list[str]]] = []
        self.control.on_sessions_closed(told.append)
        relays = {}
        for number, (server, key) in enumerate((("web", "127.0.0.1:9002"), ("web", "127.0.0.1:9001"),
                                                ("db", "127.0.0.1:9002"))):
            relay = FakeRelay(number, Address("10.0.0.1", 5000), self.balancer.server(server).pool.get(key))
            self.balancer.server(server).relays[number] = relay  # type: ignore[assignment]
            relays[number] = relay
        datagrams = UdpSessions({("10.0.0.2", 53): self.balancer.server("db").pool.get("127.0.0.1:9002"),
                                 ("10.0.0.3", 53): None})
        self.balancer.server("db").udp = datagrams  # type: ignore[assignment]
        self.assertEqual(self.successResultOf(self.control.close_backend_sessions("127.0.0.1:9002")), 3)
        self.assertEqual([relays[n].closed for n in range(3)], [True, False, True])
        self.assertEqual(datagrams.ended, [("10.0.0.2", 53)])
        self.assertEqual(told, [{"web": ["127.0.0.1:9002"], "db": ["127.0.0.1:9002"]}])
        self.failureResultOf(self.control.close_backend_sessions("127.0.0.1:1"), UnknownBackend)


class StateFileTests(SynchronousTestCase):
    """The state file's C{[overrides]} tables."""

    def setUp(self) -> None:
        self.path = os.path.abspath(self.mktemp())

    def test_roundTrip(self) -> None:
        changes = RuntimeChanges(overrides={"127.0.0.1:9001": {"weight": 3}, "[::1]:80": {}})
        StateFile(self.path).save(changes)
        self.assertEqual(StateFile(self.path).load(), changes)

    def test_badOverrideNamedWithTheFile(self) -> None:
        with open(self.path, "w", encoding="utf-8") as f:
            f.write('[overrides."127.0.0.1:9001"]\nweight = "heavy"\n')
        with self.assertRaises(ConfigError) as caught:
            StateFile(self.path).load()
        self.assertEqual(caught.exception.lines(),
                         [f'{self.path}: overrides."127.0.0.1:9001".weight: expected an integer, got string "heavy"'])


class WorkerTests(SynchronousTestCase):
    """Another worker process follows worker 0's overrides and closes sessions when told."""

    def setUp(self) -> None:
        config = parse_config(CONFIG.format(extra="").encode(), "t.toml")
        self.memory = MemoryReactorClock()
        self.control = Controller(BalancerService(config, self.memory), config, "t.toml", self.memory)
        self.worker = Worker(MemoryReactorClock(), LogLevelFilterPredicate(LogLevel.info))
        self.worker.makeConnection(StringTransport())
        self.worker.dataReceived(config_message(self.control))

    def pool(self, server: str) -> Pool:
        assert self.worker.balancer is not None
        return self.worker.balancer.server(server).pool

    def test_overridesFollowWorker0AndSurviveItsOwnDiscovery(self) -> None:
        self.successResultOf(self.control.set_override("127.0.0.1:9002", {"weight": 4}))
        line = config_message(self.control)
        message = read_message(line)
        assert isinstance(message, Configuration)
        self.assertEqual(message.overrides["db"], {"127.0.0.1:9002": OverrideConfig(weight=4)})
        self.worker.dataReceived(line)
        self.assertEqual(self.pool("db").get("127.0.0.1:9002").spec.weight, 4)  # type: ignore[union-attr]
        assert self.worker.balancer is not None
        self.worker.balancer.server("web").set_backends([spec("127.0.0.1:9002")])
        self.assertEqual(self.pool("web").get("127.0.0.1:9002").spec.weight, 4)  # type: ignore[union-attr]
        self.successResultOf(self.control.set_override("127.0.0.1:9002", {"weight": None}))
        self.worker.dataReceived(config_message(self.control))
        self.assertEqual(self.pool("db").get("127.0.0.1:9002").spec.weight, 1)  # type: ignore[union-attr]

    def test_closeSessionsMessageClosesThoseRelays(self) -> None:
        assert self.worker.balancer is not None
        server = self.worker.balancer.server("web")
        relays = [FakeRelay(n, Address("10.0.0.1", 5000), server.pool.get(key))
                  for n, key in enumerate(("127.0.0.1:9001", "127.0.0.1:9002"))]
        for relay in relays:
            server.relays[relay.id] = relay  # type: ignore[assignment]
        line = close_message({"web": ["127.0.0.1:9001"], "db": ["127.0.0.1:9002"]})
        self.assertEqual(read_message(line), CloseSessions({"web": ["127.0.0.1:9001"], "db": ["127.0.0.1:9002"]}))
        self.worker.dataReceived(line)
        self.assertEqual([relay.closed for relay in relays], [True, False])
        self.assertEqual(self.worker.exit_code, 0)
