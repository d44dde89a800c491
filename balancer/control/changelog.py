"""
The change log: the runtime changes made through the API (what C{[state]
path} persists, L{balancer.state}), their revision, when each server and
backend last changed (the API's C{Last-Modified}), and who wants to hear of
changes.
"""

from __future__ import annotations

from typing import Callable

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from balancer.control.shared import Basis, ISharedChanges
from balancer.control.writers import IStateWriter
from balancer.state import RuntimeChanges

log = Logger()

#: Called with no argument after a change has been applied and persisted.
Observer = Callable[[], object]


class ChangeLog:
    """
    The runtime changes, persisted before they count.

    @ivar revision: a number that grows with every recorded change.
    """

    def __init__(self, changes: RuntimeChanges, writer: IStateWriter | None, clock: IReactorTime, started_at: float,
                 shared: ISharedChanges | None = None) -> None:
        """
        @param changes: the changes loaded from the state file (or the cluster) at start.
        @param writer: where changes are persisted (None without C{[state]}).
        @param clock: the clock of the times of change.
        @param started_at: when the balancer started (the time of change of what has not changed since).
        @param shared: the cluster the changes are shared with (C{[cluster]}):
            a change counts once committed there; C{[state] path} is then this
            balancer's copy of the shared state (read at start when the cluster's store does not answer).
        """
        self._changes = changes
        self._writer = writer
        self._shared = shared
        self._clock = clock
        self._started_at = started_at
        self._changed: dict[tuple[str, str], float] = {}
        self._observers: list[Observer] = []
        self.revision = 1

    @property
    def changes(self) -> RuntimeChanges:
        """The changes recorded so far (read them; L{record} changes them)."""
        return self._changes

    def record(self, change: Callable[[RuntimeChanges], None], basis: Basis | None = None) -> Deferred[None]:
        """
        Apply C{change} to a copy of the changes and persist it; once it is
        persisted the copy replaces them, the revision grows and the time
        of change of what differs is noted.

        @param basis: what the change was based on (L{ISharedChanges.basis}), in a cluster.
        @return: fires once that is done; fails with the writer's C{OSError},
            or in a cluster with L{ISharedChanges.commit}'s errors (nothing changed then).
        """
        candidate = self._changes.copy()
        change(candidate)
        if self._shared is None:
            written = self._writer.write(candidate) if self._writer is not None else succeed(None)
        else:
            written = self._shared.commit(self._changes, candidate, basis if basis is not None else {})

        def persisted(_: None) -> None:
            self._stamp(self._changes, candidate)
            self._changes = candidate
            self.revision += 1
            if self._shared is not None:
                self._keep_copy(candidate)

        return written.addCallback(persisted)

    def replace(self, changes: RuntimeChanges) -> None:
        """
        Make C{changes} (the cluster's, made elsewhere) the changes: the
        revision grows, the time of change of what differs is noted, and
        this balancer's copy (C{[state] path}) is written.
        """
        self._stamp(self._changes, changes)
        self._changes = changes
        self.revision += 1
        self._keep_copy(changes)

    def _keep_copy(self, changes: RuntimeChanges) -> None:
        """Write this balancer's copy of the shared changes to C{[state] path}, if any; a failure is logged."""
        if self._writer is None:
            return
        self._writer.write(changes).addErrback(
            lambda reason: log.error("cluster: the copy of the shared state was not written: {why}",
                                     why=reason.getErrorMessage()))

    def reloaded(self, servers: list[str], backends: list[str]) -> None:
        """
        The configuration file was loaded again and changed C{servers} (and
        C{backends}, by /v1 id): the revision grows and their time of change
        is now.  The runtime changes stay as they are, on top of the file.
        """
        now = self._clock.seconds()
        self._changed[("balancer", "")] = now
        for name in servers:
            self._changed[("server", name)] = now
        for id in backends:
            self._changed[("backend", id)] = now
        self.revision += 1

    def changed_at(self, kind: str, name: str) -> float:
        """
        When the configuration of C{name} last changed, in epoch seconds of
        the clock (the start if not since): C{kind} "server" for a
        C{[servers.<name>]}, "backend" for a /v1 server id, "balancer" (name "") for any change.
        """
        return self._changed.get((kind, name), self._started_at)

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """
        Call C{observer} after each change of servers or backend states
        (L{announce}).

        @return: a callable that ends the subscription.
        """
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    def announce(self) -> None:
        """Tell the subscribers that servers or backend states changed."""
        for observer in list(self._observers):
            observer()

    def _stamp(self, old: RuntimeChanges, new: RuntimeChanges) -> None:
        """Note the time of change of every server and backend that differs between C{old} and C{new}."""
        now = self._clock.seconds()
        self._changed[("balancer", "")] = now
        for name in set(old.servers) | set(new.servers) | (old.deleted ^ new.deleted):
            if old.servers.get(name) != new.servers.get(name) or (name in old.deleted) != (name in new.deleted):
                self._changed[("server", name)] = now
        tables = ((old.backends, new.backends), (old.backend_states, new.backend_states), (old.overrides, new.overrides))
        for table_old, table_new in tables:
            for id in set(table_old) | set(table_new):
                if table_old.get(id) != table_new.get(id):
                    self._changed[("backend", id)] = now
