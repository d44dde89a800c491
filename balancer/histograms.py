"""
Histograms of finished connections per server: how long connecting to the
backend took and how long each connection lasted, counted from the
balancer's L{FinishedConnections} for the metrics (L{balancer.metrics}).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable, Iterable, Iterator

from balancer.proxy.finished import FinishedConnection, FinishedConnections

#: Upper bounds (seconds) of the connect-time buckets: a local backend connects in well under a millisecond.
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Upper bounds (seconds) of the connection-duration buckets: from a refused connect to hour-long streams.
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class Histogram:
    """
    Observations in fixed buckets, as Prometheus counts them.

    @ivar bounds: the buckets' upper bounds, ascending (a last C{+Inf} is implied).
    @ivar counts: observations per bucket (not cumulative), the last one for C{+Inf}.
    @ivar sum: the total of all observations.
    """

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count C{value} in the first bucket whose bound is at least C{value}."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        """How many observations."""
        return sum(self.counts)

    def cumulative(self) -> Iterator[tuple[str, int]]:
        """Each bucket's C{le} label and how many observations are at most its bound, C{+Inf} last."""
        total = 0
        for bound, count in zip((*map(repr, self.bounds), "+Inf"), self.counts):
            total += count
            yield bound, total


class ConnectionHistograms:
    """
    Per server (C{[servers.NAME]}), the connect time of every finished
    connection that reached a backend, and the duration of every finished
    connection, from accept to its last close.

    @ivar connect: connect-time histograms by server name.
    @ivar duration: duration histograms by server name.
    """

    def __init__(self) -> None:
        self.connect: dict[str, Histogram] = {}
        self.duration: dict[str, Histogram] = {}
        self._unsubscribe: Callable[[], None] | None = None

    def count(self, connection: FinishedConnection) -> None:
        """Count one finished connection."""
        if connection.connect_seconds is not None:
            _histogram(self.connect, connection.server, CONNECT_BUCKETS).observe(connection.connect_seconds)
        _histogram(self.duration, connection.server, DURATION_BUCKETS).observe(connection.duration_seconds)

    def keep_only(self, names: Iterable[str]) -> None:
        """Forget the histograms of servers not in C{names} (removed since)."""
        wanted = set(names)
        for histograms in (self.connect, self.duration):
            for name in [name for name in histograms if name not in wanted]:
                del histograms[name]

    def follow(self, finished: FinishedConnections) -> None:
        """Count every connection C{finished} publishes from now on, until L{unfollow}."""
        self.unfollow()
        self._unsubscribe = finished.subscribe(self.count)

    def unfollow(self) -> None:
        """Stop counting (nothing if not following)."""
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()


def _histogram(histograms: dict[str, Histogram], name: str, bounds: tuple[float, ...]) -> Histogram:
    """Server C{name}'s histogram in C{histograms}, made empty with C{bounds} if it has none yet."""
    histogram = histograms.get(name)
    if histogram is None:
        histogram = histograms[name] = Histogram(bounds)
    return histogram
