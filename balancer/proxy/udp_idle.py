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
    @ivar members: each member watched and when it was last active, the
        least recently active first.  L{add} and L{remove} set and pop it
        and start or stop the timer; a caller on a hot path (a UDP session
        opening and ending) may do the same without their calls: set it,
        then L{arm} if the timer is not running (L{call} is C{None}); pop
        it, then L{disarm} if it is empty.
    @ivar call: the timer, or C{None} when it is not running.
    """

    def __init__(self, clock: IReactorTime, timeout: float, on_idle: Callable[[Member], None]) -> None:
        self.clock = clock
        self.timeout = timeout
        self._on_idle = on_idle
        self.members: OrderedDict[Member, float] = OrderedDict()
        self.call: IDelayedCall | None = None

    def __len__(self) -> int:
        return len(self.members)

    def add(self, member: Member, now: float | None = None) -> None:
        """
        Watch C{member}, active now.

        @param now: the clock's time now, when the caller just read it (else it is read).
        """
        self.members[member] = self.clock.seconds() if now is None else now
        if self.call is None:
            self.arm()

    def arm(self) -> None:
        """Start the timer (not running: L{call} is C{None}) for a member just added."""
        self.call = self.clock.callLater(self.timeout, self._expire)

    def touch(self, member: Member) -> None:
        """Record activity of C{member} (being watched) now."""
        members = self.members
        members[member] = self.clock.seconds()
        members.move_to_end(member)

    def remove(self, member: Member) -> None:
        """Stop watching C{member} (nothing if it is not watched); the last one out stops the timer."""
        members = self.members
        members.pop(member, None)
        if not members:
            self.disarm()

    def disarm(self) -> None:
        """Stop the timer, if it runs (no member is left)."""
        if self.call is not None:
            self.call.cancel()
            self.call = None

    def _expire(self) -> None:
        self.call = None
        members = self.members
        now = self.clock.seconds()
        while members:
            member, at = next(iter(members.items()))
            idle = now - at
            if idle < self.timeout:
                if self.call is not None:  # scheduled by an add from on_idle, maybe too late
                    self.call.cancel()
                self.call = self.clock.callLater(self.timeout - idle, self._expire)
                return
            del members[member]
            self._on_idle(member)
