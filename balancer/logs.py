"""
Logging as C{[logging]} says: C{level}, C{output} (stdout, stderr or a file)
and C{format} (text or json), as the application's C{twisted.logger}
observer, which twistd uses instead of its own.

 - C{level} filters every event, Twisted's own included; Twisted's chatter
   about factories, protocols and ports starting and stopping (a ping
   health check's connection logs two such lines) is debug.
 - C{format = "json"} writes one JSON object per line (L{json_line}).
 - A file named by C{output} is reopened on SIGUSR1, after logrotate moved it.
 - The access log (L{ACCESS_NAMESPACE}, L{balancer.accesslog}) goes with
   the rest, or, with C{access_output}, to stdout, stderr or a file of its
   own (reopened on SIGUSR1 too), in the same C{format} and C{level}.
   Each destination is a L{TurnBuffer}: the access log adds its rendered
   lines there, written together at the end of the reactor's turn; the
   main log's lines are written at once, after the lines held.
 - When C{output} is stdout or stderr and twistd writes to a file (its
   C{--logfile}, or C{twistd.log} as a daemon, whose stdout is
   C{/dev/null}), the log goes to twistd's file, rotated on SIGUSR1 the
   way twistd rotates it.  With C{--syslog} or C{--logger}, twistd's own
   observer stands, and takes the access log too (C{access_output} is then
   not used).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from datetime import datetime, timezone
from types import FrameType
from typing import Any, Callable, Mapping

import attrs
from twisted.application.service import Service
from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

from balancer.config.schema import LoggingConfig
from balancer.turnbuffer import LogStream, TurnBuffer

log = Logger()

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
}

def writes(config: LoggingConfig, level: LogLevel) -> bool:
    """Whether events of C{level} are written at C{config}'s C{level}."""
    return level >= _LEVELS[config.level]


#: What Twisted's factories log when they start and stop (at info); debug here.
_CHATTER_FORMATS = frozenset({"Starting factory {factory!r}", "Stopping factory {factory!r}"})

#: What Twisted's ports and datagram protocols log through the legacy log
#: (at info) when they start and stop; debug here.
_CHATTER_TEXT = re.compile(r"\(\w+ Port \S+ Closed\)|\(Port \S+ Closed\)|.+ starting on \S+|(Starting|Stopping) protocol .+")

#: The namespace of the access log's events.
ACCESS_NAMESPACE = "balancer.access"

#: Keys of an event that L{json_line} does not copy: its own fields, and
#: the duplicates the legacy log adds.
_NOT_FIELDS = frozenset({"message", "time", "system", "format", "isError", "failure", "why", "printed", "logLevel"})


def is_chatter(event: LogEvent) -> bool:
    """Whether C{event} is Twisted's routine start/stop chatter, which is logged at debug."""
    if event.get("log_format") in _CHATTER_FORMATS:
        return True
    text = event.get("log_text")
    return event.get("log_namespace") == "log_legacy" and isinstance(text, str) and bool(_CHATTER_TEXT.fullmatch(text))


@implementer(ILogObserver)
class ChatterAtDebug:
    """
    Passes events on to C{observer}, Twisted's chatter (L{is_chatter}) as
    debug events.

    @param observer: the observer that filters and writes.
    """

    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: LogEvent) -> None:
        if is_chatter(event) and event.get("log_level") != LogLevel.debug:
            event = {**event, "log_level": LogLevel.debug}
        self._observer(event)


def json_line(event: LogEvent) -> str:
    """
    One line of JSON for C{event} (what C{jq}, Loki or Elasticsearch read,
    unlike the record-separated form of Twisted's C{jsonFileLogObserver}): C{time} (ISO 8601, UTC), C{level},
    C{namespace}, C{system} when there is one, C{message} (the rendered
    text), C{traceback} for a logged failure, then every field of the event
    that JSON can hold (a field that it cannot hold is left out).
    """
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time", 0), timezone.utc).isoformat(),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", "-"),
    }
    if "log_system" in event:
        record["system"] = str(event["log_system"])
    record["message"] = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in _NOT_FIELDS or key in record:
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        record[key] = value
    return json.dumps(record) + "\n"


@implementer(ILogObserver)
class AccessApart:
    """Passes access log events (L{ACCESS_NAMESPACE}) to C{access}, every other event to C{main}."""

    def __init__(self, main: ILogObserver, access: ILogObserver) -> None:
        self._main = main
        self._access = access

    def __call__(self, event: LogEvent) -> None:
        if event.get("log_namespace") == ACCESS_NAMESPACE:
            self._access(event)
        else:
            self._main(event)


@implementer(ILogObserver)
class LineObserver:
    """
    Writes each event as C{render} makes it to C{stream}, flushed at once
    (an event C{render} makes nothing of is skipped), as Twisted's
    C{FileLogObserver} does, for any L{LogStream}.

    @param render: L{json_line}, or C{formatEventAsClassicLogText} for text.
    """

    def __init__(self, stream: LogStream, render: Callable[[LogEvent], str | None]) -> None:
        self._stream = stream
        self._render = render

    def __call__(self, event: LogEvent) -> None:
        text = self._render(event)
        if text:
            self._stream.write(text)
            self._stream.flush()


class ReopeningFile:
    """
    A log file opened for appending when first written to, and again after
    L{reopen}: logrotate renames the file and sends SIGUSR1, and the next
    line goes to a new file at the same path.

    Each L{write} is one C{write} system call on a descriptor opened with
    C{O_APPEND} (nothing is kept in a buffer of this process: a write that
    fails leaves nothing behind to be written again later, and writes of
    whole lines by several processes do not interleave).

    @param path: the file's path.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def write(self, text: str) -> None:
        """Append C{text} (UTF-8), opening the file first if it is not open."""
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
        data = memoryview(text.encode("utf-8"))
        while data:
            data = data[os.write(self._fd, data):]

    def flush(self) -> None:
        """Nothing to do: every write went to the file."""

    def reopen(self) -> None:
        """Close the file; the next write opens the file at C{path} anew."""
        self.close()
        log.info("log file {path} reopened", path=self.path)

    def close(self) -> None:
        """Close the file, if it is open."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class PathFollowingFile(ReopeningFile):
    """
    A L{ReopeningFile} that reopens by itself when its path no longer names
    the file it has open (logrotate renamed it), checked before each write:
    for a worker process, which gets no SIGUSR1 (worker 0 does) and writes
    the lines of a reactor turn in one write.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._identity: tuple[int, int] | None = None

    def write(self, text: str) -> None:
        """Append C{text} to the file at C{path} now, reopening it first if it is another file."""
        if self._identity is not None:
            try:
                now = os.stat(self.path)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != self._identity:
                self.close()
        super().write(text)
        if self._identity is None and self._fd is not None:
            opened = os.fstat(self._fd)
            self._identity = (opened.st_dev, opened.st_ino)

    def close(self) -> None:
        """Close the file, if it is open."""
        super().close()
        self._identity = None


class OnSignal(Service):
    """
    Runs C{action} in the reactor thread whenever the process gets
    C{signum}, while the service runs; the handler found at start is put
    back at stop.
    """

    def __init__(self, signum: int, action: Callable[[], None], reactor: Any) -> None:
        self._signum = signum
        self._action = action
        self._reactor = reactor
        self._previous: Any = None
        self._installed = False

    def privilegedStartService(self) -> None:
        """Install the handler as early as twistd lets a service act (SIGUSR1's default action ends the process)."""
        super().privilegedStartService()
        self._install()

    def startService(self) -> None:
        """Install the handler, if L{privilegedStartService} did not."""
        super().startService()
        self._install()

    def _install(self) -> None:
        if self._installed:
            return
        self._previous = signal.getsignal(self._signum)
        signal.signal(self._signum, self._received)
        self._installed = True

    def stopService(self) -> None:
        """Put the previous handler back."""
        super().stopService()
        if self._installed:
            signal.signal(self._signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False

    def _received(self, signum: int, frame: FrameType | None) -> None:
        self._reactor.callFromThread(self._action)


@attrs.frozen
class TwistdLogging:
    """
    What twistd's own options say about logging.

    @ivar logfile: C{--logfile} (C{None} when not given, C{"-"} for stdout).
    @ivar daemon: twistd runs without C{-n} (its default log is C{twistd.log}).
    @ivar own_observer: C{--syslog} or C{--logger} chose twistd's observer.
    """

    logfile: str | None = None
    daemon: bool = False
    own_observer: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TwistdLogging:
        """From twistd's parsed options (C{ServerOptions})."""
        return cls(
            logfile=options.get("logfile") or None,
            daemon=not options.get("nodaemon", True),
            own_observer=bool(options.get("syslog") or options.get("logger")),
        )

    def file(self) -> str | None:
        """The file twistd would log to: C{--logfile}, or C{twistd.log} for a daemon; C{None} for stdout."""
        if self.logfile == "-":
            return None
        if self.logfile:
            return self.logfile
        return "twistd.log" if self.daemon else None


@attrs.frozen
class ApplicationLog:
    """
    The application's log: the observer twistd uses, what SIGUSR1 does,
    and where the access log writes its lines.

    @ivar observer: C{None} to leave twistd's own observer.
    @ivar on_usr1: what to run on SIGUSR1, or C{None}.
    @ivar access: the access log's destination, which the access log
        writes its lines to itself (L{balancer.accesslog.AccessLines});
        C{None} when it must log events instead (twistd's own observer).
    """

    observer: ILogObserver | None
    on_usr1: Callable[[], None] | None = None
    access: TurnBuffer | None = None


class SecondsText:
    """
    Twisted's C{formatTime} of a time, kept for the second it is in: its
    text has whole seconds, so every event of one second gets the same
    text, and formatting it again per event (a C{datetime} and its
    C{strftime}, about a quarter of an access log line's cost) is saved.
    """

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = ""

    def __call__(self, when: float | None) -> str:
        """The text of C{when} (C{"-"} when there is none), as Twisted's C{formatTime} gives it."""
        if when is None:
            return formatTime(when)
        second = int(when // 1)
        if second != self._second:
            self._text = formatTime(second)
            self._second = second
        return self._text


def classic_text(times: SecondsText) -> Callable[[LogEvent], str | None]:
    """Twisted's classic log text of an event, its time formatted by C{times}."""

    def render(event: LogEvent) -> str | None:
        return formatEventAsClassicLogText(event, formatTime=times)

    return render


def log_observer(config: LoggingConfig, stream: LogStream) -> ILogObserver:
    """An observer writing events at C{config.level} or above (Twisted's chatter at debug) to C{stream} in C{config.format}."""
    writer = LineObserver(stream, json_line if config.format == "json" else classic_text(SecondsText()))
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[config.level])
    return ChatterAtDebug(FilteringLogObserver(writer, [predicate]))


def application_log(config: LoggingConfig, twistd: TwistdLogging, reactor: Any = None) -> ApplicationLog:
    """
    The observer and SIGUSR1 action for C{[logging]} under twistd's options
    (see the module's docstring for which wins), the access log apart when
    C{access_output} says so.  Opens twistd's log file when it is the
    destination (as twistd itself would, before it daemonises).

    Every destination is a L{TurnBuffer} on C{reactor} (the global reactor
    when not given): the main log writes its lines through it at once, the
    access log adds its lines to it (L{ApplicationLog.access}).
    """
    if reactor is None:
        from twisted.internet import reactor
    main = _main_log(config, twistd, reactor)
    if config.access_output in ("", config.output) or main.observer is None:
        return main
    access, reopen = _destination(config.access_output, reactor)
    observer = AccessApart(main.observer, log_observer(config, access))
    if reopen is None:
        return ApplicationLog(observer, main.on_usr1, access)
    return ApplicationLog(observer, reopen if main.on_usr1 is None else _both(main.on_usr1, reopen), access)


def _destination(output: str, reactor: Any) -> tuple[TurnBuffer, Callable[[], None] | None]:
    """
    A L{TurnBuffer} on stdout, stderr or the file at the path C{output},
    and what reopens that file on SIGUSR1 (C{None} for a standard stream).
    """
    if output in ("stdout", "stderr"):
        return TurnBuffer(sys.stdout if output == "stdout" else sys.stderr, reactor, output), None
    file = ReopeningFile(output)
    buffer = TurnBuffer(file, reactor, file.path)
    return buffer, buffer.before(file.reopen)


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def both() -> None:
        first()
        second()

    return both


def _main_log(config: LoggingConfig, twistd: TwistdLogging, reactor: Any) -> ApplicationLog:
    """The observer and SIGUSR1 action of the main log, the access log's lines going there too."""
    if config.output in ("stdout", "stderr"):
        if twistd.own_observer:
            return ApplicationLog(None)
        twistd_file = twistd.file()
        if twistd_file is not None:
            # twistd builds its own observer (and its SIGUSR1 rotation) only when
            # the application gives none, and offers no public way to wrap it in
            # a level filter: so the same LogFile and rotation, filtered.
            logfile = LogFile.fromFullPath(twistd_file)
            buffer = TurnBuffer(logfile, reactor, twistd_file)
            return ApplicationLog(log_observer(config, buffer), buffer.before(logfile.rotate), buffer)
    buffer, reopen = _destination(config.output, reactor)
    return ApplicationLog(log_observer(config, buffer), reopen, buffer)
