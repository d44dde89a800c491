"""
Password checks off the reactor, a few at a time: L{CheckQueue} runs at most
C{concurrency} checks at once and keeps a short queue behind them; past it a
check is refused at once (L{Busy}) instead of waiting behind a flood.

A queued check whose L{Deferred} is cancelled (its client went away) leaves
the queue and never runs.  A running one cannot be stopped (it is in a
thread); its result is dropped.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

#: Runs a blocking function and fires with its result (a thread pool in production).
RunBlocking = Callable[..., "Deferred[Any]"]

#: Checks that may wait behind each running one: the queue holds C{QUEUE_PER_CHECK * concurrency}.
QUEUE_PER_CHECK = 4

#: The C{Retry-After} of a refusal, in seconds: about the time a queue drains.
BUSY_RETRY_AFTER = 1


class Busy(Exception):
    """Every check slot is taken and the queue is full: try again after C{retry_after} seconds."""

    def __init__(self, retry_after: int = BUSY_RETRY_AFTER) -> None:
        super().__init__(f"password checks are busy: retry after {retry_after}s")
        self.retry_after = retry_after


@attrs.define(eq=False)
class _Check:
    """One check: what to run, and the L{Deferred} its caller holds."""

    function: Callable[..., Any]
    args: tuple[Any, ...]
    result: Deferred[Any] = attrs.field(init=False)


class CheckQueue:
    """
    Runs blocking checks through C{run_blocking}, at most C{concurrency} at
    once, with at most C{queue} more waiting.

    @ivar dropped: how many queued checks were cancelled before they ran.
    """

    def __init__(self, run_blocking: RunBlocking, concurrency: int, queue: int | None = None) -> None:
        """
        @param run_blocking: runs one check (off the reactor thread in production).
        @param concurrency: checks running at once, at least 1.
        @param queue: checks waiting at most; C{QUEUE_PER_CHECK * concurrency} by default.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self._run_blocking = run_blocking
        self._concurrency = concurrency
        self._queue = QUEUE_PER_CHECK * concurrency if queue is None else queue
        self._waiting: deque[_Check] = deque()
        self.running = 0
        self.dropped = 0

    @property
    def waiting(self) -> int:
        """How many checks wait for a slot."""
        return len(self._waiting)

    def submit(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        Run C{function(*args)} when a slot is free.

        @return: fires with its result; fails with L{Busy} at once when the
            queue is full.  Cancelling it while queued drops the check.
        """
        if self.running >= self._concurrency and len(self._waiting) >= self._queue:
            return fail(Busy())
        check = _Check(function, args)
        check.result = Deferred(lambda _: self._cancel(check))
        if self.running < self._concurrency:
            self._start(check)
        else:
            self._waiting.append(check)
        return check.result

    def _cancel(self, check: _Check) -> None:
        """A caller gave up: a queued check leaves the queue; a running one's result will be dropped."""
        if check in self._waiting:
            self._waiting.remove(check)
            self.dropped += 1

    def _start(self, check: _Check) -> None:
        self.running += 1
        self._run_blocking(check.function, *check.args).addBoth(self._finished, check)

    def _finished(self, result: Any, check: _Check) -> None:
        self.running -= 1
        if not check.result.called:
            if isinstance(result, Failure):
                check.result.errback(result)
            else:
                check.result.callback(result)
        while self._waiting and self.running < self._concurrency:
            self._start(self._waiting.popleft())
