"""
One process per core (C{[defaults] workers}): shared listeners
(L{balancer.reuseport}), statistics summed over processes
(L{balancer.control.sums.sum_stats}, for the root API, /v1 and /metrics), the
worker process (L{balancer.workers.child}) and its supervisor in worker 0
(L{balancer.workers.supervisor}); then all of it in a real C{twistd -n balancer} with
two workers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from typing import Any

import treq
from prometheus_client import generate_latest
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionRefusedError, ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import (
    LogLevel,
    LogLevelFilterPredicate,
    capturedLogs,
    eventAsJSON,
    formatEvent,
    globalLogPublisher,
)
from twisted.trial.unittest import SynchronousTestCase, TestCase

from admin.gobetween import server_stats
from balancer.backends import DRAIN, MAINTENANCE
from balancer.config.load import parse_config
from balancer.control.controller import Controller
from balancer.control.sums import sum_stats
from balancer.metrics import metrics_registry
from balancer.root_service import BalancerService
from balancer.listening import BindError
from balancer.server_service import ServerService
from balancer.stats import SERVER_COUNTERS, RateClock, server_report
from balancer.workers.child import AcmeChallenge, Configuration, Worker, read_message, server_changes
from balancer.workers.supervisor import (
    CHALLENGE_WAIT,
    KILL_MARGIN,
    RESTART_DELAY,
    RESTART_MAX_DELAY,
    WorkerSupervisor,
    challenge_message,
    config_message,
)
from tests.support.clients import Double, exchange, serve
from tests.support.paths import ROOT, scratch_directory
from tests.support.processes import spawn_balancer
from tests.support.reactors import SpawningReactor
from tests.support.scrapes import samples
from tests.support.waiting import polled

SERVERS = """
[servers.one]
bind = "127.0.0.1:3000"
[servers.one.discovery]
kind = "static"
static_list = ["127.0.0.1:9001", "127.0.0.1:9002"]
[servers.two]
bind = "127.0.0.1:3001"
balance = "leastconn"
[servers.two.discovery]
kind = "static"
static_list = ["127.0.0.1:9003"]
"""


def config_text(workers: int = 2, servers: str = SERVERS, level: str = "info") -> bytes:
    """A configuration of C{workers} processes with C{servers}."""
    return f'[logging]\nlevel = "{level}"\n[defaults]\nworkers = {workers}\n{servers}'.encode()


def backend(host: str, port: int, live: bool = True, **stats: int) -> dict[str, Any]:
    """One backend entry of a statistics document."""
    figures = dict.fromkeys(
        ("total_connections", "active_connections", "refused_connections", "rx", "tx", "rx_second", "tx_second"), 0
    )
    figures.update(stats)
    return {"host": host, "port": str(port), "priority": 1, "weight": 1,
            "stats": {"live": live, "discovered": True, **figures}}


def document(backends: list[dict[str, Any]], **stats: int) -> dict[str, Any]:
    """A server's statistics document as a worker reports it (L{server_report})."""
    figures = dict.fromkeys(("active_connections", "rx_total", "tx_total", "rx_second", "tx_second", *SERVER_COUNTERS), 0)
    figures.update(stats)
    return {**figures, "backends": backends}


class SumStatsTests(SynchronousTestCase):
    """sum_stats: one document for a server over every process."""

    def test_serverAndBackendFiguresAddUp(self) -> None:
        own = document([backend("10.0.0.1", 80, total_connections=3, active_connections=1, refused_connections=1,
                                rx=100, tx=10, rx_second=5, tx_second=1)],
                       active_connections=1, rx_total=100, tx_total=10, rx_second=5, tx_second=1)
        other = document([backend("10.0.0.1", 80, total_connections=4, active_connections=2, refused_connections=0,
                                  rx=50, tx=20, rx_second=7, tx_second=2)],
                         active_connections=2, rx_total=50, tx_total=20, rx_second=7, tx_second=2)
        total = sum_stats(own, [other, other])
        self.assertEqual(
            {k: total[k] for k in ("active_connections", "rx_total", "tx_total", "rx_second", "tx_second")},
            {"active_connections": 5, "rx_total": 200, "tx_total": 50, "rx_second": 19, "tx_second": 5},
        )
        self.assertEqual(
            total["backends"][0]["stats"],
            {"live": True, "discovered": True, "total_connections": 11, "active_connections": 5,
             "refused_connections": 1, "rx": 200, "tx": 50, "rx_second": 19, "tx_second": 5},
        )

    def test_backendsMatchByHostAndPortWithWorker0sFlags(self) -> None:
        """Another process's order and health verdicts do not matter; its extra backends are left out."""
        own = document([backend("10.0.0.1", 80, live=False, rx=1), backend("10.0.0.2", 80, rx=2)])
        other = document([backend("10.0.0.9", 80, rx=1000), backend("10.0.0.2", 80, rx=20),
                          backend("10.0.0.1", 80, live=True, rx=10)])
        total = sum_stats(own, [other])
        self.assertEqual([(b["host"], b["stats"]["live"], b["stats"]["rx"]) for b in total["backends"]],
                         [("10.0.0.1", False, 11), ("10.0.0.2", True, 22)])

    def test_ownDocumentIsNotChanged(self) -> None:
        own = document([backend("10.0.0.1", 80, rx=1)], rx_total=1)
        sum_stats(own, [document([backend("10.0.0.1", 80, rx=5)], rx_total=5)])
        self.assertEqual((own["rx_total"], own["backends"][0]["stats"]["rx"]), (1, 1))

    def test_noOtherProcessIsTheOwnDocument(self) -> None:
        own = document([backend("10.0.0.1", 80, rx=1)], rx_total=1)
        self.assertEqual(sum_stats(own, []), own)


class ServerChangesTests(SynchronousTestCase):
    """server_changes: the difference a worker applies."""

    def test_removedUpdatedAdded(self) -> None:
        old = parse_config(config_text(), "x").servers
        new_text = SERVERS.replace('balance = "leastconn"', 'balance = "roundrobin"').replace("servers.one", "servers.three")
        new = parse_config(config_text(servers=new_text), "x").servers
        changes = server_changes(old, new)
        self.assertEqual(changes.removed, ["one"])
        self.assertEqual(changes.updated, {"two": new["two"]})
        self.assertEqual(changes.added, {"three": new["three"]})

    def test_sameServersNoChange(self) -> None:
        servers = parse_config(config_text(), "x").servers
        changes = server_changes(servers, dict(parse_config(config_text(), "x").servers))
        self.assertEqual((changes.removed, changes.updated, changes.added), ([], {}, {}))


class SharedListenerTests(TestCase):
    """With workers > 1, listeners share their port (SO_REUSEPORT); with 1, nothing changes."""

    def server(self, name: str, bind: str, *, reuse_port: bool, protocol: str = "tcp") -> ServerService:
        config = parse_config(
            f'[servers.{name}]\nbind = "{bind}"\nprotocol = "{protocol}"\n'
            f'[servers.{name}.discovery]\nkind = "static"\nstatic_list = ["127.0.0.1:9001"]\n'.encode(), "x",
        ).servers[name]
        service = ServerService(name, config, reactor, RateClock(reactor), reuse_port=reuse_port)
        self.addCleanup(service.unbind)
        return service

    def test_twoTcpListenersShareOnePort(self) -> None:
        first = self.server("web", "127.0.0.1:0", reuse_port=True)
        first.bind()
        second = self.server("web", f"127.0.0.1:{first.port}", reuse_port=True)
        second.bind()
        self.assertEqual(second.address, first.address)

    def test_twoUdpListenersShareOnePort(self) -> None:
        first = self.server("dns", "127.0.0.1:0", reuse_port=True, protocol="udp")
        first.bind()
        second = self.server("dns", f"127.0.0.1:{first.port}", reuse_port=True, protocol="udp")
        second.bind()
        self.assertEqual(second.address, first.address)

    def test_portOfAnotherProgramIsABindError(self) -> None:
        """The same message as without workers: SO_REUSEPORT shares only with sockets that set it too."""
        taken = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
        self.addCleanup(taken.stopListening)
        bind = f"127.0.0.1:{taken.getHost().port}"
        messages = []
        for reuse_port in (False, True):
            with self.assertRaises(BindError) as caught:
                self.server("web", bind, reuse_port=reuse_port).bind()
            messages.append(str(caught.exception))
        self.assertEqual(messages[0], messages[1])
        self.assertEqual(messages[1], f'server "web": cannot listen on {bind}: [Errno 98] Address already in use')

    def test_oneWorkerListensWithListenTcp(self) -> None:
        for workers, listened, adopted in ((1, 2, 0), (2, 0, 2)):
            memory = MemoryReactorClock()
            config = parse_config(config_text(workers, SERVERS.replace(":3000", ":0").replace(":3001", ":0")), "x")
            BalancerService(config, memory).privilegedStartService()
            self.assertEqual((len(memory.tcpServers), len(memory.adoptedPorts)), (listened, adopted), workers)


def message(text: bytes, states: dict[str, dict[str, str]] | None = None) -> bytes:
    """
    The line worker 0 sends for a configuration text (by the supervisor's
    own encoding), with C{states} as the admin states when given.
    """
    config = parse_config(text, "x")
    memory = MemoryReactorClock()
    line = config_message(Controller(BalancerService(config, memory), config, "x", memory))
    if states is None:
        return line
    decoded = json.loads(line)
    decoded["admin_states"] = states
    return json.dumps(decoded).encode() + b"\n"


class WorkerTests(SynchronousTestCase):
    """The worker process's protocol, on a memory reactor."""

    def setUp(self) -> None:
        self.memory = MemoryReactorClock()
        self.level = LogLevelFilterPredicate(LogLevel.info)
        self.worker = Worker(self.memory, self.level)
        self.transport = StringTransport()
        self.worker.makeConnection(self.transport)

    def sent(self) -> list[dict[str, Any]]:
        """The messages written to stdout so far (and clear them)."""
        lines = self.transport.value().splitlines()
        self.transport.clear()
        return [json.loads(line) for line in lines]

    def names(self) -> list[str]:
        assert self.worker.balancer is not None
        return [s.name for s in self.worker.balancer.servers()]

    def test_firstConfigurationStartsServersThenReportsEverySecond(self) -> None:
        self.worker.dataReceived(message(config_text(1, level="warn")))
        self.assertEqual(self.names(), ["one", "two"])
        self.assertEqual(self.level.defaultLogLevel, LogLevel.warn)
        self.assertEqual([port for port, _, _, _ in self.memory.tcpServers], [3000, 3001])
        ready, first = self.sent()
        self.assertEqual(ready, {"ready": True})
        self.assertEqual(sorted(first["stats"]), ["one", "two"])
        assert self.worker.balancer is not None
        self.assertEqual(first["stats"]["two"], server_report(self.worker.balancer.server("two")))
        self.assertEqual([b["host"] + ":" + b["port"] for b in first["stats"]["one"]["backends"]],
                         ["127.0.0.1:9001", "127.0.0.1:9002"])
        self.memory.advance(1)
        self.assertEqual([list(m) for m in self.sent()], [["stats"]])

    def test_acmeChallengeAnsweredIsAcknowledged(self) -> None:
        """A worker told to answer a TLS-ALPN-01 challenge says so to worker 0; a withdrawal needs no answer."""
        self.worker.dataReceived(message(config_text(1)))
        self.worker.dataReceived(challenge_message("a.test", None))
        self.worker.dataReceived(challenge_message("a.test", b"PEM"))
        answers = [m for m in self.sent() if "acme_challenge_answered" in m]
        self.assertEqual(answers, [{"acme_challenge_answered": "a.test"}])

    def test_laterConfigurationsApplyTheDifference(self) -> None:
        self.worker.dataReceived(message(config_text(1)))
        changed = SERVERS.replace('balance = "leastconn"', 'balance = "roundrobin"').replace("servers.one", "servers.three")
        self.worker.dataReceived(message(config_text(1, changed)))
        self.assertEqual(self.names(), ["two", "three"])
        assert self.worker.balancer is not None
        self.assertEqual(self.worker.balancer.server("two").config.balance, "roundrobin")

    def test_adminStatesFollowWorker0(self) -> None:
        self.worker.dataReceived(message(config_text(1), {"one": {"127.0.0.1:9002": DRAIN}}))
        assert self.worker.balancer is not None
        pool = self.worker.balancer.server("one").pool
        self.assertEqual([b.admin_state for b in pool], ["active", DRAIN])
        self.worker.dataReceived(message(config_text(1), {"one": {"127.0.0.1:9001": MAINTENANCE}}))
        self.assertEqual([b.admin_state for b in pool], [MAINTENANCE, "active"])

    def test_bindFailureExits1(self) -> None:
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        servers = SERVERS.replace(":3000", f":{taken.getsockname()[1]}").replace(":3001", ":0")
        self.worker.dataReceived(message(config_text(2, servers)))
        self.assertEqual((self.worker.exit_code, self.memory.hasStopped, self.worker.balancer), (1, True, None))
        self.assertEqual(self.sent(), [])

    def test_notAConfigurationExits1(self) -> None:
        self.worker.dataReceived(b'{"config": {"servers": 3}, "admin_states": {}}\n')
        self.assertEqual((self.worker.exit_code, self.memory.hasStopped), (1, True))

    def test_stdinClosedStops(self) -> None:
        self.worker.dataReceived(message(config_text(1)))
        self.worker.connectionLost(None)
        self.assertEqual((self.worker.exit_code, self.memory.hasStopped), (0, True))

    def test_shutdownStopsTheServersAndReportsAndStartsNothingAgain(self) -> None:
        self.worker.dataReceived(message(config_text(1)))
        balancer = self.worker.balancer
        assert balancer is not None
        [(shutdown, args, kwargs)] = self.memory.triggers["before"]["shutdown"]
        shutdown(*args, **kwargs)
        self.assertFalse(balancer.running)
        self.sent()
        self.memory.advance(5)
        self.worker.dataReceived(message(config_text(1)))
        self.assertEqual((self.sent(), self.worker.balancer), ([], None))


class SupervisorTests(SynchronousTestCase):
    """WorkerSupervisor: spawning, configuration pushes, statistics, restarts, stopping."""

    def setUp(self) -> None:
        """Worker 0 on a memory reactor (so its own config says 1 worker: nothing binds for real), 3 in all."""
        self.memory = SpawningReactor()
        config = parse_config(config_text(1), "x")
        self.balancer = BalancerService(config, self.memory)
        self.balancer.privilegedStartService()
        self.balancer.startService()
        self.control = Controller(self.balancer, config, "x", self.memory)
        self.supervisor = WorkerSupervisor(self.control, 3, self.memory, grace=2.0, executable="/usr/bin/python3")
        self.supervisor.startService()

    def last_message(self, index: int) -> Configuration:
        """The configuration (admin states and overrides included) last sent to process C{index}."""
        message = read_message(self.memory.spawned[index][3].written[-1])
        assert isinstance(message, Configuration)
        return message

    def test_startsTheOtherWorkersWithTheConfiguration(self) -> None:
        self.assertEqual([args for _, args, _, _ in self.memory.spawned],
                         [["/usr/bin/python3", "-m", "balancer.workers.child", "1"],
                          ["/usr/bin/python3", "-m", "balancer.workers.child", "2"]])
        env = self.memory.spawned[0][2]
        self.assertEqual(env["PYTHONPATH"].split(os.pathsep)[0], ROOT)
        message = self.last_message(1)
        self.assertEqual((message.config.servers, message.admin_states),
                         (self.control.effective_config().servers, {"one": {}, "two": {}}))

    def test_apiChangesReachEveryWorker(self) -> None:
        definition = {"bind": "127.0.0.1:3002", "discovery": {"kind": "static", "static_list": ["127.0.0.1:9004"]}}
        self.successResultOf(self.control.add_server("three", definition))
        for index in (0, 1):
            self.assertEqual(list(self.last_message(index).config.servers), ["one", "two", "three"])
        self.successResultOf(self.control.remove_server("one"))
        self.assertEqual(list(self.last_message(0).config.servers), ["two", "three"])
        self.successResultOf(self.control.set_backend_state("127.0.0.1:9004", DRAIN))
        self.assertEqual(self.last_message(1).admin_states["three"], {"127.0.0.1:9004": DRAIN})

    def test_statsAreSummedOverWorkers(self) -> None:
        report = {"stats": {"one": document([backend("127.0.0.1", 9001, total_connections=2, rx=40)], rx_total=40)}}
        line = json.dumps(report).encode() + b"\n"
        for protocol, _, _, _ in self.memory.spawned:
            protocol.outReceived(line[:10])
            protocol.outReceived(line[10:])
        stats = server_stats(self.control, "one")
        self.assertEqual((stats["rx_total"], stats["backends"][0]["stats"]["total_connections"]), (80, 4))
        self.assertEqual(server_stats(self.control, "two")["rx_total"], 0)

    def test_tlsChallengeFiresOnceEveryWorkerAnswers(self) -> None:
        """
        The CA is told to validate a TLS-ALPN-01 challenge only once every
        worker says it answers it (the CA's connection may reach any of them).
        """
        answered = self.supervisor.tls_challenge("a.test", b"PEM")
        sent = [read_message(process.written[-1]) for _, _, _, process in self.memory.spawned]
        self.assertEqual(sent, [AcmeChallenge("a.test", b"PEM")] * 2)
        first, second = (protocol for protocol, _, _, _ in self.memory.spawned)
        first.outReceived(b'{"acme_challenge_answered": "a.test"}\n')
        self.assertNoResult(answered)
        second.outReceived(b'{"acme_challenge_answered": "a.test"}\n')
        self.successResultOf(answered)
        with capturedLogs() as events:
            self.memory.advance(CHALLENGE_WAIT)
        self.assertEqual([formatEvent(e) for e in events if "did not answer" in formatEvent(e)], [])

    def test_tlsChallengeUnansweredGoesOnAfterAWhile(self) -> None:
        """A worker that does not answer holds the order back for CHALLENGE_WAIT seconds at most, then it is logged."""
        with capturedLogs() as events:
            answered = self.supervisor.tls_challenge("a.test", b"PEM")
            self.memory.advance(CHALLENGE_WAIT - 0.1)
            self.assertNoResult(answered)
            self.memory.advance(0.1)
            self.successResultOf(answered)
        self.assertIn("acme: workers [1, 2] did not answer the challenge of a.test within 5.0 s",
                      [formatEvent(e) for e in events])

    def test_tlsChallengeAskedAgainStillEnds(self) -> None:
        """A challenge asked again for the same name before the workers answered: both orders go on."""
        first = self.supervisor.tls_challenge("a.test", b"PEM1")
        second = self.supervisor.tls_challenge("a.test", b"PEM2")
        for protocol, _, _, _ in self.memory.spawned:
            protocol.outReceived(b'{"acme_challenge_answered": "a.test"}\n')
        self.successResultOf(second)
        self.memory.advance(CHALLENGE_WAIT)
        self.successResultOf(first)

    def test_tlsChallengeWithdrawnWaitsForNobody(self) -> None:
        self.successResultOf(self.supervisor.tls_challenge("a.test", None))

    def test_reportsAddUpInStatisticsAndMetrics(self) -> None:
        """Every server counter a worker reports, beyond gobetween's, reaches /v1 and /metrics summed."""
        self.balancer.server("one").counters.denied = 1
        reports = [document([backend("127.0.0.1", 9001, refused_connections=r)], denied=d, tls_failures=t)
                   for r, d, t in ((2, 10, 3), (5, 20, 4))]
        for (protocol, _, _, _), report in zip(self.memory.spawned, reports):
            protocol.outReceived(json.dumps({"stats": {"one": report}}).encode() + b"\n")
        statistics = self.control.service("one").statistics
        self.assertEqual((statistics["denied"], statistics["tls_failures"]), (31, 7))
        self.assertEqual(statistics["backends"][0]["stats"]["refused_connections"], 7)
        self.assertNotIn("denied", server_stats(self.control, "one"))
        scraped = generate_latest(metrics_registry(self.control)).decode().splitlines()
        self.assertIn('balancer_server_denied_total{server="one"} 31.0', scraped)
        self.assertIn('balancer_backend_refused_connections_total{host="127.0.0.1",port="9001",server="one"} 7.0',
                      scraped)

    def test_endedWorkerRestartsWithBackoff(self) -> None:
        """
        After 1 s, doubled after each quick failure, and 1 s again after a
        long run; the ended worker's report counts until its replacement sends one.
        """
        report = {"stats": {"one": document([], rx_total=7)}}
        self.memory.spawned[0][0].outReceived(json.dumps(report).encode() + b"\n")
        current = 0
        for lived, delay in ((0.0, RESTART_DELAY), (0.0, 2 * RESTART_DELAY), (0.0, 4 * RESTART_DELAY),
                             (RESTART_MAX_DELAY, RESTART_DELAY)):
            self.memory.advance(lived)
            self.memory.end(current, ProcessTerminated(signal=signal.SIGKILL))
            self.assertEqual(self.control.service("one").statistics["rx_total"], 7)
            count = len(self.memory.spawned)
            self.memory.advance(delay * 0.75)
            self.assertEqual(len(self.memory.spawned), count, delay)
            self.memory.advance(delay * 0.25)
            self.assertEqual(len(self.memory.spawned), count + 1, delay)
            self.assertEqual(self.memory.spawned[-1][1][-1], "1")
            current = count
        report = {"stats": {"one": document([], rx_total=1)}}
        self.memory.spawned[current][0].outReceived(json.dumps(report).encode() + b"\n")
        self.assertEqual(self.control.service("one").statistics["rx_total"], 1)

    def test_stopTerminatesThenKills(self) -> None:
        stopped = self.supervisor.stopService()
        transports = [t for _, _, _, t in self.memory.spawned]
        self.assertEqual([t.signals for t in transports], [[signal.SIGTERM], [signal.SIGTERM]])
        self.memory.end(0, ProcessDone(0))
        self.memory.advance(2.0 + KILL_MARGIN)
        self.assertEqual(transports[1].signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertNoResult(stopped)
        self.memory.end(1, ProcessTerminated(signal=signal.SIGKILL))
        self.successResultOf(stopped)
        self.memory.advance(RESTART_MAX_DELAY)
        self.assertEqual(len(self.memory.spawned), 2)
        self.assertEqual(self.control.peers.documents("one"), [])

    def test_stoppedSupervisorHearsNoMoreChanges(self) -> None:
        """Stopping ends its subscription to the controller's changes and its statistics source."""
        pushes: list[None] = []

        class Counting(WorkerSupervisor):
            def push(self) -> None:
                pushes.append(None)

        supervisor = Counting(self.control, 1, self.memory, grace=2.0, executable="/usr/bin/python3")
        supervisor.startService()
        supervisor.reports[1] = {"one": document([], rx_total=5)}
        self.successResultOf(self.control.set_backend_state("127.0.0.1:9001", DRAIN))
        self.assertEqual((len(pushes), len(self.control.peers.documents("one"))), (1, 1))
        self.successResultOf(supervisor.stopService())
        self.successResultOf(self.control.set_backend_state("127.0.0.1:9001", None))
        self.assertEqual((len(pushes), len(self.control.peers.documents("one"))), (1, 0))

    def test_workerLogEventsAreLoggedHere(self) -> None:
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        event = {"log_format": "web: listening", "log_level": LogLevel.info, "log_namespace": "balancer.server",
                 "log_time": 1.0}
        record = b"\x1e" + eventAsJSON(event).encode() + b"\n"
        protocol = self.memory.spawned[0][0]
        protocol.errReceived(record[:7])
        protocol.errReceived(record[7:] + b"Traceback (most recent call last):\n")
        mine = [e for e in events if e.get("log_system") == "worker 1"]
        self.assertEqual([(e["log_level"], e.get("log_format"), e.get("text")) for e in mine],
                         [(LogLevel.info, "web: listening", None), (LogLevel.error, "{text}", "Traceback (most recent call last):")])


class TwoWorkersTests(TestCase):
    """C{twistd -n balancer} with C{[defaults] workers = 2}: two processes serve, the API sums, stop stops both."""

    timeout = 60

    @inlineCallbacks
    def setUp(self) -> Any:
        directory = scratch_directory(self)
        self.config = os.path.join(directory, "balancer.toml")
        self.owners: list[int] = []
        self._pids: list[int] = []
        self.backend = yield serve(self, OwnerRecorder, owners=self.owners, pids=self.pids)
        with open(self.config, "w", encoding="utf-8") as f:
            f.write(f"""
[defaults]
workers = 2
shutdown_grace = "1s"
[api]
enabled = true
bind = "127.0.0.1:0"
[metrics]
enabled = true
bind = "127.0.0.1:0"
[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:{self.backend.getHost().port}"]
""")

    def pids(self) -> list[int]:
        """The balancer's processes: twistd, then its workers."""
        return self._pids

    @inlineCallbacks
    def start(self) -> Any:
        """
        Start twistd; fires with (process, API port, web port) once worker 1
        serves, the metrics port in C{self.metrics}.
        """
        process = spawn_balancer(self, self.config)
        api = yield process.wait_for(rb"api: listening on 127\.0\.0\.1:(\d+)")
        metrics = yield process.wait_for(rb"metrics: listening on 127\.0\.0\.1:(\d+)")
        self.metrics = int(metrics.group(1))
        web = yield process.wait_for(rb"\] web: listening on 127\.0\.0\.1:(\d+)")
        worker = yield process.wait_for(rb"worker 1 \(pid (\d+)\) serving")
        self._pids[:] = [process.transport.pid, int(worker.group(1))]
        return process, int(api.group(1)), int(web.group(1))

    @inlineCallbacks
    def call(self, api: int, method: str, path: str, body: Any = None) -> Any:
        """Fires with (status, decoded JSON) of one API request."""
        response = yield treq.request(method, f"http://127.0.0.1:{api}{path}", json=body, persistent=False)
        content = yield response.json()
        return response.code, content

    @inlineCallbacks
    def scrape(self) -> Any:
        """Fires with the samples of one C{/metrics} scrape, by name with labels."""
        response = yield treq.get(f"http://127.0.0.1:{self.metrics}/metrics", persistent=False)
        text = yield response.text()
        return samples(text)

    @inlineCallbacks
    def served_by_both(self, port: int) -> Any:
        """
        Connect to C{port} until both processes have relayed a connection
        (200 at most); each sends 100 bytes and gets 200 back.  Fires with
        the number of connections made.
        """
        self.owners.clear()
        count = 0
        while set(self.owners) != set(self._pids) and count < 200:
            answer = yield exchange(port, b"x" * 100)
            self.assertEqual(answer, b"x" * 200)
            count += 1
        self.assertEqual(set(self.owners), set(self._pids), f"after {count} connections")
        return count

    @inlineCallbacks
    def test_bothProcessesServeAndTheApiAndMetricsSumThem(self) -> Any:
        process, api, web = yield self.start()
        worker = yield process.wait_for(rb"\[worker 1\] web: listening on 127\.0\.0\.1:(\d+)")
        self.assertEqual(int(worker.group(1)), web)
        count = yield self.served_by_both(web)
        code, stats = yield polled(
            lambda: self.call(api, "GET", "/servers/web/stats"),
            lambda answer: (answer[1]["tx_total"], answer[1]["rx_total"]) == (100 * count, 200 * count),
            10, "the API's sums of both workers' figures", step=0.1,
        )
        self.assertEqual(code, 200)
        self.assertEqual((stats["tx_total"], stats["rx_total"], stats["active_connections"]),
                         (100 * count, 200 * count, 0))
        [entry] = stats["backends"]
        self.assertEqual((entry["stats"]["total_connections"], entry["stats"]["tx"]), (count, 100 * count))
        server = 'balancer_server_connections_total{server="web"}'
        found = yield polled(self.scrape, lambda found: found.get(server) == count, 10, "the scrape's sums", step=0.1)
        labels = f'{{host="127.0.0.1",port="{self.backend.getHost().port}",server="web"}}'
        figures = (server, 'balancer_server_tx_bytes_total{server="web"}',
                   f"balancer_backend_connections_total{labels}", f"balancer_backend_rx_bytes_total{labels}")
        self.assertEqual([found[name] for name in figures], [count, 100 * count, count, 200 * count])

    @inlineCallbacks
    def test_workersIgnoreTheSignalsMeantForWorker0(self) -> Any:
        """
        SIGINT (Ctrl-C reaches the group), SIGHUP (reload) and SIGUSR1 (log
        reopening: logrotate or C{systemctl kill -s USR1} may signal every
        process of the unit) are worker 0's business: a worker ignores them,
        as its kernel signal mask shows.
        """
        yield self.start()
        with open(f"/proc/{self._pids[1]}/status", encoding="ascii") as f:
            ignored = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
        for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            self.assertTrue(ignored & (1 << (signum - 1)), f"worker 1 does not ignore {signum.name}")

    @inlineCallbacks
    def test_serverPostedThroughTheApiIsServedByTheWorkerToo(self) -> Any:
        process, api, _ = yield self.start()
        definition = {"bind": "127.0.0.1:0",
                      "discovery": {"kind": "static", "static_list": [f"127.0.0.1:{self.backend.getHost().port}"]}}
        code, created = yield self.call(api, "POST", "/servers/added", definition)
        self.assertEqual(code, 200, created)
        match = yield process.wait_for(rb"\[worker 1\] added: listening on 127\.0\.0\.1:(\d+)")
        added = int(match.group(1))
        yield self.served_by_both(added)
        code, _ = yield self.call(api, "DELETE", "/servers/added")
        self.assertEqual(code, 200)
        yield process.wait_for(rb"\[worker 1\] added: stopped listening")
        yield self.assertFailure(exchange(added, b"x"), ConnectionRefusedError)

    @inlineCallbacks
    def test_killedWorkerIsReplacedAndStoppingTwistdStopsWorkers(self) -> Any:
        process, _, web = yield self.start()
        killed = self._pids[1]
        os.kill(killed, signal.SIGKILL)
        match = yield process.wait_for(rb"worker 1 \(pid (?!%d\))(\d+)\) serving" % killed)
        self._pids[1] = int(match.group(1))
        self.assertRegex(process.output, rb"worker 1 ended \(.*signal %d.*\); starting it again in 1\.0s" % signal.SIGKILL)
        yield self.served_by_both(web)
        ended = yield process.stop()
        self.assertEqual(ended, (None, signal.SIGTERM), process.output.decode())
        for pid in (killed, self._pids[1]):
            self.assertRaises(ProcessLookupError, os.kill, pid, 0)
        self.assertIn(b"worker 1 stopped", process.output)


class OwnerRecorder(Double):
    """
    A backend that, for each connection, records which of the balancer's
    processes made it (by finding the connecting socket in C{/proc}), then
    answers every byte with two.
    """

    def connectionMade(self) -> None:
        peer, host = self.transport.getPeer(), self.transport.getHost()
        inode = connection_inode(peer.port, host.port)
        for pid in self.factory.pids():
            if inode in socket_inodes(pid):
                self.factory.owners.append(pid)


def connection_inode(local: int, remote: int) -> int | None:
    """The inode of the IPv4 TCP socket from port C{local} to port C{remote}, from C{/proc/net/tcp}."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if (int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16)) == (local, remote):
                return int(fields[9])
    return None


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process C{pid} has open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        match = re.fullmatch(r"socket:\[(\d+)\]", target)
        if match:
            inodes.add(int(match.group(1)))
    return inodes
