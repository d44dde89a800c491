"""
Idle timeouts for many UDP sessions with one timer.

The sessions of one L{IdleQueue} share its timeout, so ordering them by
their last activity orders them by deadline: the queue keeps them in that
order (an C{OrderedDict}, each activity moving its session to the end) and
its one delayed call waits for the oldest.  Opening, touching and ending a
session costs a few dictionary operations and no delayed call of its own,
where a timer per session would put one in the reactor's heap for every
request of a C{max_responses = 1} service, only to cancel it a moment later.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Generic, Hashable, TypeVar

from twisted.internet.interfaces import IDelayedCall, IReactorTime

Member = TypeVar("Member", bound=Hashable)


class IdleQueue(Generic[Member]):
    """
    Calls C{on_idle(member)} for each member that had no activity for
    C{timeout} seconds (since it was L{add}ed or last L{touch}ed), unless
    L{remove}d before.

    @ivar timeout: seconds of inactivity that end a member.
    """

    def __init__(self, clock: IReactorTime, timeout: float, on_idle: Callable[[Member], None]) -> None:
        self.clock = clock
        self.timeout = timeout
        self._on_idle = on_idle
        self._last: OrderedDict[Member, float] = OrderedDict()
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self._last)

    def add(self, member: Member, now: float | None = None) -> None:
        """
        Watch C{member}, active now.

        @param now: the clock's time now, when the caller just read it (else it is read).
        """
        self._last[member] = self.clock.seconds() if now is None else now
        if self._call is None:
            self._call = self.clock.callLater(self.timeout, self._expire)

    def touch(self, member: Member) -> None:
        """Record activity of C{member} (being watched) now."""
        last = self._last
        last[member] = self.clock.seconds()
        last.move_to_end(member)

    def remove(self, member: Member) -> None:
        """Stop watching C{member} (nothing if it is not watched); the last one out cancels the timer."""
        last = self._last
        last.pop(member, None)
        if not last and self._call is not None:
            self._call.cancel()
            self._call = None

    def _expire(self) -> None:
        self._call = None
        last = self._last
        now = self.clock.seconds()
        while last:
            member, at = next(iter(last.items()))
            idle = now - at
            if idle < self.timeout:
                if self._call is not None:  # scheduled by an add from on_idle, maybe too late
                    self._call.cancel()
                self._call = self.clock.callLater(self.timeout - idle, self._expire)
                return
            del last[member]
            self._on_idle(member)
