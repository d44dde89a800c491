"""Waiting, with a bound, for a condition that the reactor brings about."""

from __future__ import annotations

from typing import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

#: How long L{until} waits unless told otherwise, in seconds of its clock.
DEFAULT_TIMEOUT = 30.0


def until(
    condition: Callable[[], bool],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "the condition",
    *,
    each: Callable[[], None] | None = None,
    step: float = 0.0,
    clock: IReactorTime | None = None,
) -> Deferred[None]:
    """
    Fires once C{condition()} holds, checked (after calling C{each}) every
    C{step} seconds, by default every reactor turn.

    @param timeout: after this many seconds of C{clock}, fail with an
        L{AssertionError} naming C{what} instead of waiting for ever.
    @param clock: the clock to poll and time out on; the global reactor
        unless given.
    @return: a Deferred that fires with None once C{condition()} holds, or
        fails with what C{each} or C{condition} raises, or on the timeout.
    """
    time: IReactorTime = clock if clock is not None else reactor
    done: Deferred[None] = Deferred()

    def check() -> None:
        if each is not None:
            each()
        if condition():
            finish()
            done.callback(None)

    def expire() -> None:
        finish()
        done.errback(AssertionError(f"not within {timeout} s: {what}"))

    def finish() -> None:
        if loop.running:
            loop.stop()
        if deadline.active():
            deadline.cancel()

    def broken(failure: Failure) -> None:
        finish()
        done.errback(failure)

    loop = LoopingCall(check)
    loop.clock = time
    deadline = time.callLater(timeout, expire)
    loop.start(step).addErrback(broken)
    return done
