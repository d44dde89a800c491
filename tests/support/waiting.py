"""Waiting, with a bound, for a condition that the reactor brings about, or for a value fetched again and again."""

from __future__ import annotations

from typing import Callable, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall, deferLater
from twisted.python.failure import Failure

T = TypeVar("T")

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


def polled(
    fetch: Callable[[], Deferred[T]],
    done: Callable[[T], bool],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "the condition",
    *,
    step: float = 0.05,
    clock: IReactorTime | None = None,
) -> Deferred[T]:
    """
    Fires with the first value C{fetch()} fires with for which C{done} holds,
    fetching again C{step} seconds after each value that does not do.

    @param timeout: after this many seconds of C{clock}, fail with an
        L{AssertionError} naming C{what} and the last value fetched.
    @return: a Deferred that fires with that value, or fails with what
        C{fetch} fails with, or on the timeout.
    """
    time: IReactorTime = clock if clock is not None else reactor

    async def poll() -> T:
        deadline = time.seconds() + timeout
        while True:
            value = await fetch()
            if done(value):
                return value
            if time.seconds() >= deadline:
                raise AssertionError(f"not within {timeout} s: {what} (last: {value!r})")
            await deferLater(time, step)

    return Deferred.fromCoroutine(poll())
