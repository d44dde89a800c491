"""
How the change log's runtime changes reach C{[state] path}.

The text is rendered in the caller's (the reactor's) thread, from changes
nobody alters afterwards; the blocking part (write, fsync, rename, fsync of
the directory: L{balancer.state.StateFile.write}) runs in the reactor's
thread pool with L{ThreadedWriter}, so the API and the data path never wait
on the disk.  L{InlineWriter} writes in the calling thread, for unit tests
on a memory reactor and for reactors without threads.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.internet.interfaces import IReactorThreads
from twisted.internet.threads import deferToThreadPool
from zope.interface import Interface, implementer

from balancer.state import RuntimeChanges, StateFile

#: Runs a blocking callable somewhere else; fires with its result or failure.
RunBlocking = Callable[[Callable[[], None]], "Deferred[None]"]


class IStateWriter(Interface):
    """Persists runtime changes, one version after the other."""

    def write(changes: RuntimeChanges) -> Deferred[None]:
        """
        Make C{changes} the state file.  A later write never lands before an
        earlier one.  Fires with None once it is on disk (fsynced and
        renamed into place), or fails with the C{OSError} that stopped it
        (the file then holds the previous version).
        """

    def flush() -> Deferred[None]:
        """Fires once every write asked for so far has ended."""


@implementer(IStateWriter)
class InlineWriter:
    """Writes in the calling thread: the returned Deferred has fired already."""

    def __init__(self, state: StateFile) -> None:
        self._state = state

    def write(self, changes: RuntimeChanges) -> Deferred[None]:
        try:
            self._state.save(changes)
        except OSError:
            return fail()
        return succeed(None)

    def flush(self) -> Deferred[None]:
        return succeed(None)


@implementer(IStateWriter)
class ThreadedWriter:
    """
    Writes in a thread, one write at a time, in the order they were asked
    for.  While writes are pending, the reactor's shutdown waits for them (a
    C{before shutdown} trigger), so a stopping balancer does not lose the
    last change it reported done.
    """

    def __init__(self, state: StateFile, reactor: Any, run: RunBlocking | None = None) -> None:
        """
        @param reactor: an L{IReactorCore}; with C{run} None, an L{IReactorThreads} too.
        @param run: runs the blocking write; by default in the reactor's thread pool.
        """
        self._state = state
        self._reactor = reactor
        self._run = run if run is not None else self._in_thread_pool
        self._lock = DeferredLock()
        self._pending = 0
        self._trigger: Any = None
        self._shutting_down = False

    def write(self, changes: RuntimeChanges) -> Deferred[None]:
        text = self._state.render(changes)
        self._pending += 1
        if self._trigger is None and not self._shutting_down:
            self._trigger = self._reactor.addSystemEventTrigger("before", "shutdown", self._shutdown)
        written: Deferred[None] = self._lock.run(self._run, lambda: self._state.write(text))
        return written.addBoth(self._ended)

    def flush(self) -> Deferred[None]:
        return self._lock.run(succeed, None)

    def _in_thread_pool(self, work: Callable[[], None]) -> Deferred[None]:
        """Run C{work} in the reactor's thread pool."""
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), work)

    def _ended(self, result: object) -> object:
        """One write ended: with none pending, the shutdown no longer needs to wait."""
        self._pending -= 1
        if not self._pending and self._trigger is not None and not self._shutting_down:
            self._reactor.removeSystemEventTrigger(self._trigger)
            self._trigger = None
        return result

    def _shutdown(self) -> Deferred[None]:
        """The reactor is stopping: it waits for the pending writes."""
        self._shutting_down = True
        return self.flush()


def writer_for(state: StateFile, reactor: Any) -> IStateWriter:
    """
    The writer of C{state} for C{reactor}: in its thread pool when it has
    one (L{IReactorThreads}), else in the calling thread (a memory reactor).
    """
    if IReactorThreads.providedBy(reactor):
        return ThreadedWriter(state, reactor)
    return InlineWriter(state)
