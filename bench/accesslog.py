"""
What one access-log line costs the balancer's CPU: a finished connection
published to the access log, rendered as text or JSON and written to a file,
and, with nobody subscribed, the record alone.  Run by hand from the
repository:

    python bench/accesslog.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import timeit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.logger import Logger, LogPublisher  # noqa: E402

from balancer.accesslog import AccessLog  # noqa: E402
from balancer.config.schema import LoggingConfig  # noqa: E402
from balancer.logs import ReopeningFile, log_observer  # noqa: E402
from balancer.proxy.finished import BACKEND_CLOSED, FinishedConnection, FinishedConnections  # noqa: E402


def record() -> FinishedConnection:
    """A typical finished connection."""
    return FinishedConnection("web", "tcp", "127.0.0.1:51234", "127.0.0.1:8001", 1.7e9, 0.0004, 0.0021, 64, 64,
                              BACKEND_CLOSED)


def main(count: int = 20000) -> None:
    with tempfile.TemporaryDirectory() as directory:
        for format in ("text", "json"):
            output = ReopeningFile(os.path.join(directory, f"access-{format}.log"))
            publisher = LogPublisher(log_observer(LoggingConfig(format=format), output))
            finished = FinishedConnections()
            finished.subscribe(AccessLog(Logger(namespace="balancer.access", observer=publisher)))
            seconds = timeit.timeit(lambda: finished.publish(record()), number=count)
            print(f"{format}: {seconds / count * 1e6:.1f} µs a line (record, rendering, write)")
            output.close()
    alone = FinishedConnections()
    seconds = timeit.timeit(lambda: alone.publish(record()), number=count * 5)
    print(f"no subscriber: {seconds / (count * 5) * 1e6:.2f} µs a connection (the record built and published)")


if __name__ == "__main__":
    main()
