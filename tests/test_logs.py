"""[logging]: level filtering (Twisted's chatter included), the text and JSON-lines formats, reopening a file, and which destination wins over twistd's."""

from __future__ import annotations

import io
import json
import os
import signal

from twisted.internet.protocol import ClientFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel, Logger, LogPublisher, formatEventAsClassicLogText, formatTime
from twisted.python import log as legacy_log
from twisted.python.logfile import LogFile
from twisted.trial.unittest import SynchronousTestCase

from balancer.config.schema import LoggingConfig
from balancer.logs import (
    SecondsText,
    OnSignal,
    ReopeningFile,
    TwistdLogging,
    application_log,
    is_chatter,
    json_line,
    log_observer,
)


class Unprintable:
    """A field value JSON cannot hold."""


class LogObserverTests(SynchronousTestCase):
    """Events below the level are dropped; the rest are written in the format asked for."""

    def emit(self, config: LoggingConfig) -> str:
        stream = io.StringIO()
        log = Logger(namespace="test", observer=log_observer(config, stream))
        log.debug("quiet {n}", n=1)
        log.info("told {n}", n=2)
        log.error("loud {n}", n=3)
        return stream.getvalue()

    def test_levelFilters(self) -> None:
        text = self.emit(LoggingConfig(level="warn"))
        self.assertNotIn("told 2", text)
        self.assertIn("loud 3", text)

    def test_infoHidesDebug(self) -> None:
        text = self.emit(LoggingConfig(level="info"))
        self.assertNotIn("quiet 1", text)
        self.assertIn("[test#info] told 2", text)

    def test_debugShowsAll(self) -> None:
        text = self.emit(LoggingConfig(level="debug"))
        self.assertIn("[test#debug] quiet 1", text)
        self.assertIn("[test#info] told 2", text)

    def test_jsonIsOneObjectPerLine(self) -> None:
        text = self.emit(LoggingConfig(level="info", format="json"))
        self.assertNotIn("\x1e", text)
        records = [json.loads(line) for line in text.splitlines()]
        self.assertEqual([(r["level"], r["namespace"], r["message"], r["n"]) for r in records],
                         [("info", "test", "told 2", 2), ("error", "test", "loud 3", 3)])
        self.assertRegex(records[0]["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.?\d*\+00:00$")

    def test_jsonLeavesOutFieldsItCannotHold(self) -> None:
        line = json_line({"log_format": "x {a}", "log_level": LogLevel.warn, "log_namespace": "n", "log_time": 0.0,
                          "a": Unprintable(), "b": [1, "two"], "log_system": "worker 1"})
        record = json.loads(line)
        self.assertTrue(line.endswith("}\n"))
        self.assertEqual(record["b"], [1, "two"])
        self.assertNotIn("a", record)
        self.assertEqual((record["level"], record["system"], record["time"]),
                         ("warn", "worker 1", "1970-01-01T00:00:00+00:00"))
        self.assertTrue(record["message"].startswith("x <tests.test_logs.Unprintable object"))

    def test_jsonCarriesTheTracebackOfAFailure(self) -> None:
        stream = io.StringIO()
        try:
            1 / 0
        except ZeroDivisionError:
            Logger(namespace="test", observer=log_observer(LoggingConfig(format="json"), stream)).failure("went wrong")
        record = json.loads(stream.getvalue())
        self.assertEqual(record["message"], "went wrong")
        self.assertIn("ZeroDivisionError", record["traceback"])

    def test_fileOutputAppends(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("before\n")
        stream = ReopeningFile(path)
        self.addCleanup(stream.close)
        Logger(namespace="test", observer=log_observer(LoggingConfig(), stream)).info("after")
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "before")
        self.assertIn("after", lines[1])


class SecondsTextTests(SynchronousTestCase):
    """The time of a log line, formatted once per second."""

    def test_sameTextAsTwisted(self) -> None:
        """Every time gets Twisted's text: within a second, across seconds, back in time, and none."""
        times = SecondsText()
        base = 1_700_000_000.0
        for when in (None, base, base + 0.25, base + 0.75, base + 1.0, base + 61.5, base - 3600.1, 0.0, base + 1.5):
            self.assertEqual(times(when), formatTime(when), when)

    def test_observerLinesAsTwistedWrites(self) -> None:
        """The text observer writes what Twisted's classic formatting makes of each event."""
        stream = io.StringIO()
        observer = log_observer(LoggingConfig(), stream)
        events = [
            {"log_format": "line {n}", "n": n, "log_time": 1_700_000_000.0 + n / 3,
             "log_level": LogLevel.info, "log_namespace": "test", "log_system": "-"}
            for n in range(7)
        ]
        for event in events:
            observer(event)
        self.assertEqual(stream.getvalue(), "".join(formatEventAsClassicLogText(e) or "" for e in events))


class ChatterTests(SynchronousTestCase):
    """Twisted's start/stop lines are debug: shown at level debug only."""

    def publish(self, level: str) -> str:
        stream = io.StringIO()
        publisher = LogPublisher(log_observer(LoggingConfig(level=level), stream))
        legacy = legacy_log.LogPublisher(observerPublisher=publisher, publishPublisher=publisher)
        factory = ClientFactory()
        Logger(namespace="twisted.internet.protocol.ClientFactory", observer=publisher).info(
            "Starting factory {factory!r}", factory=factory)
        legacy.msg("(TCP Port 8080 Closed)")
        legacy.msg("Factory starting on 8080")
        legacy.msg("a line of its own")
        return stream.getvalue()

    def test_chatterHiddenAtInfo(self) -> None:
        text = self.publish("info")
        self.assertNotIn("Starting factory", text)
        self.assertNotIn("Closed", text)
        self.assertNotIn("starting on", text)
        self.assertIn("a line of its own", text)

    def test_chatterShownAtDebugAsDebug(self) -> None:
        text = self.publish("debug")
        self.assertIn("#debug] Starting factory <twisted.internet.protocol.ClientFactory", text)
        self.assertIn("(TCP Port 8080 Closed)", text)
        self.assertIn("a line of its own", text)

    def test_aFactoryOfOursIsNotChatter(self) -> None:
        self.assertFalse(is_chatter({"log_format": "backend {host} down", "log_namespace": "balancer.health"}))
        self.assertFalse(is_chatter({"log_text": "(TCP Port 1 Closed)", "log_namespace": "balancer.x"}))


class ReopenTests(SynchronousTestCase):
    """A file named by [logging] output is reopened on SIGUSR1."""

    def test_reopenWritesANewFileAtThePath(self) -> None:
        path = self.mktemp()
        file = ReopeningFile(path)
        self.addCleanup(file.close)
        file.write("one\n")
        os.rename(path, path + ".1")
        file.write("two\n")
        file.reopen()
        file.write("three\n")
        file.flush()
        with open(path + ".1", encoding="utf-8") as f:
            self.assertEqual(f.read(), "one\ntwo\n")
        with open(path, encoding="utf-8") as f:
            self.assertEqual(f.read(), "three\n")

    def test_nothingOpenedBeforeTheFirstLine(self) -> None:
        path = self.mktemp()
        ReopeningFile(path)
        self.assertFalse(os.path.exists(path))

    def test_signalRunsTheActionInTheReactorThreadWhileRunning(self) -> None:
        reactor = MemoryReactorClock()
        called: list[str] = []
        reactor.callFromThread = lambda f, *a: called.append("queued") or f(*a)  # type: ignore[method-assign]
        before = signal.getsignal(signal.SIGUSR1)
        service = OnSignal(signal.SIGUSR1, lambda: called.append("ran"), reactor)
        service.startService()
        os.kill(os.getpid(), signal.SIGUSR1)
        service.stopService()
        self.assertEqual(called, ["queued", "ran"])
        self.assertEqual(signal.getsignal(signal.SIGUSR1), before)

    def test_installedAtPrivilegedStartOnce(self) -> None:
        """Installed as early as twistd lets a service act; the handler found then is the one put back."""
        def mine(signum: int, frame: object) -> None:
            pass

        before = signal.signal(signal.SIGUSR1, mine)
        self.addCleanup(signal.signal, signal.SIGUSR1, before)
        service = OnSignal(signal.SIGUSR1, lambda: None, MemoryReactorClock())
        service.privilegedStartService()
        installed = signal.getsignal(signal.SIGUSR1)
        self.assertIsNot(installed, mine)
        service.startService()
        self.assertEqual(signal.getsignal(signal.SIGUSR1), installed)
        service.stopService()
        self.assertIs(signal.getsignal(signal.SIGUSR1), mine)


class DestinationTests(SynchronousTestCase):
    """Which destination wins: [logging] output's file, then twistd's file, then stdout or stderr."""

    def test_outputFileWinsAndReopensOnUsr1(self) -> None:
        path = self.mktemp()
        chosen = application_log(LoggingConfig(output=path), TwistdLogging(logfile="/elsewhere.log", daemon=True))
        assert chosen.observer is not None and chosen.on_usr1 is not None and chosen.access is not None
        self.assertEqual(getattr(chosen.access.stream, "path"), path)
        Logger(namespace="t", observer=chosen.observer).info("before")
        os.rename(path, path + ".1")
        chosen.on_usr1()
        Logger(namespace="t", observer=chosen.observer).info("after")
        with open(path, encoding="utf-8") as f:
            self.assertEqual([line.split(" ", 1)[1] for line in f], ["[t#info] after\n"])

    def test_twistdLogfileIsUsedAndRotatedLikeTwistd(self) -> None:
        path = os.path.abspath(self.mktemp())
        chosen = application_log(LoggingConfig(level="warn"), TwistdLogging(logfile=path))
        assert chosen.observer is not None and chosen.on_usr1 is not None and chosen.access is not None
        rotating = chosen.access.stream
        self.addCleanup(getattr(rotating, "close"))
        self.assertIsInstance(rotating, LogFile)
        self.assertEqual(getattr(rotating, "path"), path)
        Logger(namespace="t", observer=chosen.observer).info("hidden")
        Logger(namespace="t", observer=chosen.observer).warn("shown")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        self.assertNotIn("hidden", text)
        self.assertIn("shown", text)
        chosen.on_usr1()
        with open(path + ".1", encoding="utf-8") as f:
            self.assertIn("shown", f.read())

    def test_daemonWithoutLogfileUsesTwistdLog(self) -> None:
        self.assertEqual(TwistdLogging(daemon=True).file(), "twistd.log")
        self.assertIsNone(TwistdLogging(logfile="-").file())
        self.assertIsNone(TwistdLogging().file())

    def test_syslogOrLoggerLeavesTwistdsObserver(self) -> None:
        chosen = application_log(LoggingConfig(), TwistdLogging(own_observer=True))
        self.assertEqual((chosen.observer, chosen.on_usr1), (None, None))

    def test_foregroundStdoutNeedsNoSignal(self) -> None:
        chosen = application_log(LoggingConfig(), TwistdLogging())
        self.assertIsNotNone(chosen.observer)
        self.assertIsNone(chosen.on_usr1)

    def test_fromTwistdOptions(self) -> None:
        self.assertEqual(TwistdLogging.from_options({"logfile": "", "nodaemon": True, "syslog": False, "logger": None}),
                         TwistdLogging())
        self.assertEqual(TwistdLogging.from_options({"logfile": "x.log", "nodaemon": False, "syslog": True}),
                         TwistdLogging(logfile="x.log", daemon=True, own_observer=True))
