"""
Coarse deadlines (L{balancer.proxy.engine.deadlines}) on a L{Clock}: never early,
late by at most one slot, one reactor call for the earliest slot.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import FailTest, SynchronousTestCase

from balancer.proxy.engine.deadlines import RESOLUTION, Deadlines

#: Most reactor calls one L{BoundedClock.advance} runs before the test fails instead of hanging.
MAX_CALLS = 1000


class BoundedClock(Clock):
    """
    A L{Clock} whose C{advance} fails after L{MAX_CALLS} calls: a deadline
    that keeps rescheduling itself for the same instant fails the test
    instead of looping forever.
    """

    def advance(self, amount: float) -> None:
        self.rightNow += amount
        self._sortCalls()
        ran = 0
        while self.calls and self.calls[0].getTime() <= self.seconds():
            ran += 1
            if ran > MAX_CALLS:
                raise FailTest(f"{ran} reactor calls at {self.seconds()!r}: rescheduled forever")
            call = self.calls.pop(0)
            call.called = 1
            call.func(*call.args, **call.kw)
            self._sortCalls()


class Owner:
    """Records the clock's time each time its deadline passes; may add a new deadline then."""

    def __init__(self, clock: Clock, again: list[float] | None = None, deadlines: Deadlines | None = None) -> None:
        self.clock = clock
        self.fired: list[float] = []
        self.again = again or []
        self.deadlines = deadlines

    def deadline_passed(self) -> None:
        self.fired.append(self.clock.seconds())
        if self.again:
            assert self.deadlines is not None
            self.deadlines.add(self.again.pop(0), self)


def active_calls(clock: Clock) -> list[float]:
    """The times of C{clock}'s pending calls."""
    return [call.getTime() for call in clock.getDelayedCalls() if call.active()]


class DeadlinesTests(SynchronousTestCase):
    """L{Deadlines} on a clock."""

    def setUp(self) -> None:
        self.clock = BoundedClock()
        # Not on a slot's edge: the times below fall inside slots.
        self.clock.advance(0.0137)
        self.deadlines = Deadlines(self.clock)

    def active_calls(self) -> list[float]:
        """The times of the clock's pending calls."""
        return active_calls(self.clock)

    def test_neverEarlyAndLateByAtMostOneSlot(self) -> None:
        """Stepping the clock finely, each deadline fires once, at or after its time and within a slot of it."""
        step = 0.003
        for delay in (0.0, 0.001, 0.01, RESOLUTION - 0.001, RESOLUTION, 0.3, 1.234):
            deadlines = Deadlines(self.clock)
            owner = Owner(self.clock)
            start = self.clock.seconds()
            deadlines.add(delay, owner)
            while not owner.fired:
                self.assertLess(self.clock.seconds(), start + delay + 2 * RESOLUTION, f"delay {delay}: never fired")
                self.clock.advance(step)
            (fired,) = owner.fired
            self.assertGreaterEqual(fired, start + delay, f"delay {delay}: early")
            self.assertLessEqual(fired, start + delay + RESOLUTION + step, f"delay {delay}: late")
            self.clock.advance(1.0)
            self.assertEqual(len(owner.fired), 1, f"delay {delay}: fired again")
            self.assertEqual(len(deadlines), 0)

    def test_firesWhenTheClockLandsExactlyOnItsCall(self) -> None:
        """
        The clock advanced exactly to the time of the reactor call runs the
        slot's owners, whatever rounding C{slot * resolution} suffers
        (slot 43 of 0.05 s: C{43 * 0.05 / 0.05 < 43}).
        """
        clock = BoundedClock()
        deadlines = Deadlines(clock)
        owner = Owner(clock)
        deadlines.add(2.1, owner)
        (when,) = active_calls(clock)
        clock.advance(when)
        self.assertEqual(owner.fired, [when])

    def test_removedDeadlineNeverFires(self) -> None:
        kept, removed, alone = Owner(self.clock), Owner(self.clock), Owner(self.clock)
        self.deadlines.add(0.1, kept)
        self.deadlines.remove(self.deadlines.add(0.1, removed), removed)
        self.deadlines.remove(self.deadlines.add(0.5, alone), alone)
        self.assertEqual(len(self.deadlines), 1)
        self.clock.advance(1.0)
        self.assertEqual((len(kept.fired), removed.fired, alone.fired), (1, [], []))
        self.assertEqual(len(self.deadlines), 0)

    def test_removingTwiceOrAfterItPassedCountsOnce(self) -> None:
        """L{Deadlines.remove} of a deadline already removed or passed leaves the count alone."""
        first, second = Owner(self.clock), Owner(self.clock)
        slot = self.deadlines.add(0.1, first)
        self.deadlines.add(0.2, second)
        self.deadlines.remove(slot, first)
        self.deadlines.remove(slot, first)
        self.assertEqual(len(self.deadlines), 1)
        self.clock.advance(0.5)
        self.assertEqual(len(second.fired), 1)
        self.deadlines.remove(slot, second)
        self.assertEqual(len(self.deadlines), 0)

    def test_severalOwnersInOneSlotAllFire(self) -> None:
        owners = [Owner(self.clock) for _ in range(5)]
        slots = {self.deadlines.add(0.1 + i * 0.001, owner) for i, owner in enumerate(owners)}
        self.assertEqual(len(slots), 1)
        self.assertEqual(len(self.active_calls()), 1)
        self.assertEqual(len(self.deadlines), 5)
        self.clock.advance(0.5)
        self.assertEqual([len(owner.fired) for owner in owners], [1] * 5)
        self.assertEqual(len({owner.fired[0] for owner in owners}), 1)
        self.assertEqual(len(self.deadlines), 0)

    def test_laterAddedEarlierDeadlineReschedules(self) -> None:
        """One reactor call, for the earliest slot: an earlier deadline moves it, a later one does not."""
        late, early = Owner(self.clock), Owner(self.clock)
        start = self.clock.seconds()
        self.deadlines.add(1.0, late)
        (first,) = self.clock.getDelayedCalls()
        self.assertGreaterEqual(first.getTime(), start + 1.0)
        self.deadlines.add(2.0, Owner(self.clock))
        self.assertEqual(self.clock.getDelayedCalls(), [first])
        self.deadlines.add(0.1, early)
        self.assertFalse(first.active())
        (second,) = self.clock.getDelayedCalls()
        self.assertGreaterEqual(second.getTime(), start + 0.1)
        self.assertLessEqual(second.getTime(), start + 0.1 + RESOLUTION)
        self.clock.advance(0.2)
        self.assertEqual((len(early.fired), late.fired), (1, []))
        (third,) = self.clock.getDelayedCalls()
        self.assertGreaterEqual(third.getTime(), start + 1.0)
        self.assertLessEqual(third.getTime(), start + 1.0 + RESOLUTION)
        self.clock.advance(1.0)
        self.assertEqual(len(late.fired), 1)

    def test_lenCountsPending(self) -> None:
        owners = [Owner(self.clock) for _ in range(3)]
        self.assertEqual(len(self.deadlines), 0)
        slots = [self.deadlines.add(0.1 * (i + 1), owner) for i, owner in enumerate(owners)]
        self.assertEqual(len(self.deadlines), 3)
        self.deadlines.remove(slots[2], owners[2])
        self.assertEqual(len(self.deadlines), 2)
        self.clock.advance(0.15)
        self.assertEqual(len(self.deadlines), 1)
        self.clock.advance(1.0)
        self.assertEqual(len(self.deadlines), 0)

    def test_stopIfIdleCancelsTheCallOnlyWithNothingPending(self) -> None:
        first, second = Owner(self.clock), Owner(self.clock)
        slot = self.deadlines.add(0.1, first)
        self.deadlines.add(0.3, second)
        self.deadlines.stop_if_idle()
        self.assertEqual(len(self.active_calls()), 1)
        self.deadlines.remove(slot, first)
        self.deadlines.stop_if_idle()
        self.assertEqual(len(self.active_calls()), 1, "a deadline is pending: the call stays")
        self.clock.advance(0.5)
        self.assertEqual((first.fired, len(second.fired)), ([], 1))

        later = Owner(self.clock)
        self.deadlines.remove(self.deadlines.add(0.2, later), later)
        self.assertEqual(len(self.active_calls()), 1, "removing leaves the call in place")
        self.deadlines.stop_if_idle()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1.0)
        self.assertEqual(later.fired, [])

    def test_addAfterStopIfIdleSchedulesAgain(self) -> None:
        """The slots forgotten by L{Deadlines.stop_if_idle} do not keep a new deadline from being scheduled."""
        gone, owner = Owner(self.clock), Owner(self.clock)
        self.deadlines.remove(self.deadlines.add(0.1, gone), gone)
        self.deadlines.stop_if_idle()
        self.deadlines.stop_if_idle()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.deadlines.add(0.1, owner)
        self.assertEqual(len(self.active_calls()), 1)
        self.clock.advance(0.5)
        self.assertEqual((gone.fired, len(owner.fired)), ([], 1))

    def test_ownerAddingADeadlineWhenItsPasses(self) -> None:
        """A deadline added from C{deadline_passed} is scheduled and fires in its turn, not early."""
        owner = Owner(self.clock, again=[0.2, 0.0, 0.5], deadlines=self.deadlines)
        start = self.clock.seconds()
        self.deadlines.add(0.1, owner)
        for _ in range(200):
            if len(owner.fired) == 4:
                break
            self.assertLessEqual(len(self.active_calls()), 1)
            self.clock.advance(0.01)
        self.assertEqual(len(owner.fired), 4)
        previous = start
        for fired, delay in zip(owner.fired, (0.1, 0.2, 0.0, 0.5)):
            self.assertGreaterEqual(fired, previous + delay)
            self.assertLessEqual(fired, previous + delay + RESOLUTION + 0.01)
            previous = fired
        self.assertEqual(len(self.deadlines), 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
