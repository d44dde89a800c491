"""
How runtime changes reach the state file: at once (L{InlineWriter}), or in
a thread, one write after the other, with the shutdown waiting for them
(L{ThreadedWriter}).
"""

from __future__ import annotations

import os
from typing import Any, Callable, Generator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancer.control.writers import InlineWriter, ThreadedWriter, writer_for
from balancer.state import RuntimeChanges, StateFile

from tests.support.paths import scratch_directory


class Triggers:
    """The system event triggers part of a reactor: added, removed, fired by hand."""

    def __init__(self) -> None:
        self.triggers: dict[int, tuple[str, str, Callable[[], Any]]] = {}
        self._next = 0

    def addSystemEventTrigger(self, phase: str, event: str, callable: Callable[[], Any]) -> int:
        self._next += 1
        self.triggers[self._next] = (phase, event, callable)
        return self._next

    def removeSystemEventTrigger(self, id: int) -> None:
        del self.triggers[id]

    def before_shutdown(self) -> list[Callable[[], Any]]:
        """The callables to run before shutdown."""
        return [c for phase, event, c in self.triggers.values() if (phase, event) == ("before", "shutdown")]


class Threads:
    """A stand-in for the thread pool: holds each blocking job until the test runs it."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[], None], Deferred[None]]] = []

    def run(self, work: Callable[[], None]) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        self.jobs.append((work, done))
        return done

    def finish(self) -> None:
        """Run the oldest job "in its thread" and report its end."""
        work, done = self.jobs.pop(0)
        try:
            work()
        except OSError as e:
            done.errback(e)
        else:
            done.callback(None)


def changes(name: str) -> RuntimeChanges:
    """Changes that record one deleted server, C{name}."""
    return RuntimeChanges(deleted={name})


class WriterTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        directory = scratch_directory(self)
        self.state = StateFile(os.path.join(directory, "state.toml"))


class InlineWriterTests(WriterTestCase):
    """InlineWriter: the file is written when write returns."""

    def test_writtenAtOnce(self) -> None:
        self.successResultOf(InlineWriter(self.state).write(changes("a")))
        self.assertEqual(self.state.load().deleted, {"a"})

    def test_failureFailsTheDeferred(self) -> None:
        os.makedirs(self.state.path)
        self.failureResultOf(InlineWriter(self.state).write(changes("a")), OSError)


class ThreadedWriterTests(WriterTestCase):
    """ThreadedWriter: one write at a time, in order, the shutdown waiting for them."""

    def setUp(self) -> None:
        super().setUp()
        self.reactor = Triggers()
        self.threads = Threads()
        self.writer = ThreadedWriter(self.state, self.reactor, self.threads.run)

    def test_writesRunOneAfterTheOtherInOrder(self) -> None:
        first, second = self.writer.write(changes("a")), self.writer.write(changes("b"))
        self.assertEqual(len(self.threads.jobs), 1)
        self.threads.finish()
        self.successResultOf(first)
        self.assertNoResult(second)
        self.assertEqual(self.state.load().deleted, {"a"})
        self.threads.finish()
        self.successResultOf(second)
        self.assertEqual(self.state.load().deleted, {"b"})

    def test_theTextIsTakenWhenTheWriteIsAsked(self) -> None:
        recorded = changes("a")
        self.writer.write(recorded)
        recorded.deleted.add("later")
        self.threads.finish()
        self.assertEqual(self.state.load().deleted, {"a"})

    def test_aFailedWriteFailsItsOwnDeferredOnly(self) -> None:
        os.makedirs(self.state.path)
        first, second = self.writer.write(changes("a")), self.writer.write(changes("b"))
        self.threads.finish()
        self.failureResultOf(first, OSError)
        os.rmdir(self.state.path)
        self.threads.finish()
        self.successResultOf(second)
        self.assertEqual(self.state.load().deleted, {"b"})

    def test_flushWaitsForEveryPendingWrite(self) -> None:
        self.writer.write(changes("a"))
        self.writer.write(changes("b"))
        flushed = self.writer.flush()
        self.threads.finish()
        self.assertNoResult(flushed)
        self.threads.finish()
        self.successResultOf(flushed)

    def test_shutdownWaitsOnlyWhileWritesArePending(self) -> None:
        self.assertEqual(self.reactor.before_shutdown(), [])
        self.writer.write(changes("a"))
        self.assertEqual(len(self.reactor.before_shutdown()), 1)
        self.threads.finish()
        self.assertEqual(self.reactor.before_shutdown(), [])

    def test_shutdownWaitsForThePendingWrites(self) -> None:
        written = self.writer.write(changes("a"))
        [trigger] = self.reactor.before_shutdown()
        waiting = trigger()
        self.assertNoResult(waiting)
        self.threads.finish()
        self.successResultOf(written)
        self.successResultOf(waiting)
        self.assertEqual(self.state.load().deleted, {"a"})


class ThreadPoolTests(TestCase):
    """With a real reactor, writes go through its thread pool."""

    @inlineCallbacks
    def test_writerForAReactorWithThreadsWritesInItsPool(self) -> Generator[Deferred[None], None, None]:
        directory = scratch_directory(self)
        state = StateFile(os.path.join(directory, "state.toml"))
        writer = writer_for(state, reactor)
        self.assertIsInstance(writer, ThreadedWriter)
        yield writer.write(changes("a"))
        yield writer.write(changes("b"))
        self.assertEqual(state.load().deleted, {"b"})

    def test_writerForAMemoryReactorWritesInline(self) -> None:
        self.assertIsInstance(writer_for(StateFile("unused"), MemoryReactorClock()), InlineWriter)
