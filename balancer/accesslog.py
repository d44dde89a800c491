"""
The access log (C{[logging] access_log}): one line per finished client
connection, in the spirit of HAProxy's C{tcplog}.

Each L{FinishedConnection} published by the balancer's servers becomes one
info event of the logger L{log} (namespace C{balancer.access}), so it goes
wherever the main log goes (or to C{access_output}, L{balancer.logs}),
filtered by its C{level} and written in its C{format}.  As text the line is C{key=value} pairs::

    server=web client=192.0.2.7:51234 backend=10.0.0.1:80 protocol=tcp connect=0.001s
    duration=2.503s from_client=312 to_client=48211 reason="backend closed"

(one line), with C{-} for a backend never tried and a connect that never
succeeded; as JSON the event's fields are the record's own
(L{FinishedConnection}: C{server}, C{protocol}, C{client}, C{backend},
C{started}, C{connect_seconds}, C{duration_seconds}, C{rx}, C{tx},
C{reason}).
"""

from __future__ import annotations

from typing import Callable

from twisted.logger import Logger, LogLevel

from balancer.config.schema import LoggingConfig
from balancer.logs import ACCESS_NAMESPACE, writes
from balancer.proxy.finished import FinishedConnection, FinishedConnections

#: The logger of the access log's events.
log = Logger(namespace=ACCESS_NAMESPACE)


def access_line(connection: FinishedConnection) -> str:
    """The text of C{connection}'s access log line."""
    backend = connection.backend if connection.backend is not None else "-"
    connect = f"{connection.connect_seconds:.3f}s" if connection.connect_seconds is not None else "-"
    return (
        f"server={connection.server} client={connection.client} backend={backend} protocol={connection.protocol}"
        f" connect={connect} duration={connection.duration_seconds:.3f}s from_client={connection.tx}"
        f' to_client={connection.rx} reason="{connection.reason}"'
    )


class AccessLog:
    """
    Writes each L{FinishedConnection} it is called with as an access log
    event of C{logger}.
    """

    def __init__(self, logger: Logger = log) -> None:
        self._log = logger

    def __call__(self, connection: FinishedConnection) -> None:
        """
        Log C{connection}.  The line is rendered here, once, and given as
        the event's format (its braces escaped): Twisted's rendering of a
        format with ten fields would cost more than half of the line.
        """
        self._log.info(
            access_line(connection).replace("{", "{{").replace("}", "}}"),
            server=connection.server,
            protocol=connection.protocol,
            client=connection.client,
            backend=connection.backend,
            started=connection.started,
            connect_seconds=connection.connect_seconds,
            duration_seconds=connection.duration_seconds,
            rx=connection.rx,
            tx=connection.tx,
            reason=connection.reason,
        )


def start_access_log(config: LoggingConfig, finished: FinishedConnections) -> Callable[[], None] | None:
    """
    Log every connection C{finished} publishes from now on, if C{config}
    says so (C{access_log}) and its C{level} writes the lines (info): at a
    higher level nothing subscribes, so that no record is built, rendered
    and dropped per connection.

    @return: what stops it, or C{None} when it is off.
    """
    if not (config.access_log and writes(config, LogLevel.info)):
        return None
    return finished.subscribe(AccessLog())
