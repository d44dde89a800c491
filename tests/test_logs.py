"""[logging]: level filtering and the text and JSON formats."""

from __future__ import annotations

import io
import json

from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from balancer.config.schema import LoggingConfig
from balancer.logs import log_observer, open_output


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

    def test_debugShowsAll(self) -> None:
        text = self.emit(LoggingConfig(level="debug"))
        self.assertIn("quiet 1", text)
        self.assertIn("[test#info] told 2", text)

    def test_json(self) -> None:
        text = self.emit(LoggingConfig(level="info", format="json"))
        records = [json.loads(line.strip("\x1e")) for line in text.split("\x1e") if line.strip()]
        self.assertEqual([r["n"] for r in records], [2, 3])
        self.assertEqual(records[0]["log_namespace"], "test")

    def test_fileOutputAppends(self) -> None:
        path = self.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            f.write("before\n")
        stream = open_output(path)
        self.addCleanup(stream.close)
        Logger(namespace="test", observer=log_observer(LoggingConfig(), stream)).info("after")
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "before")
        self.assertIn("after", lines[1])
