"""Tests for L{balancer.proxy.udp_idle}: one timer for the idle timeouts of many sessions."""

from __future__ import annotations

from twisted.internet import task
from twisted.trial.unittest import SynchronousTestCase

from balancer.proxy.udp_idle import IdleQueue


class IdleQueueTests(SynchronousTestCase):
    """Members end after their timeout without activity, in order, with one delayed call in all."""

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.ended: list[str] = []
        self.queue: IdleQueue[str] = IdleQueue(self.clock, 5.0, self.ended.append)

    def test_memberEndsAfterItsTimeout(self) -> None:
        self.queue.add("a")
        self.clock.advance(4.9)
        self.assertEqual(self.ended, [])
        self.clock.advance(0.1)
        self.assertEqual((self.ended, len(self.queue)), (["a"], 0))

    def test_touchPostponesTheEnd(self) -> None:
        self.queue.add("a")
        self.clock.advance(4.0)
        self.queue.touch("a")
        self.clock.advance(4.9)
        self.assertEqual(self.ended, [])
        self.clock.advance(0.1)
        self.assertEqual(self.ended, ["a"])

    def test_eachMemberAtItsOwnDeadline(self) -> None:
        self.queue.add("a")
        self.clock.advance(1.0)
        self.queue.add("b")
        self.clock.advance(1.0)
        self.queue.add("c")
        self.queue.touch("a")
        self.clock.advance(3.9)
        self.assertEqual(self.ended, [])
        self.clock.advance(0.1)
        self.assertEqual(self.ended, ["b"])
        self.clock.advance(1.0)
        self.assertEqual(self.ended, ["b", "c", "a"])

    def test_oneDelayedCallForManyMembers(self) -> None:
        for i in range(100):
            self.queue.add(str(i))
            self.clock.advance(0.01)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(5.0)
        self.assertEqual(self.ended, [str(i) for i in range(100)])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_removedMemberDoesNotEnd(self) -> None:
        self.queue.add("a")
        self.queue.add("b")
        self.queue.remove("a")
        self.queue.remove("never added")
        self.clock.advance(5.0)
        self.assertEqual(self.ended, ["b"])

    def test_lastOneOutCancelsTheTimer(self) -> None:
        self.queue.add("a")
        self.queue.remove("a")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.queue.add("b")
        self.clock.advance(5.0)
        self.assertEqual(self.ended, ["b"])

    def test_memberAddedWhileEndingOthersStillEndsOnTime(self) -> None:
        """An C{on_idle} that adds a member (a session's end making room for another) keeps every deadline."""
        added: list[str] = []

        def end(member: str) -> None:
            self.ended.append(member)
            if not added:
                added.append("new")
                self.queue.add("new")

        queue: IdleQueue[str] = IdleQueue(self.clock, 5.0, end)
        self.queue = queue
        queue.add("a")
        self.clock.advance(1.0)
        queue.add("b")
        self.clock.advance(4.0)
        self.assertEqual(self.ended, ["a"])
        self.clock.advance(1.0)
        self.assertEqual(self.ended, ["a", "b"])
        self.clock.advance(4.0)
        self.assertEqual(self.ended, ["a", "b", "new"])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_addAtAGivenTime(self) -> None:
        """A caller that just read the clock passes its time on, not read again."""
        self.clock.advance(10.0)
        self.queue.add("a", self.clock.seconds())
        self.clock.advance(4.9)
        self.assertEqual(self.ended, [])
        self.clock.advance(0.1)
        self.assertEqual(self.ended, ["a"])
