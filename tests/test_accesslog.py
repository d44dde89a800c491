"""
The access log (L{balancer.accesslog}): its line as text and as JSON, its
C{[logging] access_log} switch, and its wiring in the twistd service tree.
"""

from __future__ import annotations

import io
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
)
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancer.accesslog import AccessLog, start_access_log
from balancer.config import ConfigError
from balancer.config.load import config_from_mapping
from balancer.config.schema import LoggingConfig
from balancer.logs import TwistdLogging, application_log, json_line, log_observer
from balancer.proxy.finished import BACKEND_CLOSED, NO_BACKEND, FinishedConnection, FinishedConnections
from balancer.tap import build_service
from balancer.workers.child import Worker

CONNECTION = FinishedConnection(
    server="web",
    protocol="tcp",
    client="192.0.2.7:51234",
    backend="10.0.0.1:80",
    started=1_700_000_000.25,
    connect_seconds=0.0012,
    duration_seconds=2.5034,
    rx=48211,
    tx=312,
    reason=BACKEND_CLOSED,
)


@implementer(ILogObserver)
class Recorder:
    """Keeps the events it observes."""

    def __init__(self) -> None:
        self.events: list[LogEvent] = []

    def __call__(self, event: LogEvent) -> None:
        self.events.append(event)

    def access(self) -> list[LogEvent]:
        """The access log's events."""
        return [event for event in self.events if event.get("log_namespace") == "balancer.access"]


def recording(test: SynchronousTestCase) -> Recorder:
    """A recorder of the global log for the time of C{test}."""
    recorder = Recorder()
    globalLogPublisher.addObserver(recorder)
    test.addCleanup(globalLogPublisher.removeObserver, recorder)
    return recorder


def logged(connection: FinishedConnection) -> LogEvent:
    """The event the access log emits for C{connection}."""
    recorder = Recorder()
    AccessLog(Logger(namespace="balancer.access", observer=LogPublisher(recorder)))(connection)
    [event] = recorder.events
    return event


class LineTests(SynchronousTestCase):
    """One line per connection: key=value pairs as text, the record's fields as JSON."""

    def test_text(self) -> None:
        self.assertEqual(
            formatEvent(logged(CONNECTION)),
            "server=web client=192.0.2.7:51234 backend=10.0.0.1:80 protocol=tcp connect=0.001s"
            ' duration=2.503s from_client=312 to_client=48211 reason="backend closed"',
        )

    def test_dashesForNoBackendAndNoConnect(self) -> None:
        connection = FinishedConnection("web", "tcp", "192.0.2.7:1", None, 0.0, None, 0.0, 0, 0, NO_BACKEND)
        text = formatEvent(logged(connection))
        self.assertIn(" backend=- protocol=tcp connect=- ", text)
        self.assertTrue(text.endswith('reason="no backend"'), text)

    def test_bracesAreText(self) -> None:
        """The line is rendered before it is logged: braces in a name are not format fields."""
        connection = FinishedConnection("{web}", "tcp", "192.0.2.7:1", None, 0.0, None, 0.0, 0, 0, NO_BACKEND)
        event = logged(connection)
        self.assertTrue(formatEvent(event).startswith("server={web} client="), formatEvent(event))
        self.assertEqual(json.loads(json_line(event))["server"], "{web}")

    def test_infoInTheAccessNamespace(self) -> None:
        event = logged(CONNECTION)
        self.assertEqual((event["log_level"].name, event["log_namespace"]), ("info", "balancer.access"))

    def test_jsonHasTheRecordsFields(self) -> None:
        record = json.loads(json_line(logged(CONNECTION)))
        fields = {key: record[key] for key in ("server", "protocol", "client", "backend", "started",
                                               "connect_seconds", "duration_seconds", "rx", "tx", "reason")}
        self.assertEqual(fields, {
            "server": "web", "protocol": "tcp", "client": "192.0.2.7:51234", "backend": "10.0.0.1:80",
            "started": 1_700_000_000.25, "connect_seconds": 0.0012, "duration_seconds": 2.5034,
            "rx": 48211, "tx": 312, "reason": "backend closed",
        })
        self.assertEqual((record["namespace"], record["level"]), ("balancer.access", "info"))
        self.assertTrue(record["message"].startswith("server=web client=192.0.2.7:51234 "))

    def test_jsonNullsForNoBackendAndNoConnect(self) -> None:
        connection = FinishedConnection("web", "tcp", "192.0.2.7:1", None, 0.0, None, 0.0, 0, 0, NO_BACKEND)
        record = json.loads(json_line(logged(connection)))
        self.assertEqual((record["backend"], record["connect_seconds"]), (None, None))

    def test_filteredByTheLevel(self) -> None:
        """At C{level = "warn"} the access log is not written either."""
        for level, lines in (("info", 1), ("warn", 0)):
            stream = io.StringIO()
            observer = log_observer(LoggingConfig(level=level), stream)
            AccessLog(Logger(namespace="balancer.access", observer=observer))(CONNECTION)
            self.assertEqual(len(stream.getvalue().splitlines()), lines, level)


class SwitchTests(SynchronousTestCase):
    """C{[logging] access_log}: on by default, off with false."""

    def test_onByDefault(self) -> None:
        self.assertTrue(LoggingConfig().access_log)
        finished = FinishedConnections()
        stop = start_access_log(LoggingConfig(), finished)
        self.assertIsNotNone(stop)
        recorder = recording(self)
        finished.publish(CONNECTION)
        self.assertEqual([e["reason"] for e in recorder.access()], [BACKEND_CLOSED])
        assert stop is not None
        stop()
        finished.publish(CONNECTION)
        self.assertEqual(len(recorder.access()), 1)

    def test_offSubscribesNothing(self) -> None:
        finished = FinishedConnections()
        self.assertIsNone(start_access_log(LoggingConfig(access_log=False), finished))

    def test_levelAboveInfoSubscribesNothing(self) -> None:
        """
        At a level that drops its info lines the access log does not
        subscribe: no record is built per connection for nothing.
        """
        for level in ("warn", "warning", "error"):
            finished = FinishedConnections()
            self.assertIsNone(start_access_log(LoggingConfig(level=level), finished), level)
            self.assertFalse(finished.wanted, level)
        for level in ("debug", "info"):
            finished = FinishedConnections()
            self.assertIsNotNone(start_access_log(LoggingConfig(level=level), finished), level)
            self.assertTrue(finished.wanted, level)

    def test_configKey(self) -> None:
        config = config_from_mapping({"logging": {"access_log": False}}, "test")
        self.assertFalse(config.logging.access_log)
        self.assertTrue(config_from_mapping({}, "test").logging.access_log)

    def test_notABooleanIsAClearError(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            config_from_mapping({"logging": {"access_log": "yes"}}, "test")
        self.assertIn("access_log", str(caught.exception))
        self.assertIn("expected true or false", str(caught.exception))

    def test_exampleConfigDocumentsIt(self) -> None:
        example = tomllib.loads(Path(__file__).parent.parent.joinpath("etc", "balancer.toml").read_text())
        self.assertIs(example["logging"]["access_log"], True)


class WiringTests(SynchronousTestCase):
    """
    The service tree built by twistd subscribes the access log to the
    balancer's connections: its lines written to the log's destination by
    the end of the turn, or, under twistd's own observer, as log events.
    """

    def published(self, logging: dict[str, Any], twistd: TwistdLogging | None = None) -> tuple[list[LogEvent], str]:
        """The access events and what stdout got when the balancer of the tree built for C{[logging]} publishes a connection."""
        recorder = recording(self)
        stdout = io.StringIO()
        self.patch(sys, "stdout", stdout)
        reactor = MemoryReactorClock()
        root = build_service(config_from_mapping({"logging": logging}, "test"), reactor, twistd=twistd)
        root.getServiceNamed("balancer").finished.publish(CONNECTION)
        reactor.advance(0)
        return recorder.access(), stdout.getvalue()

    def test_onByDefault(self) -> None:
        events, written = self.published({})
        self.assertEqual(events, [])
        self.assertRegex(written, r"^\S+ \[balancer\.access#info\] server=web client=192\.0\.2\.7:51234 .*"
                                  r' reason="backend closed"\n$')

    def test_offWithFalse(self) -> None:
        self.assertEqual(self.published({"access_log": False}), ([], ""))

    def test_eventsForTwistdsOwnObserver(self) -> None:
        """With C{--syslog} or C{--logger} the balancer does not own the destination: log events, as before."""
        events, written = self.published({}, TwistdLogging(own_observer=True))
        self.assertEqual(([event["client"] for event in events], written), (["192.0.2.7:51234"], ""))


class WorkerWiringTests(SynchronousTestCase):
    """A worker process (L{balancer.workers.child}) writes the access log of its own connections."""

    def access_events(self, logging: dict[str, Any]) -> list[LogEvent]:
        """The access log events of a worker started with C{[logging]} when its balancer publishes a connection."""
        recorder = recording(self)
        memory = MemoryReactorClock()
        worker = Worker(memory, LogLevelFilterPredicate(LogLevel.info))
        worker.makeConnection(StringTransport())
        mapping = {"logging": logging, "servers": {"web": {"bind": "127.0.0.1:3000", "discovery": {
            "kind": "static", "static_list": ["127.0.0.1:9001"]}}}}
        worker.dataReceived(json.dumps({"config": mapping, "admin_states": {}}).encode() + b"\n")
        assert worker.balancer is not None
        worker.balancer.finished.publish(CONNECTION)
        return recorder.access()

    def test_onByDefault(self) -> None:
        self.assertEqual(len(self.access_events({})), 1)

    def test_offWithFalse(self) -> None:
        self.assertEqual(self.access_events({"access_log": False}), [])


class AccessOutputTests(SynchronousTestCase):
    """C{[logging] access_output}: the access log apart, reopened on SIGUSR1 when it is a file."""

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(self.directory)
        self.main = os.path.join(self.directory, "balancer.log")
        self.access = os.path.join(self.directory, "access.log")

    def emit(self, observer: ILogObserver) -> None:
        """One access line and one other line, through C{observer}."""
        AccessLog(Logger(namespace="balancer.access", observer=observer))(CONNECTION)
        Logger(namespace="balancer.server_service", observer=observer).info("web: listening on 127.0.0.1:80")

    def read(self, path: str) -> list[str]:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()

    def test_aFileOfItsOwnReopenedOnUsr1(self) -> None:
        log = application_log(LoggingConfig(output=self.main, access_output=self.access), TwistdLogging())
        assert log.observer is not None and log.on_usr1 is not None
        self.emit(log.observer)
        [access] = self.read(self.access)
        self.assertIn('reason="backend closed"', access)
        self.assertNotIn("listening", access)
        self.assertFalse([line for line in self.read(self.main) if "balancer.access" in line])
        os.rename(self.access, self.access + ".1")
        os.rename(self.main, self.main + ".1")
        log.on_usr1()
        self.emit(log.observer)
        self.assertEqual(len(self.read(self.access)), 1)
        self.assertTrue(any("listening" in line for line in self.read(self.main)))

    def test_workersLinesGoThereToo(self) -> None:
        """A worker's events come to worker 0 with their namespace (and C{log_system}): routed alike."""
        log = application_log(LoggingConfig(output=self.main, access_output=self.access, format="json"),
                              TwistdLogging())
        assert log.observer is not None
        recorder = Recorder()
        AccessLog(Logger(namespace="balancer.access", observer=LogPublisher(recorder)))(CONNECTION)
        [event] = recorder.events
        log.observer({**event, "log_system": "worker 1"})
        [line] = self.read(self.access)
        self.assertEqual(json.loads(line)["system"], "worker 1")

    def test_stderr(self) -> None:
        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        log = application_log(LoggingConfig(output=self.main, access_output="stderr"), TwistdLogging())
        assert log.observer is not None
        self.emit(log.observer)
        self.assertEqual(len(stderr.getvalue().splitlines()), 1)
        self.assertIn("balancer.access", stderr.getvalue())
        self.assertEqual(len(self.read(self.main)), 1)

    def test_emptyOrTheMainOutputIsWithTheRest(self) -> None:
        for access_output in ("", self.main):
            log = application_log(LoggingConfig(output=self.main, access_output=access_output), TwistdLogging())
            assert log.observer is not None
            self.emit(log.observer)
        self.assertEqual(len(self.read(self.main)), 4)
        self.assertFalse(os.path.exists(self.access))

    def test_twistdsOwnObserverTakesEverything(self) -> None:
        log = application_log(LoggingConfig(access_output=self.access), TwistdLogging(own_observer=True))
        self.assertIsNone(log.observer)

    def test_configKey(self) -> None:
        self.assertEqual(config_from_mapping({}, "test").logging.access_output, "")
        config = config_from_mapping({"logging": {"access_output": "/var/log/balancer/access.log"}}, "test")
        self.assertEqual(config.logging.access_output, "/var/log/balancer/access.log")
        with self.assertRaises(ConfigError) as caught:
            config_from_mapping({"logging": {"access_output": 1}}, "test")
        self.assertIn("access_output", str(caught.exception))
