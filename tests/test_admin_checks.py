"""
L{CheckQueue}: at most C{concurrency} checks at once, a short queue, L{Busy}
past it, and queued checks dropped (never run) when their caller cancels.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, maybeDeferred
from twisted.trial.unittest import SynchronousTestCase

from admin.checks import Busy, CheckQueue
from tests.support.runners import BlockingRunner


def echo(value: Any) -> Any:
    return value


class CheckQueueTests(SynchronousTestCase):

    def test_atMostConcurrencyChecksRunAtOnce(self) -> None:
        runner = BlockingRunner()
        queue = CheckQueue(runner, concurrency=2, queue=10)
        results = [queue.submit(echo, i) for i in range(5)]
        self.assertEqual((runner.running, queue.running, queue.waiting), (2, 2, 3))
        runner.finish()
        self.assertEqual(self.successResultOf(results[0]), 0)
        self.assertEqual((runner.running, queue.waiting), (2, 2), "a freed slot takes the next queued check")
        while runner.started:
            self.assertLessEqual(runner.running, 2)
            runner.finish()
        self.assertEqual([self.successResultOf(r) for r in results[1:]], [1, 2, 3, 4])
        self.assertEqual(runner.ran, [(0,), (1,), (2,), (3,), (4,)], "queued checks run in arrival order")

    def test_fullQueueIsBusyAtOnceAndRunsNothing(self) -> None:
        runner = BlockingRunner()
        queue = CheckQueue(runner, concurrency=2, queue=3)
        accepted = [queue.submit(echo, i) for i in range(5)]
        refused = queue.submit(echo, "over")
        self.assertEqual(self.failureResultOf(refused, Busy).value.retry_after, 1)
        while runner.started:
            runner.finish()
        self.assertNotIn(("over",), runner.ran)
        self.assertEqual(len(runner.ran), 5)
        for d in accepted:
            self.successResultOf(d)
        after = queue.submit(echo, "after")
        self.assertEqual(runner.running, 1, "once drained, checks are accepted again")
        runner.finish()
        self.assertEqual(self.successResultOf(after), "after")

    def test_defaultQueueIsFourPerSlot(self) -> None:
        runner = BlockingRunner()
        queue = CheckQueue(runner, concurrency=2)
        for i in range(10):
            queue.submit(echo, i)
        self.failureResultOf(queue.submit(echo, 10), Busy)

    def test_cancelledWhileQueuedNeverRuns(self) -> None:
        runner = BlockingRunner()
        queue = CheckQueue(runner, concurrency=1, queue=5)
        first = queue.submit(echo, "first")
        gone = [queue.submit(echo, f"gone-{i}") for i in range(3)]
        kept = queue.submit(echo, "kept")
        for d in gone:
            d.cancel()
            self.failureResultOf(d, CancelledError)
        self.assertEqual((queue.waiting, queue.dropped), (1, 3))
        runner.finish()
        runner.finish()
        self.assertEqual(runner.ran, [("first",), ("kept",)])
        self.assertEqual((self.successResultOf(first), self.successResultOf(kept)), ("first", "kept"))
        self.assertEqual(runner.running, 0)

    def test_cancelledQueuedChecksFreeTheQueueForOthers(self) -> None:
        runner = BlockingRunner()
        queue = CheckQueue(runner, concurrency=1, queue=2)
        queue.submit(echo, "running")
        gone = [queue.submit(echo, "gone") for _ in range(2)]
        self.failureResultOf(queue.submit(echo, "over"), Busy)
        for d in gone:
            d.cancel()
            self.failureResultOf(d, CancelledError)
        later = queue.submit(echo, "later")
        runner.finish()
        runner.finish()
        self.assertEqual(self.successResultOf(later), "later")

    def test_cancelledWhileRunningDropsTheResultAndFreesTheSlotWhenDone(self) -> None:
        runner = BlockingRunner()
        queue = CheckQueue(runner, concurrency=1, queue=5)
        running = queue.submit(echo, "running")
        nextOne = queue.submit(echo, "next")
        running.cancel()
        self.failureResultOf(running, CancelledError)
        self.assertEqual((queue.running, queue.dropped), (1, 0), "a running check cannot be stopped")
        runner.finish()
        self.assertEqual((queue.running, runner.running), (1, 1))
        runner.finish()
        self.assertEqual(self.successResultOf(nextOne), "next")

    def test_aFailingCheckFailsItsCallerAndFreesItsSlot(self) -> None:
        runner = BlockingRunner()
        queue = CheckQueue(runner, concurrency=1, queue=5)

        def broken() -> None:
            raise RuntimeError("bad hash")

        failed = queue.submit(broken)
        after = queue.submit(echo, "after")
        runner.finish()
        self.assertEqual(str(self.failureResultOf(failed, RuntimeError).value), "bad hash")
        runner.finish()
        self.assertEqual(self.successResultOf(after), "after")

    def test_synchronousRunnerDrainsTheQueue(self) -> None:
        queue = CheckQueue(maybeDeferred, concurrency=1, queue=0)
        self.assertEqual([self.successResultOf(queue.submit(echo, i)) for i in range(3)], [0, 1, 2])
        self.assertEqual(queue.running, 0)

    def test_concurrencyBelowOneIsRefused(self) -> None:
        with self.assertRaises(ValueError):
            CheckQueue(BlockingRunner(), concurrency=0)
