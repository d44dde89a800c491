"""
Servers that a test stops cleanly: L{Tracked} wraps a server factory and
can wait until its connections are closed, and L{served} listens with one
until the test ends, then stops listening and waits for those connections,
so the test ends with a clean reactor.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.protocols.policies import WrappingFactory
from twisted.trial.unittest import SynchronousTestCase


class Tracked(WrappingFactory):
    """A server factory that can wait for its connections to close."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._idle: list[Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._idle = self._idle, []
            for d in waiting:
                d.callback(None)

    def idle(self) -> Deferred[None]:
        """Fires when no connection is open."""
        if not self.protocols:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle.append(d)
        return d


async def _close(port: IListeningPort, tracked: Tracked) -> None:
    await maybeDeferred(port.stopListening)
    await tracked.idle()


def served(test: SynchronousTestCase, factory: Any, listen: Callable[[Tracked], IListeningPort]) -> IListeningPort:
    """
    Listen with C{listen(Tracked(factory))} until C{test} ends, then stop
    listening and wait for the connections to close; returns the port.
    """
    tracked = Tracked(factory)
    port = listen(tracked)
    test.addCleanup(lambda: Deferred.fromCoroutine(_close(port, tracked)))
    return port
