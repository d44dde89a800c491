"""
L{SharedState}: this balancer's copy of its cluster's keys (L{records}),
the members registered, whether the store answers; and the writer of
changes made here (L{ISharedChanges}).

A change made here is committed in one transaction conditioned on every
key it writes not having changed after the basis of the change (what this
balancer had seen of those keys when the API checked the request's
preconditions): a change another balancer made meanwhile fails it with
L{ChangeConflict} instead of being overwritten.
"""

from __future__ import annotations

import json
from urllib.parse import unquote
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import implementer

from balancer.cluster import records
from balancer.cluster.records import Record
from balancer.cluster.store import (
    Committed, Event, IKeyValueStore, NotChangedSince, Put, Snapshot, StoreRefused, StoreUnavailable)
from balancer.control.errors import ChangeConflict, ClusterUnavailable
from balancer.control.shared import Basis, ISharedChanges
from balancer.control.views import ClusterView, MemberView
from balancer.state import RuntimeChanges

log = Logger()

#: Told that the store stopped answering, with the reason (the sync service starts over).
LostHandler = Callable[[str], object]


@implementer(ISharedChanges)
class SharedState:
    """
    The cluster's keys as this balancer has applied them.

    @ivar revision: the store revision up to which every change has been seen.
    @ivar available: whether the store answers (commits fail at once with
        L{ClusterUnavailable} while it does not).
    @ivar errors: the shared changes this balancer could not apply (set by the sync service).
    """

    def __init__(self, store: IKeyValueStore, prefix: str, instance: str, endpoints: Sequence[str],
                 name: str, clock: IReactorTime) -> None:
        """
        @param prefix: the cluster's key prefix, without a trailing C{/}.
        @param instance: this balancer's name in the cluster.
        """
        self._store = store
        self.prefix = prefix.rstrip("/") + "/"
        self.instance = instance
        self._endpoints = tuple(endpoints)
        self._name = name
        self._clock = clock
        self.records: dict[str, Record] = {}
        self.members: dict[str, MemberView] = {}
        self.revision = 0
        self.available = False
        self.since = clock.seconds()
        self.last_error: str | None = None
        self.errors: tuple[str, ...] = ()
        self.on_lost: LostHandler | None = None

    # What the store holds

    def load(self, snapshot: Snapshot) -> None:
        """Make C{snapshot} (a read of the whole prefix) the state: every key replaced."""
        self.records = {}
        self.members = {}
        for entry in snapshot.entries:
            self._take(entry.key, entry.value, entry.mod_revision)
        self.revision = snapshot.revision

    def receive(self, revision: int, events: Sequence[Event]) -> bool:
        """
        Take the events of a watch response (revision C{revision}).

        @return: whether the runtime changes they describe differ from before.
        """
        members = self.prefix + records.MEMBERS
        only_members = all(event.entry.key.startswith(members) for event in events)
        before = None if only_members else self.changes()
        for event in events:
            key = event.entry.key
            if event.kind == "delete":
                self._forget(key)
            else:
                self._take(key, event.entry.value, event.entry.mod_revision)
        self.revision = max(self.revision, revision)
        return before is not None and self.changes() != before

    def changes(self) -> RuntimeChanges:
        """The runtime changes the shared keys describe."""
        return records.changes_from(self.records)

    # Availability

    def reachable(self) -> None:
        """The store answers again (logged once per transition)."""
        if not self.available:
            self.available = True
            self.since = self._clock.seconds()
            log.info("cluster {name}: etcd answers: shared state at revision {revision}",
                     name=self._name, revision=self.revision)

    def unreachable(self, reason: str) -> None:
        """The store does not answer (logged once per transition); changes answer 503 until it does."""
        self.last_error = reason
        if self.available:
            self.available = False
            self.since = self._clock.seconds()
            log.error("cluster {name}: etcd unreachable ({reason}): serving the shared state of revision "
                      "{revision}; API changes answer 503 until it answers", name=self._name, reason=reason,
                      revision=self.revision)

    # ISharedChanges

    def basis(self) -> Basis:
        return {key: record.mod_revision for key, record in self.records.items()}

    def commit(self, old: RuntimeChanges, new: RuntimeChanges, basis: Basis) -> Deferred[None]:
        writes = records.writes(old, new)
        if not writes:
            return succeed(None)
        if not self.available:
            return fail(ClusterUnavailable(
                f"etcd is unreachable ({self.last_error}): the change was not made; retry once it answers"))
        now = self._clock.seconds()
        conditions = [NotChangedSince(self.prefix + key, basis.get(key, 0)) for key in writes]
        operations = [Put(self.prefix + key, records.encode(fields, now, self.instance))
                      for key, fields in writes.items()]

        def committed(outcome: Committed) -> None:
            if not outcome.succeeded:
                raise ChangeConflict(
                    f"another balancer of cluster {self._name} changed {_described(writes)} meanwhile: "
                    "nothing was changed; read it again and retry")
            for key, fields in writes.items():
                self.records[key] = Record(dict(fields), outcome.revision, now, self.instance)

        def failed(reason: Any) -> None:
            error = reason.trap(StoreUnavailable, StoreRefused)
            message = reason.getErrorMessage()
            if error is StoreUnavailable:
                if self.on_lost is not None:
                    self.on_lost(message)
                raise ClusterUnavailable(
                    f"etcd did not answer ({message}): the change may or may not have been made; "
                    "read the resource again before retrying")
            raise ClusterUnavailable(f"etcd refused the change ({message}): nothing was changed")

        return self._store.commit(conditions, operations).addCallbacks(committed, failed)

    def version(self, kind: str, name: str) -> int | None:
        record = self.records.get(_key(kind, name))
        return record.mod_revision if record is not None else None

    def changed_at(self, kind: str, name: str) -> float | None:
        record = self.records.get(_key(kind, name))
        return record.changed_at if record is not None else None

    def view(self) -> ClusterView:
        return ClusterView(
            name=self._name, prefix=self.prefix.rstrip("/"), instance=self.instance, endpoints=self._endpoints,
            available=self.available, revision=self.revision, since=self.since, last_error=self.last_error,
            errors=self.errors, members=tuple(self.members[name] for name in sorted(self.members)),
        )

    # Keys

    def _take(self, full_key: str, value: bytes, mod_revision: int) -> None:
        """Record one key's new value (a member's, or a resource's)."""
        key = full_key[len(self.prefix):] if full_key.startswith(self.prefix) else None
        if key is None:
            return
        if key.startswith(records.MEMBERS):
            member = member_from(value)
            if member is not None:
                self.members[key[len(records.MEMBERS):]] = member
            return
        try:
            self.records[key] = records.decode(value, mod_revision)
        except ValueError as e:
            log.error("cluster {name}: key {key} ignored: {problem}", name=self._name, key=full_key, problem=e)

    def _forget(self, full_key: str) -> None:
        key = full_key[len(self.prefix):]
        if key.startswith(records.MEMBERS):
            self.members.pop(key[len(records.MEMBERS):], None)
        else:
            self.records.pop(key, None)


def member_value(member: MemberView) -> bytes:
    """What a member publishes under C{members/<instance>}."""
    return json.dumps({
        "instance": member.instance, "address": member.address, "version": member.version, "pid": member.pid,
        "started_at": member.started_at, "heartbeat": member.heartbeat,
        "applied_revision": member.applied_revision, "errors": list(member.errors),
    }, sort_keys=True).encode("utf-8")


def member_from(value: bytes) -> MemberView | None:
    """The member a C{members/} key holds; None (logged) when it is not one."""
    try:
        document = json.loads(value.decode("utf-8"))
        return MemberView(
            instance=str(document["instance"]), address=str(document["address"]),
            version=str(document["version"]), pid=int(document["pid"]),
            started_at=float(document["started_at"]), heartbeat=float(document["heartbeat"]),
            applied_revision=int(document["applied_revision"]),
            errors=tuple(str(e) for e in document["errors"]),
        )
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        log.error("cluster: a member key that is not a member ignored: {problem}", problem=e)
        return None


def _key(kind: str, name: str) -> str:
    return records.server_key(name) if kind == "server" else records.backend_key(name)


def _described(writes: dict[str, dict[str, Any]]) -> str:
    """The resources of C{writes} in words: C{server "a", /v1 server "b"}."""
    names = []
    for key in writes:
        kind, _, quoted = key.partition("/")
        names.append(f'{"server" if kind == "servers" else "/v1 server"} {unquote(quoted)!r}')
    return ", ".join(names)
