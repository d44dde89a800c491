"""
What the cluster needs of a key-value store: read a prefix at a revision,
commit a transaction conditioned on revisions (compare-and-swap), watch a
prefix from a revision, and leases for members.  L{balancer.cluster.etcd}
implements it over etcd; tests use an in-memory store with the same
semantics (tests/support/fake_etcd.py).

Keys and values are text (UTF-8) and bytes; revisions are etcd's: one
number for the whole store that grows with every committed write.
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface


@attrs.frozen
class Entry:
    """
    One key as the store holds it.

    @ivar mod_revision: the revision of the write that last changed it.
    @ivar create_revision: the revision of the write that created it.
    @ivar lease: the lease it is attached to (0: none).
    """

    key: str
    value: bytes
    mod_revision: int
    create_revision: int
    lease: int = 0


@attrs.frozen
class Snapshot:
    """The keys under a prefix as of C{revision} (the store's revision at the read)."""

    revision: int
    entries: tuple[Entry, ...]


@attrs.frozen
class Event:
    """
    One change seen by a watch: C{kind} "put" (C{entry} is the new
    version) or "delete" (C{entry.value} is empty, C{entry.mod_revision}
    the revision of the deletion).
    """

    kind: str
    entry: Entry


@attrs.frozen
class Put:
    """Write C{value} at C{key} (attached to C{lease} unless 0)."""

    key: str
    value: bytes
    lease: int = 0


@attrs.frozen
class Delete:
    """Remove C{key} (nothing if it does not exist)."""

    key: str


Operation = Union[Put, Delete]


@attrs.frozen
class NotChangedSince:
    """
    A transaction's condition: C{key} has not been written after
    C{revision} (its C{mod_revision} is at most C{revision}; a key that does
    not exist satisfies it).
    """

    key: str
    revision: int


@attrs.frozen
class Committed:
    """
    The outcome of a transaction: C{succeeded} False when a condition did
    not hold (nothing was written); C{revision} the store's revision after
    it (the revision of its writes when it succeeded).
    """

    succeeded: bool
    revision: int


class StoreUnavailable(Exception):
    """No endpoint of the store answered (the message names them and the last error)."""


class StoreRefused(Exception):
    """The store answered with an error (authentication failed, a request it rejects...)."""


class WatchCompacted(Exception):
    """
    A watch asked for revisions the store has compacted away: the caller
    reads the whole prefix again.

    @ivar compact_revision: the oldest revision the store still has.
    """

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revisions before {compact_revision} were compacted")
        self.compact_revision = compact_revision


#: Called with the revision of a watch response and its events (in order).
EventsReceiver = Callable[[int, Sequence[Event]], object]


class IWatch(Interface):
    """A running watch on a prefix."""

    ended = Attribute(
        "Deferred[None]: fires with None after stop(); fails with WatchCompacted, StoreUnavailable "
        "(the connection was lost or never made) or StoreRefused when the watch ends by itself."
    )

    def stop() -> None:
        """End the watch; no event is delivered after this returns."""


class IKeyValueStore(Interface):
    """A key-value store with revisions, transactions, watches and leases (etcd v3's model)."""

    def get_prefix(prefix: str) -> Deferred[Snapshot]:
        """
        Every key starting with C{prefix}, sorted by key.

        @return: fails with L{StoreUnavailable} or L{StoreRefused}.
        """

    def commit(conditions: Sequence[NotChangedSince], operations: Sequence[Operation]) -> Deferred[Committed]:
        """
        Apply C{operations} in one transaction if every condition holds,
        else nothing.

        @return: fails with L{StoreUnavailable} (it is then unknown whether
            the transaction was applied) or L{StoreRefused}.
        """

    def watch_prefix(prefix: str, start_revision: int, receiver: EventsReceiver) -> IWatch:
        """
        Deliver to C{receiver} every change under C{prefix} from
        C{start_revision} on, in revision order, until the watch is
        stopped or ends (L{IWatch.ended}).
        """

    def grant_lease(ttl: int) -> Deferred[int]:
        """A new lease of C{ttl} seconds: its id."""

    def keep_alive(lease: int) -> Deferred[int]:
        """
        Renew C{lease}: its TTL in seconds again, or 0 when it has expired
        (keys attached to it are gone; grant a new one).
        """

    def revoke_lease(lease: int) -> Deferred[None]:
        """End C{lease} now: the keys attached to it are deleted."""

    def close() -> Deferred[None]:
        """Stop every watch and close the connections; fires once closed."""
