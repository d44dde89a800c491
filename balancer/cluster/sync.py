"""
L{ClusterSync}: keeps this balancer's copy of the cluster's keys current
and applies what other balancers change, through the control layer's own
path (L{balancer.control.controller.Controller.apply_shared}).

It watches the prefix from the revision it has seen; when the watch ends
because the store went away it retries, and when the store answers again
it reads the whole prefix (its current revision) and applies the
difference; so does a watch that fell behind the store's compaction.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancer.cluster.shared import SharedState
from balancer.cluster.store import (
    Event, IKeyValueStore, IWatch, Snapshot, StoreRefused, StoreUnavailable, WatchCompacted)
from balancer.control.shared import ApplyShared

log = Logger()

#: The first and the longest wait before trying an unreachable store again, in seconds.
RETRY_FIRST = 0.5
RETRY_LONGEST = 5.0


class ClusterSync(Service):
    """Watches the cluster's prefix and applies the changes made elsewhere."""

    def __init__(self, store: IKeyValueStore, shared: SharedState, apply: ApplyShared, clock: IReactorTime) -> None:
        """
        @param shared: loaded already when the store answered at start
            (C{shared.available}); the service then watches from its revision.
        @param apply: applies the runtime changes that arrived (read when their turn comes);
            fires with the problems that kept parts out.
        """
        self._store = store
        self._shared = shared
        self._apply_changes = apply
        self._clock = clock
        self._watch: IWatch | None = None
        self._retry: IDelayedCall | None = None
        self._delay = RETRY_FIRST
        self._applying = False
        self._again = False

    def startService(self) -> None:
        """Apply the shared state this balancer starts with, then watch (or read the prefix when etcd did not answer)."""
        super().startService()
        self._shared.on_lost = self.lost
        self._apply()
        if self._shared.available:
            self._start_watch()
        else:
            self._resync()

    def stopService(self) -> Any:
        super().stopService()
        self._shared.on_lost = None
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._stop_watch()

    def lost(self, reason: str) -> None:
        """The store stopped answering (a write or a heartbeat found out): start over once it answers."""
        if not self.running:
            return
        self._stop_watch()
        self._shared.unreachable(reason)
        self._schedule_retry()

    # Reading and watching

    def _resync(self) -> None:
        """Read the whole prefix, apply it, and watch from there."""
        self._retry = None
        reading = self._store.get_prefix(self._shared.prefix)
        reading.addCallbacks(self._loaded, self._unreachable)

    def _loaded(self, snapshot: Snapshot) -> None:
        if not self.running:
            return
        self._delay = RETRY_FIRST
        self._shared.load(snapshot)
        self._shared.reachable()
        self._apply()
        self._start_watch()

    def _start_watch(self) -> None:
        watch = self._store.watch_prefix(self._shared.prefix, self._shared.revision + 1, self._received)
        self._watch = watch
        watch.ended.addErrback(self._watch_ended, watch)

    def _stop_watch(self) -> None:
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()

    def _received(self, revision: int, events: Sequence[Event]) -> None:
        if self._shared.receive(revision, events):
            self._apply()

    def _watch_ended(self, reason: Failure, watch: IWatch) -> None:
        if watch is not self._watch or not self.running:
            return
        self._watch = None
        if reason.check(WatchCompacted):
            log.info("cluster: the watch fell behind etcd's compaction ({why}): reading the whole prefix again",
                     why=reason.getErrorMessage())
            self._resync()
            return
        self._unreachable(reason)

    def _unreachable(self, reason: Failure) -> None:
        if not self.running:
            return
        if not reason.check(StoreUnavailable, StoreRefused):
            log.failure("cluster: unexpected error from etcd", reason)
        self._shared.unreachable(reason.getErrorMessage())
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._retry is not None and self._retry.active():
            return
        self._retry = self._clock.callLater(self._delay, self._resync)
        self._delay = min(self._delay * 2, RETRY_LONGEST)

    # Applying

    def _apply(self) -> None:
        """Apply the shared changes as they are now; one application at a time, the latest state last."""
        if self._applying:
            self._again = True
            return
        self._applying = True
        self._again = False
        applying = self._apply_changes(self._shared.changes)
        applying.addCallbacks(self._applied, self._apply_failed)

    def _applied(self, problems: list[str]) -> None:
        self._shared.errors = tuple(problems)
        self._next()

    def _apply_failed(self, reason: Failure) -> None:
        log.failure("cluster: applying the shared changes failed", reason)
        self._shared.errors = (f"applying the shared changes failed: {reason.getErrorMessage()}",)
        self._next()

    def _next(self) -> None:
        self._applying = False
        if self._again and self.running:
            self._apply()
