"""L{ThrottledWarning}: a recurring condition logged at most once per interval, with its count."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.trial.unittest import SynchronousTestCase

from balancer.proxy.engine.throttled import ThrottledWarning


class ThrottledWarningTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.clock = Clock()
        self.warning = ThrottledWarning(Logger(observer=self.events.append), "out of {what} ({count} times)", 60.0)

    def test_firstDueIsLoggedAsAWarningWithItsFields(self) -> None:
        self.warning.due(self.clock, what="pipes")
        self.assertEqual(
            [(e["log_level"], e["what"], e["count"]) for e in self.events], [(LogLevel.warn, "pipes", 1)]
        )

    def test_dueAgainWithinTheIntervalIsCountedNotLogged(self) -> None:
        for _ in range(3):
            self.warning.due(self.clock, what="pipes")
            self.clock.advance(20)
        self.assertEqual(([e["count"] for e in self.events], self.warning.count), ([1], 3))

    def test_loggedAgainOnceTheIntervalHasPassed(self) -> None:
        self.warning.due(self.clock, what="pipes")
        self.clock.advance(59.9)
        self.warning.due(self.clock, what="pipes")
        self.clock.advance(0.1)
        self.warning.due(self.clock, what="pipes")
        self.assertEqual([e["count"] for e in self.events], [1, 3])
