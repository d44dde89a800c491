"""
Log lines held until the end of the reactor's turn, then written together.

The access log adds one line per finished connection: written one by one,
each would cost a C{write} system call (and, through Twisted's logging, an
event and its formatting).  A L{TurnBuffer} keeps the lines of one turn
of the reactor and writes them with one call once the turn is over
(C{callLater(0)}, scheduled by the first line of the turn), so that no line
waits longer than the turn that produced it; at the reactor's shutdown and
before a log file is reopened or rotated, what it holds is written first,
and after the shutdown each line is written at once.

The main log writes through the same buffer when it shares the
destination (L{TurnBuffer.write}): its line is written at once, after the
lines held, so the file keeps the order in which lines were made.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

log = Logger()


class LogStream(Protocol):
    """Where lines are written: a text stream, twistd's C{LogFile} or a L{balancer.logs.ReopeningFile}."""

    def write(self, text: str) -> Any:
        """Write C{text}."""

    def flush(self) -> None:
        """Flush what was written."""


class TurnBuffer:
    """
    A L{LogStream} in front of C{stream} whose lines given to L{add} are
    written together at the end of the reactor's turn.

    A write that fails (a full disk, a closed descriptor) drops the lines
    it held, is logged once (not once per turn) and never raises into
    whoever added them: the connection that ended is not the log's
    business.

    @ivar stream: where the lines go.
    @param reactor: the reactor whose turns delimit the batches (C{callLater}
        and C{addSystemEventTrigger}).
    @param name: the destination, for the error message.
    """

    def __init__(self, stream: LogStream, reactor: Any, name: str) -> None:
        self.stream = stream
        self._reactor = reactor
        self._name = name
        self._pending: list[str] = []
        self._call: IDelayedCall | None = None
        self._at_shutdown = False
        self._stopped = False
        self._failing = False

    def add(self, line: str) -> None:
        """
        Hold C{line} (ending with a newline) until the end of this turn; once
        the reactor has shut down (it runs no more turns), write it now.
        """
        self._pending.append(line)
        if self._stopped:
            self._write_held()
        elif self._call is None:
            self._call = self._reactor.callLater(0, self._end_of_turn)
            if not self._at_shutdown:
                self._at_shutdown = True
                self._reactor.addSystemEventTrigger("after", "shutdown", self._shut_down)

    def write(self, text: str) -> None:
        """Write C{text} now, after the lines held (as L{LogStream}: the main log's lines)."""
        if self._pending:
            text = "".join(self._pending) + text
            self._pending = []
        self.stream.write(text)

    def flush(self) -> None:
        """Write the lines held and flush the stream; a failure is logged, not raised."""
        self._cancel()
        if self._pending:
            self._write_held()
            return
        try:
            self.stream.flush()
        except (OSError, ValueError) as e:
            self._failed(e, 0)

    def before(self, action: Callable[[], None]) -> Callable[[], None]:
        """C{action} (reopening or rotating the file), the lines held written first."""

        def flushed_then() -> None:
            self.flush()
            action()

        return flushed_then

    def _shut_down(self) -> None:
        """
        The reactor shut down: write what is held, and from now on each line
        at once (the end of the shutdown can close the last relays, whose
        lines come after this).
        """
        self._stopped = True
        self.flush()

    def _end_of_turn(self) -> None:
        self._call = None
        self._write_held()

    def _cancel(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _write_held(self) -> None:
        lines, self._pending = self._pending, []
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except (OSError, ValueError) as e:
            self._failed(e, len(lines))
            return
        if self._failing:
            self._failing = False
            log.info("log {name}: writing again", name=self._name)

    def _failed(self, error: Exception, lines: int) -> None:
        if self._failing:
            return
        self._failing = True
        log.error("log {name}: writing failed ({error}); {lines} lines dropped, and more until it writes again",
                  name=self._name, error=str(error), lines=lines)
