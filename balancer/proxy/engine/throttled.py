"""
L{ThrottledWarning}: a warning for a condition that may recur many times a
second (out of descriptors, out of pipes), logged at most once per interval
with the count of times it was due.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger


class ThrottledWarning:
    """
    Logs C{message} as a warning when it is due, but at most once every
    C{interval} seconds; the message's C{{count}} field says how many times
    it was due in all.

    @ivar count: how many times it was due.
    """

    def __init__(self, log: Logger, message: str, interval: float = 60.0) -> None:
        self.count = 0
        self._log = log
        self._message = message
        self._interval = interval
        self._logged_at: float | None = None

    def due(self, clock: IReactorTime, **fields: Any) -> None:
        """The condition happened (now, by C{clock}): count it, and log it unless it was logged within the interval."""
        self.count += 1
        now = clock.seconds()
        if self._logged_at is None or now - self._logged_at >= self._interval:
            self._logged_at = now
            self._log.warn(self._message, count=self.count, **fields)
