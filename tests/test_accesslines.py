"""
The access log's own writer (L{balancer.accesslog.AccessLines}) and the
buffer of its destination (L{balancer.turnbuffer.TurnBuffer}): lines
byte-identical to what Twisted's observers wrote for the access log's
events, held until the end of the reactor's turn and written with one call,
in order with the main log's lines, written at shutdown and before a
reopen, and a destination that fails neither raising into the data plane
nor silencing the main log; workers writing their own lines; and the
bench that measures it in service.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import random
import sys
from datetime import datetime, timezone
from typing import Any, Generator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import (
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    eventAsJSON,
    eventFromJSON,
    formatEvent,
    formatTime,
    globalLogPublisher,
)
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from balancer.accesslog import (
    AccessLines,
    AccessLog,
    access_line,
    IsoSeconds,
    json_number,
    json_record_line,
    start_access_log,
    text_line,
)
from balancer.config.schema import LoggingConfig
from balancer.logs import PathFollowingFile, TwistdLogging, application_log, log_observer
from balancer.proxy.engine import splice
from balancer.proxy.finished import BACKEND_CLOSED, NO_BACKEND, FinishedConnection, FinishedConnections
from balancer.turnbuffer import TurnBuffer
from balancer.workers.child import Worker, access_file
from tests.support.paths import ROOT

CONNECTION = FinishedConnection("web", "tcp", "192.0.2.7:51234", "10.0.0.1:80", 1_700_000_000.25, 0.0012, 2.5034,
                                48211, 312, BACKEND_CLOSED)

#: Records whose lines must not change: a typical one, one with no backend
#: and no connect time, one whose names and reason have quotes, braces,
#: non-ASCII text and a newline, one from an IPv6 client over UDP.
RECORDS = [
    CONNECTION,
    FinishedConnection("web", "tcp", "192.0.2.7:1", None, 0.0, None, 0.0, 0, 0, NO_BACKEND),
    FinishedConnection('{w"e}b', "tls", "192.0.2.7:2", "10.0.0.1:443", 1.5, 0.25, 1e-7, 1, 2,
                       'say "{hé}" \u2603\nthen {0} {{x}}'),
    FinishedConnection("dns", "udp", "[::1]:5353", "[2001:db8::1]:53", 1_700_000_000.0, 0.0, 0.000999, 64, 1 << 40,
                       "max_responses reached"),
]

#: When they were logged: with microseconds, on a whole second (JSON's time has no fraction then), just before one.
TIMES = [1_700_000_000.25, 1_700_000_001.0, 1_700_000_002.9999996]


def twisted_wrote(connection: FinishedConnection, when: float, format: str) -> str:
    """
    What the access log wrote before its own writer, for C{connection}
    logged at C{when}: L{AccessLog}'s event through the main log's observer
    (the path it still takes under twistd's own observer and from workers).
    """
    events: list[LogEvent] = []
    AccessLog(Logger(namespace="balancer.access", observer=LogPublisher(events.append)))(connection)
    [event] = events
    stream = io.StringIO()
    log_observer(LoggingConfig(format=format), stream)({**event, "log_time": when})
    return stream.getvalue()


def close_descriptors_under(directory: str) -> None:
    """Close this process's descriptors of the files in C{directory} (the log files a test opened)."""
    inside = os.path.abspath(directory) + os.sep
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(inside):
            os.close(int(fd))


class Writes:
    """A stream that keeps each write, or fails with C{error} while it is set."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.error: Exception | None = None

    def write(self, text: str) -> None:
        if self.error is not None:
            raise self.error
        self.writes.append(text)

    def flush(self) -> None:
        if self.error is not None:
            raise self.error


def recording(test: SynchronousTestCase) -> list[LogEvent]:
    """The global log's events for the time of C{test}."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    test.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


class SameLinesTests(SynchronousTestCase):
    """The writer's lines are, byte for byte, those Twisted's observers wrote for the access log's events."""

    def test_textAsTwistedWroteIt(self) -> None:
        render = text_line()
        for connection in RECORDS:
            for when in TIMES:
                self.assertEqual(render(connection, when), twisted_wrote(connection, when, "text"), (connection, when))

    def test_jsonAsTwistedWroteIt(self) -> None:
        render = json_record_line()
        for connection in RECORDS:
            for when in TIMES:
                self.assertEqual(render(connection, when), twisted_wrote(connection, when, "json"), (connection, when))

    def test_jsonTimeAsDatetimeWritesIt(self) -> None:
        """The time of 20,000 seeded instants (and a few edges), as C{datetime}'s C{isoformat} gives it."""
        times = IsoSeconds()
        draw = random.Random(20)
        instants = [draw.uniform(1e9, 2e9) for _ in range(10_000)]
        instants += [round(draw.uniform(1e9, 2e9), draw.choice([0, 1, 3, 6, 7])) for _ in range(10_000)]
        instants += [0.0, 1.0000005, 1.0000015, 1_700_000_000.9999995, 1_700_000_000.9999996, 1_700_000_000.000001]
        for when in instants:
            self.assertEqual(times(when), datetime.fromtimestamp(when, timezone.utc).isoformat(), when)

    def test_jsonNumbersAsJsonWritesThem(self) -> None:
        for value in (None, 0, 7, 1 << 70, 0.0, -0.0, 1e-7, 0.1, 1.7e9, 1e300, math.inf, -math.inf, math.nan):
            self.assertEqual(json_number(value), json.dumps(value), value)

    def test_textLine(self) -> None:
        """The line itself, as an operator reads it (and as the README shows it)."""
        self.assertEqual(
            text_line()(CONNECTION, 1_700_000_000.5),
            f"{formatTime(1_700_000_000)} [balancer.access#info] server=web client=192.0.2.7:51234"
            " backend=10.0.0.1:80 protocol=tcp connect=0.001s duration=2.503s from_client=312 to_client=48211"
            ' reason="backend closed"\n',
        )
        self.assertTrue(text_line()(RECORDS[2], 1.0).endswith('reason="say "{hé}" \u2603\n\tthen {0} {{x}}"\n'))

    def test_jsonLine(self) -> None:
        self.assertEqual(
            json_record_line()(RECORDS[1], 1_700_000_000.0),
            '{"time": "2023-11-14T22:13:20+00:00", "level": "info", "namespace": "balancer.access", "message":'
            ' "server=web client=192.0.2.7:1 backend=- protocol=tcp connect=- duration=0.000s from_client=0'
            ' to_client=0 reason=\\"no backend\\"", "server": "web", "protocol": "tcp", "client": "192.0.2.7:1",'
            ' "backend": null, "started": 0.0, "connect_seconds": null, "duration_seconds": 0.0, "rx": 0, "tx": 0,'
            ' "reason": "no backend"}\n',
        )
        self.assertEqual(json.loads(json_record_line()(RECORDS[2], 1.0))["reason"], RECORDS[2].reason)


class TurnBufferTests(SynchronousTestCase):
    """Lines held until the end of the reactor's turn, written with one call."""

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.stream = Writes()
        self.buffer = TurnBuffer(self.stream, self.reactor, "test")

    def test_linesOfATurnAreOneWriteAtItsEnd(self) -> None:
        self.buffer.add("one\n")
        self.buffer.add("two\n")
        self.assertEqual(self.stream.writes, [])
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(0)
        self.assertEqual(self.stream.writes, ["one\ntwo\n"])
        self.buffer.add("three\n")
        self.reactor.advance(0)
        self.assertEqual(self.stream.writes, ["one\ntwo\n", "three\n"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_aMainLineIsWrittenAtOnceAfterTheLinesHeld(self) -> None:
        """A main log line in the middle of a turn: the lines made before it first, then it, in one write."""
        self.buffer.add("access 1\n")
        self.buffer.write("main\n")
        self.buffer.add("access 2\n")
        self.assertEqual(self.stream.writes, ["access 1\nmain\n"])
        self.reactor.advance(0)
        self.assertEqual(self.stream.writes, ["access 1\nmain\n", "access 2\n"])

    def test_writtenAtShutdown(self) -> None:
        """What the last turn added is written at the reactor's shutdown, even if the turn's call never runs."""
        self.buffer.add("last\n")
        self.buffer.add("lines\n")
        [(flush, args, kwargs)] = self.reactor.triggers["after"]["shutdown"]
        flush(*args, **kwargs)
        self.assertEqual(self.stream.writes, ["last\nlines\n"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_writtenAtOnceAfterShutdown(self) -> None:
        """
        The end of the shutdown can end the last relays after the buffer was
        written (the last one's end fires the shutdown's wait): the reactor
        runs no more turns, so their lines are written at once.
        """
        self.buffer.add("one\n")
        [(flush, args, kwargs)] = self.reactor.triggers["after"]["shutdown"]
        flush(*args, **kwargs)
        self.buffer.add("after\n")
        self.assertEqual(self.stream.writes, ["one\n", "after\n"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_oneShutdownTriggerOnly(self) -> None:
        for turn in range(3):
            self.buffer.add(f"{turn}\n")
            self.reactor.advance(0)
        self.assertEqual(len(self.reactor.triggers["after"]["shutdown"]), 1)

    def test_aFailingWriteIsLoggedOnceAndNeverRaises(self) -> None:
        """A full disk (or a closed descriptor): lines dropped, one error until it writes again, then one notice."""
        events = recording(self)
        for error in (OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EBADF, "Bad file descriptor"),
                      ValueError("I/O operation on closed file")):
            del events[:]
            self.stream.error = error
            for turn in range(3):
                self.buffer.add(f"lost {turn}\n")
                self.reactor.advance(0)
            self.buffer.flush()
            [failed] = events
            self.assertEqual(failed["log_level"].name, "error")
            self.assertIn(str(error), formatEvent(failed))
            self.stream.error = None
            self.buffer.add("back\n")
            self.reactor.advance(0)
            self.assertEqual(self.stream.writes[-1], "back\n")
            self.assertEqual([event["log_format"] for event in events[1:]], ["log {name}: writing again"])
        self.assertFalse([write for write in self.stream.writes if "lost" in write])


class AccessLinesTests(SynchronousTestCase):
    """The access log adds its lines to its destination: no log event is made."""

    def test_publishedConnectionsBecomeLinesNotEvents(self) -> None:
        events = recording(self)
        reactor = MemoryReactorClock()
        stream = Writes()
        finished = FinishedConnections()
        stop = start_access_log(LoggingConfig(format="json"), finished, TurnBuffer(stream, reactor, "test"))
        finished.publish(CONNECTION)
        finished.publish(RECORDS[1])
        reactor.advance(0)
        self.assertEqual(events, [])
        [written] = stream.writes
        self.assertEqual([json.loads(line)["client"] for line in written.splitlines()], ["192.0.2.7:51234", "192.0.2.7:1"])
        assert stop is not None
        stop()
        self.assertFalse(finished.wanted)

    def test_timedWhenPublished(self) -> None:
        stream = Writes()
        reactor = MemoryReactorClock()
        lines = AccessLines(TurnBuffer(stream, reactor, "test"), text_line(), clock=lambda: 1_700_000_000.0)
        lines(CONNECTION)
        reactor.advance(0)
        self.assertEqual(stream.writes, [text_line()(CONNECTION, 1_700_000_000.0)])

    def test_levelAboveInfoSubscribesNothing(self) -> None:
        for level in ("warn", "warning", "error"):
            finished = FinishedConnections()
            buffer = TurnBuffer(Writes(), MemoryReactorClock(), "test")
            self.assertIsNone(start_access_log(LoggingConfig(level=level), finished, buffer), level)
            self.assertFalse(finished.wanted, level)


class DestinationTests(SynchronousTestCase):
    """The destinations of L{application_log}, with the access log's lines buffered in them."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.main = os.path.join(self.directory, "balancer.log")
        self.access = os.path.join(self.directory, "access.log")
        self.reactor = MemoryReactorClock()

    def read(self, path: str) -> list[str]:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()

    def started(self, config: LoggingConfig,
                twistd: TwistdLogging = TwistdLogging()) -> tuple[Any, FinishedConnections, Logger]:
        log = application_log(config, twistd, self.reactor)
        assert log.observer is not None
        self.addCleanup(close_descriptors_under, self.directory)
        finished = FinishedConnections()
        start_access_log(config, finished, log.access)
        return log, finished, Logger(namespace="balancer.server_service", observer=log.observer)

    def test_sharedFileKeepsTheOrderOfLines(self) -> None:
        """The main log and the access log in one file: a main line made between access lines of a turn stays between them."""
        _, finished, main = self.started(LoggingConfig(output=self.main))
        finished.publish(RECORDS[0])
        main.info("between")
        finished.publish(RECORDS[1])
        self.reactor.advance(0)
        lines = self.read(self.main)
        self.assertEqual([line.split("] ", 1)[1][:22] for line in lines],
                         ["server=web client=192.", "between", "server=web client=192."])
        self.assertIn("client=192.0.2.7:51234 ", lines[0])
        self.assertIn("client=192.0.2.7:1 ", lines[2])

    def test_reopenWritesTheLinesHeldToTheRenamedFile(self) -> None:
        """SIGUSR1 after logrotate's rename: lines made before it go to the renamed file, none are lost."""
        log, finished, _ = self.started(LoggingConfig(output=self.main, access_output=self.access))
        finished.publish(RECORDS[0])
        self.reactor.advance(0)
        finished.publish(RECORDS[1])
        os.rename(self.access, self.access + ".1")
        log.on_usr1()
        finished.publish(RECORDS[3])
        self.reactor.advance(0)
        self.assertEqual([line.split(" client=")[1].split(" ")[0] for line in self.read(self.access + ".1")],
                         ["192.0.2.7:51234", "192.0.2.7:1"])
        [after] = self.read(self.access)
        self.assertIn(" client=[::1]:5353 ", after)

    def test_twistdsLogfileTakesTheLinesAndRotatesAfterThem(self) -> None:
        """twistd's C{--logfile}: the lines held are written before SIGUSR1 rotates the file (twistd's way: C{.1})."""
        path = os.path.join(self.directory, "twistd.log")
        log, finished, _ = self.started(LoggingConfig(), TwistdLogging(logfile=path))
        assert log.access is not None
        self.addCleanup(getattr(log.access.stream, "close"))  # twistd's LogFile, a file object of its own
        finished.publish(RECORDS[0])
        self.reactor.advance(0)
        finished.publish(RECORDS[1])
        log.on_usr1()
        finished.publish(RECORDS[3])
        self.reactor.advance(0)
        self.assertEqual([line.split("] ", 1)[1] for line in self.read(path + ".1")],
                         [access_line(record) for record in RECORDS[:2]])
        self.assertEqual([line.split("] ", 1)[1] for line in self.read(path)], [access_line(RECORDS[3])])

    def test_aFullAccessFileLeavesTheMainLog(self) -> None:
        """The access file cannot be written (C{/dev/full}): the publisher is not disturbed, the main log writes on."""
        if not os.path.exists("/dev/full"):
            raise self.skipTest("no /dev/full")  # Linux has it
        events = recording(self)
        log, finished, main = self.started(LoggingConfig(output=self.main, access_output="/dev/full"))
        finished.publish(CONNECTION)
        self.reactor.advance(0)
        [failed] = events
        assert log.observer is not None
        log.observer(failed)
        main.info("still here")
        finished.publish(CONNECTION)
        self.reactor.advance(0)
        lines = self.read(self.main)
        self.assertIn("log /dev/full: writing failed", lines[0])
        self.assertIn("No space left on device", lines[0])
        self.assertTrue(lines[1].endswith(" still here"), lines)
        self.assertEqual(len(lines), 2)
        self.assertEqual(len(events), 1)


class WorkerTests(SynchronousTestCase):
    """
    A worker process writes its access lines itself when C{[logging] output}
    is a file: the lines worker 0 wrote for its events, appended to the file.
    """

    def test_linesAsWorker0WroteThem(self) -> None:
        """A worker's event crossed to worker 0 as JSON and was written there with C{log_system} C{worker 1}."""
        for format, render in (("text", text_line("worker 1")), ("json", json_record_line("worker 1"))):
            for connection in RECORDS:
                for when in TIMES:
                    events: list[LogEvent] = []
                    AccessLog(Logger(namespace="balancer.access", observer=LogPublisher(events.append)))(connection)
                    crossed = eventFromJSON(eventAsJSON({**events[0], "log_time": when}))
                    crossed["log_system"] = "worker 1"
                    stream = io.StringIO()
                    log_observer(LoggingConfig(format=format), stream)(crossed)
                    self.assertEqual(render(connection, when), stream.getvalue(), (format, connection, when))

    def test_fileOnlyWhenTheMainLogIsAFile(self) -> None:
        """Only worker 0 knows twistd's --logfile, --syslog and --logger, which apply when output is stdout or stderr."""
        cases = {
            ("/var/log/b.log", ""): "/var/log/b.log",
            ("/var/log/b.log", "/var/log/b.log"): "/var/log/b.log",
            ("/var/log/b.log", "/var/log/access.log"): "/var/log/access.log",
            ("/var/log/b.log", "stdout"): None,
            ("/var/log/b.log", "stderr"): None,
            ("stdout", ""): None,
            ("stderr", "/var/log/access.log"): None,
            ("stdout", "stdout"): None,
        }
        for (output, access_output), expected in cases.items():
            self.assertEqual(access_file(LoggingConfig(output=output, access_output=access_output)), expected,
                             (output, access_output))

    def test_aWorkerAppendsItsLinesItself(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.addCleanup(close_descriptors_under, directory)
        path = os.path.join(directory, "balancer.log")
        with open(path, "w", encoding="utf-8") as f:
            f.write("worker 0's line\n")
        events = recording(self)
        reactor = MemoryReactorClock()
        worker = Worker(reactor, LogLevelFilterPredicate(LogLevel.info), 3)
        worker.makeConnection(StringTransport())
        mapping = {"logging": {"output": path}, "servers": {"web": {"bind": "127.0.0.1:3000", "discovery": {
            "kind": "static", "static_list": ["127.0.0.1:9001"]}}}}
        worker.dataReceived(json.dumps({"config": mapping, "admin_states": {}}).encode() + b"\n")
        assert worker.balancer is not None
        worker.balancer.finished.publish(CONNECTION)
        worker.balancer.finished.publish(RECORDS[1])
        reactor.advance(0)
        self.assertEqual([event for event in events if event.get("log_namespace") == "balancer.access"], [])
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "worker 0's line")
        self.assertEqual([line.split(" ", 1)[1][:36] for line in lines[1:]],
                         ["[worker 3] server=web client=192.0.2", "[worker 3] server=web client=192.0.2"])


class PathFollowingFileTests(SynchronousTestCase):
    """A worker's access file follows its path: logrotate renames it, and the worker gets no SIGUSR1."""

    def test_aRenamedOrRemovedFileIsLeftForTheOneAtThePath(self) -> None:
        path = self.mktemp()
        file = PathFollowingFile(path)
        self.addCleanup(file.close)
        file.write("one\n")
        os.rename(path, path + ".1")
        file.write("two\n")
        os.rename(path, path + ".2")
        with open(path, "w", encoding="utf-8") as f:
            f.write("made by worker 0\n")
        file.write("three\n")
        os.remove(path)
        file.write("four\n")
        file.write("five\n")
        for name, text in ((path + ".1", "one\n"), (path + ".2", "two\n"), (path, "four\nfive\n")):
            with open(name, encoding="utf-8") as f:
                self.assertEqual(f.read(), text, name)


class ConnCostBenchTests(TestCase):
    """C{bench/conn_cost.py --access-log}: the access log's cost in service is measured with the lines really written."""

    timeout = 120

    @inlineCallbacks
    def test_aLinePerConnectionWritten(self) -> Generator[Deferred[Any], Any, None]:
        if not splice.AVAILABLE:
            raise SkipTest("no relay engine on this platform")
        for format in ("text", "json"):
            out, err, code = yield getProcessOutputAndValue(
                sys.executable, [os.path.join(ROOT, "bench", "conn_cost.py"), "--connections", "40", "--warmup", "10",
                                 "--access-log", format], env=dict(os.environ), path=ROOT, reactor=reactor)
            self.assertEqual(code, 0, (out, err))
            self.assertIn(b"access lines written: 50\n", out)
