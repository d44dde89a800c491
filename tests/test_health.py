"""
Tests for L{balancer.health}: the monitor's semantics on a L{task.Clock}
(consecutive fails and passes, interval, timeout, spreading, errors), the
registry, and the probe's escapes and matching.  Checks against real peers
are in L{tests.test_health_integration}.
"""

from __future__ import annotations

from typing import Any, Union

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from balancer.backends import Pool
from balancer.config.addresses import BackendSpec
from balancer.config.schema import HEALTHCHECK_KINDS, HealthcheckConfig
from balancer.health import CHECKS, HealthCheckError, HealthMonitor, IHealthCheck, make_check
from balancer.health.escapes import decode_escapes
from balancer.health.probe import matcher
from balancer.health.results import CheckResult
from tests.support.reactors import FakeUdpPort, UdpReactor

HANG = "hang"
"""A scripted result: the check never answers by itself."""

Result = Union[bool, Exception, str]


def spec(i: int) -> BackendSpec:
    """Backend C{127.0.0.1:900i}."""
    return BackendSpec("127.0.0.1", 9000 + i)


def key(i: int) -> str:
    """The key of L{spec}C{(i)}."""
    return spec(i).key


@implementer(IHealthCheck)
class ScriptedCheck:
    """
    A check whose results the test writes in advance, per backend key; it
    records when each check started and which hanging checks were cancelled.
    """

    def __init__(self, clock: Clock, script: dict[str, list[Result]] | None = None) -> None:
        self.clock = clock
        self.script = script or {}
        self.started: list[tuple[float, str]] = []
        self.cancelled: list[str] = []

    def check(self, host: str, port: int) -> Deferred[bool]:
        name = BackendSpec(host, port).key
        self.started.append((self.clock.seconds(), name))
        results = self.script.get(name, [])
        result = results.pop(0) if results else HANG
        if result == HANG:
            return Deferred(lambda _: self.cancelled.append(name))
        if isinstance(result, Exception):
            return fail(result)
        return succeed(result)

    def starts(self, name: str) -> list[float]:
        """When the checks of backend C{name} started."""
        return [when for when, which in self.started if which == name]


class MonitorTests(SynchronousTestCase):
    """L{HealthMonitor} driven by a L{Clock} and a L{ScriptedCheck}."""

    def monitor(
        self,
        script: dict[str, list[Result]],
        *,
        backends: int = 1,
        live: bool = True,
        **config: object,
    ) -> tuple[HealthMonitor, Pool, ScriptedCheck]:
        """
        A monitor of C{backends} backends, checked with C{script}, its config
        C{interval = 10} and C{config}, started and past its checks due at
        once; changes go to C{self.changes}.
        """
        self.clock = Clock()
        self.changes: list[tuple[str, bool]] = []
        pool = Pool([spec(i) for i in range(backends)], initially_live=live)
        check = ScriptedCheck(self.clock, script)
        settings = {"kind": "ping", "interval": 10.0, **config}
        monitor = HealthMonitor(
            pool,
            HealthcheckConfig(**settings),  # type: ignore[arg-type]
            self.clock,
            check,
            on_change=lambda backend, live: self.changes.append((backend.key, live)),
        )
        monitor.start()
        self.clock.advance(0)
        return monitor, pool, check

    def run_for(self, seconds: int) -> None:
        """Move the clock on second by second, as time passes for a real reactor."""
        self.clock.pump([1] * seconds)

    def live_after_each_check(self, pool: Pool, count: int) -> list[bool]:
        """Backend 0's status after each of the next C{count} checks, one per interval."""
        backend = pool.get(key(0))
        assert backend is not None
        seen = [backend.live]
        for _ in range(count - 1):
            self.clock.advance(10)
            seen.append(backend.live)
        return seen

    def test_downOnlyAfterFailsConsecutiveFailures(self) -> None:
        """With C{fails = 3} the third failure in a row takes the backend down, and C{on_change} hears it once."""
        _, pool, _ = self.monitor({key(0): [False, False, False, False]}, fails=3)
        self.assertEqual(self.live_after_each_check(pool, 4), [True, True, False, False])
        self.assertEqual(self.changes, [(key(0), False)])

    def test_passBetweenFailuresResetsTheCount(self) -> None:
        """A pass after two failures starts the count again: three more failures are needed."""
        _, pool, _ = self.monitor({key(0): [False, False, True, False, False, False]}, fails=3)
        self.assertEqual(self.live_after_each_check(pool, 6), [True] * 5 + [False])

    def test_upOnlyAfterPassesConsecutivePasses(self) -> None:
        """A down backend comes back on the C{passes}-th pass in a row; a failure between resets the count."""
        _, pool, _ = self.monitor({key(0): [True, False, True, True]}, passes=2, live=False)
        self.assertEqual(self.live_after_each_check(pool, 4), [False, False, False, True])
        self.assertEqual(self.changes, [(key(0), True)])

    def test_goesDownAndUpAgain(self) -> None:
        """Both thresholds apply in turn, each counted from the transition."""
        _, pool, _ = self.monitor({key(0): [False, False, True, True, True]}, fails=2, passes=3)
        self.assertEqual(self.live_after_each_check(pool, 5), [True, False, False, False, True])
        self.assertEqual(self.changes, [(key(0), False), (key(0), True)])

    def test_transitionsAreLogged(self) -> None:
        """Each transition is logged with the backend and the count that caused it."""
        with capturedLogs() as events:
            _, pool, _ = self.monitor({key(0): [False, False, True]}, fails=2, passes=1)
            self.live_after_each_check(pool, 3)
        messages = [formatEvent(e) for e in events if e.get("log_namespace") == "balancer.health.monitor"]
        self.assertEqual(
            messages,
            ["backend 127.0.0.1:9000 down after 2 failed checks", "backend 127.0.0.1:9000 up after 1 passed checks"],
        )

    def test_startKeepsInitialStatus(self) -> None:
        """Starting sets no status: an unhealthy backend stays down and a healthy one live until checks decide."""
        for live in (True, False):
            _, pool, _ = self.monitor({}, live=live, fails=1, passes=1)
            self.assertEqual([b.live for b in pool], [live])
            self.assertEqual(self.changes, [])

    def test_checkedEveryInterval(self) -> None:
        """One backend is checked at once, then every C{interval}, also when checks answer at once."""
        _, _, check = self.monitor({key(0): [True] * 5}, interval=7.0, timeout=1.0)
        self.run_for(30)
        self.assertEqual(check.starts(key(0)), [0, 7, 14, 21, 28])

    def test_checksSpreadOverTheInterval(self) -> None:
        """Backend i of n is first checked at C{interval * i / n}, then every interval."""
        _, _, check = self.monitor({key(i): [True, True] for i in range(4)}, backends=4, interval=8.0)
        self.run_for(15)
        self.assertEqual(
            check.started,
            [(0, key(0)), (2, key(1)), (4, key(2)), (6, key(3)), (8, key(0)), (10, key(1)), (12, key(2)), (14, key(3))],
        )

    def test_timeoutIsAFailureAndCancelsTheCheck(self) -> None:
        """A check that has not answered after C{timeout} is cancelled and counts as a failure."""
        _, pool, check = self.monitor({key(0): [HANG]}, timeout=2.0, fails=1)
        self.clock.advance(1.9)
        self.assertEqual(([b.live for b in pool], check.cancelled), ([True], []))
        self.clock.advance(0.1)
        self.assertEqual(([b.live for b in pool], check.cancelled), ([False], [key(0)]))

    def test_timeoutDefaultsToTheInterval(self) -> None:
        """
        Without C{timeout}, a check may take the whole interval; the one still
        running when the next is due is cancelled, counts as a failure, and the
        next check starts on time.
        """
        _, pool, check = self.monitor({key(0): [HANG, HANG]}, fails=2)
        self.clock.advance(10)
        self.assertEqual((check.cancelled, check.starts(key(0)), [b.live for b in pool]), ([key(0)], [0, 10], [True]))
        self.clock.advance(10)
        self.assertEqual([b.live for b in pool], [False])

    def test_checkDueWhileThePreviousRunsStartsWhenItTimesOut(self) -> None:
        """
        Checks never overlap: with C{timeout} (14) longer than the interval
        (10), the check due at 10 waits for the one still running, which
        times out at 14 (a failure); the waiting check starts then, and the
        interval's own beat goes on (20 finds one running again, 30 none).
        """
        _, pool, check = self.monitor({key(0): [HANG, HANG, True, HANG]}, interval=10.0, timeout=14.0, fails=1)
        self.clock.advance(10)
        self.assertEqual((check.cancelled, check.starts(key(0)), [b.live for b in pool]), ([], [0], [True]))
        self.clock.advance(4)
        self.assertEqual((check.cancelled, check.starts(key(0)), [b.live for b in pool]), ([key(0)], [0, 14], [False]))
        self.clock.advance(6)
        self.assertEqual(check.starts(key(0)), [0, 14])
        self.clock.advance(8)
        self.assertEqual((check.cancelled, check.starts(key(0))), ([key(0), key(0)], [0, 14, 28]))
        self.clock.advance(2)
        self.assertEqual(check.starts(key(0)), [0, 14, 28, 30])

    def test_checkDueWhileThePreviousRunsStartsWhenItAnswers(self) -> None:
        """A slow check that answers after the next came due is counted, and the due one starts at once."""
        self.clock = Clock()
        answer: Deferred[bool] = Deferred()
        started: list[float] = []

        @implementer(IHealthCheck)
        class Slow:
            def check(self, host: str, port: int) -> Deferred[bool]:
                started.append(clock.seconds())
                return answer if len(started) == 1 else succeed(True)

        clock = self.clock
        pool = Pool([spec(0)], initially_live=False)
        monitor = HealthMonitor(pool, HealthcheckConfig(kind="ping", interval=2.0, timeout=5.0, passes=1),
                                clock, Slow())
        monitor.start()
        clock.advance(0)
        clock.advance(2)
        self.assertEqual(started, [0])
        clock.advance(1)
        answer.callback(True)
        self.assertEqual((started, [b.live for b in pool]), ([0, 3], [True]))
        clock.advance(1)
        self.assertEqual(started, [0, 3, 4])

    def test_errorKeepsStatusAndCount(self) -> None:
        """A L{HealthCheckError} neither counts nor resets: two failures around it still make C{fails = 2}."""
        with capturedLogs() as events:
            _, pool, _ = self.monitor({key(0): [False, HealthCheckError("printed 7"), False]}, fails=2)
            self.assertEqual(self.live_after_each_check(pool, 3), [True, True, False])
        warnings = [formatEvent(e) for e in events if "status kept" in formatEvent(e)]
        self.assertEqual(warnings, ["backend 127.0.0.1:9000 health check error, status kept: printed 7"])

    def test_errorKeepsDownStatus(self) -> None:
        """Errors alone never change the status, whichever it is."""
        _, pool, _ = self.monitor({key(0): [HealthCheckError("x")] * 3}, live=False, passes=1)
        self.assertEqual(self.live_after_each_check(pool, 3), [False, False, False])

    def test_brokenCheckIsLoggedAndKeepsStatus(self) -> None:
        """An unexpected exception from the check is logged as a failure of the code and changes nothing."""
        _, pool, _ = self.monitor({key(0): [ZeroDivisionError()]}, fails=1)
        self.assertEqual([b.live for b in pool], [True])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_runsCountedPerBackend(self) -> None:
        """C{runs} counts the checks started for each backend, hanging or not."""
        monitor, _, _ = self.monitor({key(0): [True, HANG], key(1): [HANG]}, backends=2, timeout=1.0)
        self.run_for(10)
        self.assertEqual(dict(monitor.runs), {key(0): 2, key(1): 1})

    def test_resultKeepsTheLatestCheckAndTheCounts(self) -> None:
        """
        C{result} gives the latest check's outcome, end and duration (a
        timeout lasts C{timeout}), and counts checks and those that did not pass.
        """
        monitor, _, _ = self.monitor(
            {key(0): [True, False, HealthCheckError("printed 7"), HANG]}, timeout=2.0, fails=5
        )
        seen = [monitor.result(key(0))]
        for _ in range(3):
            self.clock.advance(10)
            seen.append(monitor.result(key(0)))
        self.clock.advance(2)
        seen.append(monitor.result(key(0)))
        self.assertEqual(seen, [
            CheckResult("passed", 0.0, 0.0, 1, 0),
            CheckResult("failed", 10.0, 0.0, 2, 1),
            CheckResult("error", 20.0, 0.0, 3, 2),
            CheckResult("error", 20.0, 0.0, 3, 2),
            CheckResult("timeout", 32.0, 2.0, 4, 3),
        ])
        self.assertEqual([r.passed for r in seen if r is not None], [True, False, False, False, False])

    def test_resultSaysWhenTheChecksLastTurnedTheBackend(self) -> None:
        """
        C{changed_at} is None until the checks turn the backend down or live,
        then the time of the latest turn, kept by the checks that follow.
        """
        monitor, _, _ = self.monitor({key(0): [True, False, False, True, True]}, fails=2, passes=1)
        seen = [monitor.result(key(0))]
        for _ in range(4):
            self.clock.advance(10)
            seen.append(monitor.result(key(0)))
        self.assertEqual([r.changed_at if r else "none" for r in seen], [None, None, 20.0, 30.0, 30.0])

    def test_noResultBeforeTheFirstCheckNorAfterRemoval(self) -> None:
        """A backend has no result until its first check ends, nor once it is no longer checked."""
        monitor, pool, _ = self.monitor({key(0): [HANG], key(1): [True]}, backends=2, timeout=1.0)
        self.assertIsNone(monitor.result(key(0)))
        self.clock.advance(5)
        result = monitor.result(key(1))
        self.assertEqual((result.outcome, result.finished_at) if result else None, ("passed", 5.0))
        pool.replace([spec(0)])
        monitor.backends_changed()
        self.assertIsNone(monitor.result(key(1)))

    def test_backendsChangedFollowsThePool(self) -> None:
        """New backends are checked (spread among themselves), removed ones no longer, and their counts dropped."""
        monitor, pool, check = self.monitor({}, backends=2, timeout=1.0)
        self.clock.advance(5)
        pool.replace([spec(1), spec(2), spec(3)])
        monitor.backends_changed()
        self.clock.advance(0)
        self.run_for(15)
        self.assertEqual(check.starts(key(0)), [0])
        self.assertEqual(check.starts(key(1)), [5, 15])
        self.assertEqual(check.starts(key(2)), [5, 15])
        self.assertEqual(check.starts(key(3)), [10, 20])
        self.assertNotIn(key(0), monitor.runs)

    def test_removedBackendInFlightIsIgnored(self) -> None:
        """A backend removed while its check runs has that check cancelled, and its result is not counted."""
        monitor, pool, check = self.monitor({key(0): [HANG]}, fails=1)
        removed = pool.get(key(0))
        pool.replace([spec(1)])
        monitor.backends_changed()
        self.assertEqual((check.cancelled, self.changes), ([key(0)], []))
        self.assertTrue(removed is not None and removed.live)

    def test_undiscoveredBackendIsNotChecked(self) -> None:
        """A backend kept only for its open connections (no longer discovered) is not checked."""
        monitor, pool, check = self.monitor({}, backends=2, timeout=1.0)
        self.run_for(5)
        draining = pool.get(key(1))
        assert draining is not None
        draining.counters.active_connections = 1
        pool.replace([spec(0)])
        monitor.backends_changed()
        self.run_for(20)
        self.assertEqual((check.starts(key(0)), check.starts(key(1))), ([0, 10, 20], [5]))

    def test_stopCancelsQuietly(self) -> None:
        """Stopping cancels checks in flight without counting them, and no check runs afterwards."""
        monitor, pool, check = self.monitor({key(0): [HANG]}, fails=1)
        monitor.stop()
        self.run_for(100)
        self.assertEqual((check.started, check.cancelled, self.changes), ([(0, key(0))], [key(0)], []))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopBeforeFirstCheck(self) -> None:
        """Backends whose first check has not come yet are never checked after L{HealthMonitor.stop}."""
        monitor, _, check = self.monitor({}, backends=2)
        monitor.stop()
        self.run_for(100)
        self.assertEqual(check.started, [(0, key(0))])

    def test_kindNoneDoesNothing(self) -> None:
        """With C{kind = "none"} and no check given, starting schedules nothing."""
        clock = Clock()
        monitor = HealthMonitor(Pool([spec(0)]), HealthcheckConfig(kind="none"), clock)
        monitor.start()
        self.assertEqual((clock.getDelayedCalls(), dict(monitor.runs)), ([], {}))

    def test_checkNeedsAnInterval(self) -> None:
        """A check with C{interval} 0 is refused, naming the interval."""
        clock = Clock()
        error = self.assertRaises(ValueError, HealthMonitor, Pool(), HealthcheckConfig(), clock, ScriptedCheck(clock))
        self.assertIn("interval", str(error))

    def test_defaultCheckIsTheConfiguredKind(self) -> None:
        """Without a check given, the monitor runs the one C{kind} names: ping connects to each backend."""
        reactor = MemoryReactorClock()
        monitor = HealthMonitor(Pool([spec(0)]), HealthcheckConfig(kind="ping", interval=10.0), reactor)
        monitor.start()
        reactor.advance(0)
        self.assertEqual([(host, port) for host, port, *_ in reactor.tcpClients], [("127.0.0.1", 9000)])


class RegistryTests(SynchronousTestCase):
    """L{make_check} and L{CHECKS}."""

    def test_everyConfigurableKind(self) -> None:
        """Every kind the configuration accepts has a check, except "none"."""
        self.assertEqual(sorted([*CHECKS, "none"]), sorted(HEALTHCHECK_KINDS))

    def test_makeCheckBuildsEachKind(self) -> None:
        """Each kind builds a provider of L{IHealthCheck} of its class."""
        reactor = MemoryReactorClock()
        configs = {
            "ping": HealthcheckConfig(kind="ping", interval=1.0),
            "probe": HealthcheckConfig(kind="probe", interval=1.0, probe_recv="OK"),
            "exec": HealthcheckConfig(kind="exec", interval=1.0, exec_command="check.sh --fast"),
        }
        for kind, config in configs.items():
            check = make_check(config, reactor)
            self.assertIsInstance(check, CHECKS[kind])  # type: ignore[arg-type]
            self.assertTrue(verifyObject(IHealthCheck, check))

    def test_noneHasNoCheck(self) -> None:
        """C{kind = "none"} gives no check."""
        self.assertIsNone(make_check(HealthcheckConfig(kind="none"), MemoryReactorClock()))

    def test_unknownKind(self) -> None:
        """An unknown kind is a L{ValueError} naming it and the known ones."""
        error = self.assertRaises(ValueError, make_check, HealthcheckConfig(kind="smoke"), MemoryReactorClock())
        self.assertEqual(str(error), 'unknown health check kind "smoke" (known: ping, probe, exec, none)')

    def test_execCommandThatDoesNotSplit(self) -> None:
        """An exec_command with unbalanced quotes, or only spaces, is a L{ValueError} naming the key."""
        for command in ('check "unclosed', "   "):
            config = HealthcheckConfig(kind="exec", interval=1.0, exec_command=command)
            error = self.assertRaises(ValueError, make_check, config, MemoryReactorClock())
            self.assertTrue(str(error).startswith("exec_command: "), str(error))


class PingTests(SynchronousTestCase):
    """The ping check on a L{MemoryReactorClock}: what it does with the connection."""

    def test_closesAtOnceAndPassesWhenClosed(self) -> None:
        """Once connected, ping closes the connection, and passes when it is closed."""
        reactor = MemoryReactorClock()
        check = make_check(HealthcheckConfig(kind="ping", interval=1.0), reactor)
        assert check is not None
        results: list[bool] = []
        check.check("127.0.0.1", 9000).addCallback(results.append)
        reactor.advance(0)
        factory = reactor.tcpClients[0][2]
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.assertEqual((transport.disconnecting, results), (True, []))
        protocol.connectionLost(None)
        self.assertEqual(results, [True])

    def test_refusedFailsAtOnce(self) -> None:
        """
        A refused connection to an address fails the check as soon as it is
        refused (not at the next attempt of L{HostnameEndpoint}, 0.3 s later).
        """
        for host in ("127.0.0.1", "::1"):
            reactor = MemoryReactorClock()
            check = make_check(HealthcheckConfig(kind="ping", interval=1.0), reactor)
            assert check is not None
            results: list[bool] = []
            check.check(host, 9000).addCallback(results.append)
            [(connecting_to, _, factory, _, _)] = reactor.tcpClients
            self.assertEqual(connecting_to, host)
            factory.clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
            self.assertEqual(results, [False], host)

    def test_cancelStopsConnecting(self) -> None:
        """Cancelling the check stops the connection attempt; the check fails."""
        reactor = MemoryReactorClock()
        check = make_check(HealthcheckConfig(kind="ping", interval=1.0), reactor)
        assert check is not None
        results: list[bool] = []
        checking = check.check("127.0.0.1", 9000).addCallback(results.append)
        reactor.advance(0)
        checking.cancel()
        self.assertEqual(results, [False])
        self.assertTrue(reactor.connectors[0].stoppedConnecting)  # type: ignore[attr-defined]


class EscapesTests(SynchronousTestCase):
    """L{decode_escapes}."""

    def test_escapes(self) -> None:
        """C{\\n}, C{\\r}, C{\\t}, C{\\\\} and C{\\xNN} become the bytes they name."""
        self.assertEqual(decode_escapes(r"PING\r\n\tA\x00\xff\\n"), b"PING\r\n\tA\x00\xff\\n")

    def test_otherBackslashesKept(self) -> None:
        """An unknown escape, or C{\\x} without two hex digits, is kept as written."""
        self.assertEqual(decode_escapes(r"\q \x4 \xzz"), rb"\q \x4 \xzz")

    def test_textIsUtf8(self) -> None:
        """Characters beyond ASCII are sent as UTF-8."""
        self.assertEqual(decode_escapes("é"), "é".encode())


class MatcherTests(SynchronousTestCase):
    """L{matcher}: how a probe's answer is judged."""

    def test_startsWithDecodesEscapes(self) -> None:
        """C{starts_with} compares bytes, with the expected text's escapes decoded."""
        matches = matcher("starts_with", r"+OK\r\n")
        self.assertEqual([matches(b"+OK\r\nmore"), matches(b"+OK"), matches(b" +OK\r\n")], [True, False, False])

    def test_regexpSearches(self) -> None:
        """C{regexp} searches anywhere in the answer, as text; undecodable bytes do not stop it."""
        matches = matcher("regexp", r"version \d+\.\d+")
        self.assertEqual(
            [matches(b"\xff\xfeserver version 2.10\n"), matches(b"version x")], [True, False]
        )


class UdpProbeTests(SynchronousTestCase):
    """The UDP probe's exchange, on a fake UDP port."""

    def probe(self, host: str, **config: Any) -> tuple[list[bool], Any, FakeUdpPort]:
        """Start one UDP probe of C{host:53}; its results so far, its protocol and its port."""
        reactor = UdpReactor(names={"backend.test": "192.0.2.7"})
        settings = {"kind": "probe", "interval": 1.0, "probe_protocol": "udp", "probe_recv": "got", **config}
        check = make_check(HealthcheckConfig(**settings), reactor)  # type: ignore[arg-type]
        assert check is not None
        results: list[bool] = []
        check.check(host, 53).addCallback(results.append)
        protocol, port = reactor.udpServers[0][1], reactor.udpPorts[0]
        return results, protocol, port

    def test_oneDatagramToTheResolvedBackend(self) -> None:
        """A host name is resolved first; the probe goes out as one datagram, escapes decoded."""
        _, _, port = self.probe("backend.test", probe_send=r"q\x00")
        self.assertEqual(port.sent, [(("192.0.2.7", 53), b"q\x00")])

    def test_firstAnswerClosesAndIsMatched(self) -> None:
        """The first datagram back closes the socket and is matched; its first C{probe_recv_len} bytes only."""
        results, protocol, port = self.probe("192.0.2.7", probe_recv="^ok$", probe_strategy="regexp", probe_recv_len=2)
        protocol.datagramReceived(b"ok, and more", ("192.0.2.7", 53))
        protocol.datagramReceived(b"late", ("192.0.2.7", 53))
        self.assertEqual((results, port.closed), ([True], True))

    def test_refusedFails(self) -> None:
        """A refused datagram, as the select and poll reactors report it, fails and closes the socket."""
        results, protocol, port = self.probe("192.0.2.7")
        protocol.connectionRefused()
        self.assertEqual((results, port.closed), ([False], True))

    def test_ipv6Backend(self) -> None:
        """An IPv6 backend is probed from an IPv6 socket."""
        reactor = UdpReactor()
        check = make_check(HealthcheckConfig(kind="probe", interval=1.0, probe_protocol="udp", probe_recv="x"), reactor)
        assert check is not None
        check.check("::1", 53)
        self.assertEqual(reactor.udpServers[0][2], "::")
