"""
The access log (C{[logging] access_log}): one line per finished client
connection, in the spirit of HAProxy's C{tcplog}.

Each L{FinishedConnection} published by the balancer's servers becomes one
line at info in namespace C{balancer.access}, which goes wherever the main
log goes (or to C{access_output}, L{balancer.logs}), in its C{format}, and
only at a C{level} of info or below.  As text the line is C{key=value} pairs::

    server=web client=192.0.2.7:51234 backend=10.0.0.1:80 protocol=tcp connect=0.001s
    duration=2.503s from_client=312 to_client=48211 reason="backend closed"

(one line), with C{-} for a backend never tried and a connect that never
succeeded; as JSON the event's fields are the record's own
(L{FinishedConnection}: C{server}, C{protocol}, C{client}, C{backend},
C{started}, C{connect_seconds}, C{duration_seconds}, C{rx}, C{tx},
C{reason}).

Where the balancer owns the destination (L{balancer.logs.ApplicationLog.access}:
stdout, stderr, a file, twistd's C{--logfile}), L{AccessLines} renders each
record straight to its final line, exactly as Twisted's observers would write
the event (classic text with its C{<time> [balancer.access#info] } prefix, or
L{balancer.logs.json_line}'s JSON), and adds it to the destination's
L{balancer.turnbuffer.TurnBuffer}: the lines of one reactor turn are written
with one system call at its end.  No log event is made.  Under twistd's own
observer (C{--syslog}, C{--logger}) the lines stay log events (L{AccessLog}).
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii as quoted
from typing import Callable

from twisted.logger import Logger, LogLevel

from balancer.config.schema import LoggingConfig
from balancer.logs import ACCESS_NAMESPACE, SecondsText, writes
from balancer.proxy.finished import FinishedConnection, FinishedConnections
from balancer.turnbuffer import TurnBuffer

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


def text_line(system: str = f"{ACCESS_NAMESPACE}#info") -> Callable[[FinishedConnection, float], str]:
    """
    What renders a record logged at a time as the classic text line Twisted
    writes for L{AccessLog}'s event: C{<time> [<system>] <line>}, newlines
    in it followed by a tab.

    @param system: the bracketed part (a worker's events have C{worker N}).
    """
    times = SecondsText()
    prefix = f" [{system}] "

    def render(connection: FinishedConnection, when: float) -> str:
        return times(when) + prefix + access_line(connection).replace("\n", "\n\t") + "\n"

    return render


class IsoSeconds:
    """
    The C{time} of L{balancer.logs.json_line}: C{datetime.fromtimestamp(when,
    timezone.utc).isoformat()}, its whole seconds formatted once per second
    and its microseconds rounded the same way (half to even), without a
    C{datetime} per line.
    """

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = ""

    def __call__(self, when: float) -> str:
        """The ISO 8601 text of C{when} in UTC, microseconds only when there are any."""
        fraction, whole = math.modf(when)
        micro = round(fraction * 1e6)
        second = int(whole)
        if micro >= 1_000_000:
            second += 1
            micro -= 1_000_000
        if second != self._second:
            self._text = datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        return f"{self._text}.{micro:06d}+00:00" if micro else f"{self._text}+00:00"


def json_number(value: float | None) -> str:
    """C{value} as C{json.dumps} writes it."""
    if value is None:
        return "null"
    return repr(value) if math.isfinite(value) else json.dumps(value)


def json_record_line(system: str | None = None) -> Callable[[FinishedConnection, float], str]:
    """
    What renders a record logged at a time as the JSON line
    L{balancer.logs.json_line} writes for L{AccessLog}'s event: the same
    keys in the same order, the same text (C{json.dumps}'s separators and
    ASCII escapes), put together here (C{json.dumps} of a new dictionary
    costs more than half of the line).

    @param system: the C{system} key (a worker's events have C{worker N}), or none.
    """
    times = IsoSeconds()
    head = f', "namespace": "{ACCESS_NAMESPACE}"' + (f', "system": {quoted(system)}' if system is not None else "")

    def render(connection: FinishedConnection, when: float) -> str:
        backend = connection.backend
        return (
            f'{{"time": "{times(when)}", "level": "info"{head}, "message": {quoted(access_line(connection))},'
            f' "server": {quoted(connection.server)}, "protocol": {quoted(connection.protocol)},'
            f' "client": {quoted(connection.client)}, "backend": {"null" if backend is None else quoted(backend)},'
            f' "started": {json_number(connection.started)},'
            f' "connect_seconds": {json_number(connection.connect_seconds)},'
            f' "duration_seconds": {json_number(connection.duration_seconds)},'
            f' "rx": {connection.rx!r}, "tx": {connection.tx!r}, "reason": {quoted(connection.reason)}}}\n'
        )

    return render


class AccessLines:
    """
    Adds each L{FinishedConnection} it is called with to C{destination} as
    its rendered line, timed by C{clock} when it is called (as a log
    event's C{log_time} is).

    @param render: L{text_line}'s or L{json_record_line}'s.
    """

    def __init__(self, destination: TurnBuffer, render: Callable[[FinishedConnection, float], str],
                 clock: Callable[[], float] = time.time) -> None:
        self._add = destination.add
        self._render = render
        self._clock = clock

    def __call__(self, connection: FinishedConnection) -> None:
        """Render C{connection}'s line and add it to the destination."""
        self._add(self._render(connection, self._clock()))


def start_access_log(config: LoggingConfig, finished: FinishedConnections, destination: TurnBuffer | None = None,
                     system: str | None = None) -> Callable[[], None] | None:
    """
    Log every connection C{finished} publishes from now on, if C{config}
    says so (C{access_log}) and its C{level} writes the lines (info): at a
    higher level nothing subscribes, so that no record is built, rendered
    and dropped per connection.

    @param destination: where the lines go (L{AccessLines}, in C{config}'s
        C{format}); without one they are log events (L{AccessLog}).
    @param system: the system the lines name instead of the access log's
        namespace and level (a worker's, C{worker N}, as worker 0 writes its
        events).
    @return: what stops it, or C{None} when it is off.
    """
    if not (config.access_log and writes(config, LogLevel.info)):
        return None
    if destination is None:
        return finished.subscribe(AccessLog())
    if config.format == "json":
        render = json_record_line(system)
    else:
        render = text_line(system) if system is not None else text_line()
    return finished.subscribe(AccessLines(destination, render))
