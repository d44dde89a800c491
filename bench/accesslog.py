"""
What one access-log line costs the balancer's CPU, the access log's chain
alone: a finished connection published to the access log, rendered as text
or JSON and written to a file,

 - by its own writer (L{balancer.accesslog.AccessLines}: the line rendered
   at once and added to the destination's L{balancer.turnbuffer.TurnBuffer},
   written with one system call per reactor turn), with one connection and
   with 16 connections ending per turn;
 - as a log event through the main log's observer (L{AccessLog}: the path
   under twistd's own observer, and the only one before the writer);

and, with nobody subscribed, the record alone.  The cost in a running
balancer (with twistd's log publisher in the event path) is measured by
C{bench/conn_cost.py --access-log text|json}.  Run by hand from the
repository:

    python bench/accesslog.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.testing import MemoryReactorClock  # noqa: E402
from twisted.logger import Logger, LogPublisher  # noqa: E402

from balancer.accesslog import AccessLog, start_access_log  # noqa: E402
from balancer.config.schema import LoggingConfig  # noqa: E402
from balancer.logs import ReopeningFile, log_observer  # noqa: E402
from balancer.proxy.finished import BACKEND_CLOSED, FinishedConnection, FinishedConnections  # noqa: E402
from balancer.turnbuffer import TurnBuffer  # noqa: E402


def record() -> FinishedConnection:
    """A typical finished connection."""
    return FinishedConnection("web", "tcp", "127.0.0.1:51234", "127.0.0.1:8001", 1.7e9, 0.0004, 0.0021, 64, 64,
                              BACKEND_CLOSED)


def writer(directory: str, format: str, per_turn: int, count: int) -> float:
    """Seconds per line of the access log's own writer, C{per_turn} lines a reactor turn."""
    output = ReopeningFile(os.path.join(directory, f"lines-{format}-{per_turn}.log"))
    reactor = MemoryReactorClock()
    finished = FinishedConnections()
    config = LoggingConfig(format=format)
    start_access_log(config, finished, TurnBuffer(output, reactor, output.path))

    def turn() -> None:
        for _ in range(per_turn):
            finished.publish(record())
        reactor.advance(0)

    seconds = timeit.timeit(turn, number=count // per_turn)
    output.close()
    return seconds / (count // per_turn * per_turn)


def events(directory: str, format: str, count: int) -> float:
    """Seconds per line as a log event through the main log's observer, written and flushed each."""
    output = ReopeningFile(os.path.join(directory, f"events-{format}.log"))
    publisher = LogPublisher(log_observer(LoggingConfig(format=format), output))
    finished = FinishedConnections()
    finished.subscribe(AccessLog(Logger(namespace="balancer.access", observer=publisher)))
    seconds = timeit.timeit(lambda: finished.publish(record()), number=count)
    output.close()
    return seconds / count


def main(count: int = 20000) -> None:
    with tempfile.TemporaryDirectory() as directory:
        for format in ("text", "json"):
            one = writer(directory, format, 1, count)
            sixteen = writer(directory, format, 16, count)
            event = events(directory, format, count)
            print(f"{format}: own writer {one * 1e6:.1f} µs a line (one a turn), {sixteen * 1e6:.1f} µs (16 a turn);"
                  f" as log events {event * 1e6:.1f} µs (record, rendering, write)")
    alone = FinishedConnections()
    seconds = timeit.timeit(lambda: alone.publish(record()), number=count * 5)
    print(f"no subscriber: {seconds / (count * 5) * 1e6:.2f} µs a connection (the record built and published)")


if __name__ == "__main__":
    main()
