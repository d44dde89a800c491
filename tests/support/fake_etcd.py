"""
An in-memory L{IKeyValueStore} with etcd's semantics, for unit tests of
what uses a store: one revision counter for the whole store (1 when
empty), each committed write at the next revision with C{mod_revision} and
C{create_revision}, conditioned transactions, watches from any revision
still kept (earlier ones: L{WatchCompacted}), leases that expire on a
clock, and a switch that makes it unavailable.  tests/test_etcd_store.py
runs the same contract tests against it and against a real etcd.

    clock = Clock()
    store = FakeEtcd(clock)
    lease = await store.grant_lease(10)
    await store.commit([], [Put("/b/members/a", b"{}", lease)])
    clock.advance(10)                       # the lease expires: the key is gone
    store.make_unavailable()                # calls fail, watches end: StoreUnavailable
    store.make_available()
"""

from __future__ import annotations

from typing import Sequence

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from balancer.cluster.store import (
    Committed,
    Delete,
    Entry,
    Event,
    EventsReceiver,
    IKeyValueStore,
    IWatch,
    NotChangedSince,
    Operation,
    Put,
    Snapshot,
    StoreRefused,
    StoreUnavailable,
    WatchCompacted,
)

#: The first lease id the fake grants (etcd's are large numbers too).
FIRST_LEASE = 7587800000000000001


@attrs.define
class Lease:
    """A granted lease: its TTL, when it expires, and the keys attached to it."""

    ttl: int
    expiry: IDelayedCall
    keys: set[str] = attrs.field(factory=set)


@implementer(IWatch)
class FakeWatch:
    """A watch on the fake: events of every later revision, delivered by the store."""

    def __init__(self, store: FakeEtcd, prefix: str, next_revision: int, receiver: EventsReceiver) -> None:
        self._store = store
        self.prefix = prefix
        self.next_revision = next_revision
        self._receiver = receiver
        self.ended: Deferred[None] = Deferred()

    @property
    def running(self) -> bool:
        """Whether it still delivers events."""
        return not self.ended.called

    def deliver(self, revision: int, events: Sequence[Event]) -> None:
        """Hand the events of C{revision} under the prefix to the receiver (once, in order)."""
        if not self.running or revision < self.next_revision:
            return
        self.next_revision = revision + 1
        mine = [event for event in events if event.entry.key.startswith(self.prefix)]
        if mine:
            try:
                self._receiver(revision, mine)
            except Exception:
                # As the gateway's watch does: the receiver's error ends the watch.
                self.end(Failure())

    def end(self, failure: Failure) -> None:
        """The watch ends by itself with C{failure}."""
        if self.running:
            self._store.watches.discard(self)
            self.ended.errback(failure)

    def stop(self) -> None:
        """End the watch; nothing is delivered after this."""
        if self.running:
            self._store.watches.discard(self)
            self.ended.callback(None)


@implementer(IKeyValueStore)
class FakeEtcd:
    """
    An in-memory store with etcd's revisions, transactions, watches and leases.

    @ivar clock: the clock leases expire on (and events are delivered on, with C{delay}).
    @ivar revision: the store's revision.
    @ivar compact_revision: the oldest revision a watch may start from.
    @ivar available: False after L{make_unavailable}: every call fails with L{StoreUnavailable}.
    @ivar watches: the running watches.
    """

    def __init__(self, clock: IReactorTime | None = None, *, delay: float | None = None) -> None:
        """
        @param clock: what leases expire on (a new L{Clock} by default).
        @param delay: deliver each revision's events to watches this many
            seconds of C{clock} after its commit; None: during the commit,
            before its Deferred fires (a watch's replay of past revisions,
            before C{watch_prefix} returns).
        """
        self.clock: IReactorTime = clock if clock is not None else Clock()
        self._delay = delay
        self.revision = 1
        self.compact_revision = 1
        self._compacted_at = 0
        self.available = True
        self.watches: set[FakeWatch] = set()
        self._keys: dict[str, Entry] = {}
        self._history: list[tuple[int, list[Event]]] = []
        self._leases: dict[int, Lease] = {}
        self._next_lease = FIRST_LEASE

    # -- the test's controls --

    def make_unavailable(self) -> None:
        """From now on every call fails with L{StoreUnavailable}; running watches end with it."""
        self.available = False
        for watch in list(self.watches):
            watch.end(Failure(StoreUnavailable("the fake etcd is unavailable")))

    def make_available(self) -> None:
        """Answer again; like etcd after a restart, every lease gets its full TTL again."""
        self.available = True
        for lease in self._leases.values():
            lease.expiry.reset(lease.ttl)

    def compact(self, revision: int) -> Deferred[None]:
        """Forget the history before C{revision}: a watch from an earlier one fails with L{WatchCompacted}."""
        if not self.available:
            return fail(self._unavailable())
        if revision <= self._compacted_at or revision > self.revision:
            return fail(StoreRefused(f"cannot compact at {revision} (kept: {self.compact_revision}..{self.revision})"))
        self.compact_revision = self._compacted_at = revision
        self._history = [(r, events) for r, events in self._history if r >= revision]
        return succeed(None)

    def leases(self) -> list[int]:
        """The ids of the leases alive."""
        return sorted(self._leases)

    # -- IKeyValueStore --

    def get_prefix(self, prefix: str) -> Deferred[Snapshot]:
        """Every key under C{prefix}, sorted by key."""
        if not self.available:
            return fail(self._unavailable())
        entries = tuple(self._keys[key] for key in sorted(self._keys) if key.startswith(prefix))
        return succeed(Snapshot(self.revision, entries))

    def commit(self, conditions: Sequence[NotChangedSince], operations: Sequence[Operation]) -> Deferred[Committed]:
        """Apply C{operations} at the next revision if every condition holds (no change: no new revision)."""
        if not self.available:
            return fail(self._unavailable())
        keys = [operation.key for operation in operations]
        if len(set(keys)) != len(keys):
            return fail(StoreRefused("etcd refused /v3/kv/txn: etcdserver: duplicate key given in txn request"))
        for operation in operations:
            if isinstance(operation, Put) and operation.lease and operation.lease not in self._leases:
                return fail(StoreRefused("etcd refused /v3/kv/txn: etcdserver: requested lease not found"))
        for condition in conditions:
            existing = self._keys.get(condition.key)
            if existing is not None and existing.mod_revision > condition.revision:
                return succeed(Committed(False, self.revision))
        self._apply(list(operations))
        return succeed(Committed(True, self.revision))

    def watch_prefix(self, prefix: str, start_revision: int, receiver: EventsReceiver) -> IWatch:
        """Deliver every change under C{prefix} from C{start_revision} on (past ones first)."""
        watch = FakeWatch(self, prefix, start_revision, receiver)
        if not self.available:
            watch.end(Failure(self._unavailable()))
        elif start_revision < self.compact_revision:
            watch.end(Failure(WatchCompacted(self.compact_revision)))
        else:
            self.watches.add(watch)
            for revision, events in self._history:
                if revision >= start_revision:
                    self._deliver(watch, revision, events)
        return watch

    def grant_lease(self, ttl: int) -> Deferred[int]:
        """A new lease of C{ttl} seconds of the clock."""
        if not self.available:
            return fail(self._unavailable())
        lease = self._next_lease
        self._next_lease += 1
        self._leases[lease] = Lease(ttl, self.clock.callLater(ttl, self._expire, lease))
        return succeed(lease)

    def keep_alive(self, lease: int) -> Deferred[int]:
        """Its TTL again, or 0 when it has expired or never was."""
        if not self.available:
            return fail(self._unavailable())
        held = self._leases.get(lease)
        if held is None:
            return succeed(0)
        held.expiry.reset(held.ttl)
        return succeed(held.ttl)

    def revoke_lease(self, lease: int) -> Deferred[None]:
        """End C{lease} now, deleting its keys (an expired one: nothing)."""
        if not self.available:
            return fail(self._unavailable())
        held = self._leases.get(lease)
        if held is not None:
            held.expiry.cancel()
            self._expire(lease)
        return succeed(None)

    def close(self) -> Deferred[None]:
        """Stop every watch."""
        for watch in list(self.watches):
            watch.stop()
        return succeed(None)

    # -- inside --

    def _unavailable(self) -> StoreUnavailable:
        return StoreUnavailable("etcd unavailable (fake://etcd: the fake etcd is unavailable)")

    def _expire(self, lease: int) -> None:
        held = self._leases.pop(lease)
        self._apply([Delete(key) for key in sorted(held.keys)])

    def _apply(self, operations: list[Operation]) -> None:
        """Write C{operations} at the next revision (when any changes something) and tell the watches."""
        revision = self.revision + 1
        events: list[Event] = []
        for operation in operations:
            existing = self._keys.get(operation.key)
            if existing is not None and existing.lease in self._leases:
                self._leases[existing.lease].keys.discard(operation.key)
            if isinstance(operation, Put):
                created = existing.create_revision if existing is not None else revision
                entry = Entry(operation.key, operation.value, revision, created, operation.lease)
                self._keys[operation.key] = entry
                if operation.lease:
                    self._leases[operation.lease].keys.add(operation.key)
                events.append(Event("put", entry))
            elif existing is not None:
                del self._keys[operation.key]
                events.append(Event("delete", Entry(operation.key, b"", revision, 0)))
        if not events:
            return
        self.revision = revision
        self._history.append((revision, events))
        for watch in list(self.watches):
            self._deliver(watch, revision, events)

    def _deliver(self, watch: FakeWatch, revision: int, events: list[Event]) -> None:
        if self._delay is None:
            watch.deliver(revision, events)
        else:
            self.clock.callLater(self._delay, watch.deliver, revision, events)
