"""
Coarse deadlines for the relay engine: many timeouts that are almost always
cancelled (a connect to a backend on the same network takes far less than
its timeout) cost a dictionary entry each instead of a reactor timer.

Deadlines fall into slots of L{RESOLUTION} seconds; one reactor call, for
the earliest slot that may hold any, runs the slot's owners when it is due.
A deadline is never early, and late by at most one slot plus the reactor's
own delay.  Removing a deadline leaves its slot's reactor call in place
(cancelling and making reactor calls is what this avoids); L{stop_if_idle}
cancels it once no deadline is pending.
"""

from __future__ import annotations

import heapq
from typing import Any, Protocol

#: The width of a slot, in seconds.
RESOLUTION = 0.05


class Owner(Protocol):
    """What a deadline calls when it passes."""

    def deadline_passed(self) -> None:
        """The deadline set by this owner has passed."""


class Deadlines:
    """Deadlines on a clock (an C{IReactorTime}), added and removed in constant time."""

    def __init__(self, clock: Any, resolution: float = RESOLUTION) -> None:
        self._clock = clock
        self._resolution = resolution
        self._slots: dict[int, dict[Owner, None]] = {}
        self._order: list[int] = []
        self._call: Any = None
        self._called_for: int | None = None
        self._pending = 0

    def __len__(self) -> int:
        """How many deadlines are pending."""
        return self._pending

    def add(self, delay: float, owner: Owner) -> int:
        """
        Call C{owner.deadline_passed()} once C{delay} seconds have passed,
        unless L{remove}d before.

        @return: the slot, to give to L{remove}.
        """
        slot = int((self._clock.seconds() + delay) / self._resolution) + 1
        owners = self._slots.get(slot)
        if owners is None:
            owners = self._slots[slot] = {}
            heapq.heappush(self._order, slot)
            if self._called_for is None or slot < self._called_for:
                self._schedule()
        owners[owner] = None
        self._pending += 1
        return slot

    def remove(self, slot: int, owner: Owner) -> None:
        """Forget C{owner}'s deadline in C{slot} (nothing if it passed already)."""
        owners = self._slots.get(slot)
        if owners is not None and owners.pop(owner, 0) is None:
            self._pending -= 1

    def stop_if_idle(self) -> None:
        """With no deadline pending, cancel the reactor call and forget the slots."""
        if not self._pending:
            self._slots.clear()
            self._order.clear()
            self._schedule()

    def _schedule(self) -> None:
        """Have the reactor call L{_run} when the earliest slot is due (or not at all, with none)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self._called_for = None
        if self._order:
            first = self._order[0]
            self._called_for = first
            delay = max(0.0, first * self._resolution - self._clock.seconds())
            self._call = self._clock.callLater(delay, self._run)

    def _run(self) -> None:
        """Call the owners of every slot that is due, then wait for the next slot."""
        self._call = self._called_for = None
        now = self._clock.seconds()
        order, resolution = self._order, self._resolution
        while order and order[0] * resolution <= now:
            owners = self._slots.pop(heapq.heappop(order))
            self._pending -= len(owners)
            for owner in owners:
                owner.deadline_passed()
        self._schedule()
