"""The test kit's waits (L{tests.support.waiting}) on a L{Clock}: they end, one way or the other."""

from __future__ import annotations

from twisted.internet.defer import succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.support.waiting import polled, until


class UntilTests(SynchronousTestCase):
    """until(): fires once the condition holds, fails naming what it awaited once the time is up."""

    def test_firesOnceTheConditionHolds(self) -> None:
        clock, state = Clock(), {"done": False}
        waiting = until(lambda: state["done"], 5, "done", step=1, clock=clock)
        clock.advance(1)
        self.assertNoResult(waiting)
        state["done"] = True
        clock.advance(1)
        self.assertIsNone(self.successResultOf(waiting))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_failsNamingWhatAfterTheTimeout(self) -> None:
        clock = Clock()
        waiting = until(lambda: False, 3, "the backend marked down", step=1, clock=clock)
        clock.advance(2)
        self.assertNoResult(waiting)
        clock.advance(1)
        failure = self.failureResultOf(waiting, AssertionError)
        self.assertEqual(str(failure.value), "not within 3 s: the backend marked down")
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_eachIsCalledBeforeEveryCheckAndItsErrorFails(self) -> None:
        clock, calls = Clock(), []

        def each() -> None:
            calls.append(clock.seconds())
            if len(calls) == 2:
                raise ValueError("sample out of bounds")

        waiting = until(lambda: False, 10, each=each, step=1, clock=clock)
        clock.advance(1)
        self.failureResultOf(waiting, ValueError)
        self.assertEqual(calls, [0, 1])
        self.assertEqual(clock.getDelayedCalls(), [])


class PolledTests(SynchronousTestCase):
    """polled(): fetches again until the value will do, and fails with the last value once the time is up."""

    def test_firesWithTheFirstValueThatWillDo(self) -> None:
        clock, values = Clock(), iter([1, 2, 3])
        waiting = polled(lambda: succeed(next(values)), lambda value: value == 3, 10, step=1, clock=clock)
        clock.advance(1)
        self.assertNoResult(waiting)
        clock.advance(1)
        self.assertEqual(self.successResultOf(waiting), 3)

    def test_failsWithTheLastValueAfterTheTimeout(self) -> None:
        clock = Clock()
        waiting = polled(lambda: succeed(0), lambda value: value == 1, 2, "one", step=1, clock=clock)
        clock.advance(1)
        clock.advance(1)
        failure = self.failureResultOf(waiting, AssertionError)
        self.assertEqual(str(failure.value), "not within 2 s: one (last: 0)")
