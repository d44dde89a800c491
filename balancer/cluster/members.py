"""
L{Membership}: this balancer registered under C{<prefix>/members/<instance>}
with a lease, kept alive and republished (its heartbeat, the revision it has
applied, the changes it could not apply) every third of the lease's time.
A stopped balancer revokes its lease: it leaves the list at once; one that
dies leaves it when the lease expires.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancer import __version__
from balancer.cluster import records
from balancer.cluster.shared import SharedState, member_value
from balancer.cluster.store import IKeyValueStore, Put, StoreRefused, StoreUnavailable
from balancer.control.views import MemberView

log = Logger()


class Membership(Service):
    """Registers this balancer in its cluster and keeps it registered."""

    def __init__(self, store: IKeyValueStore, shared: SharedState, address: Callable[[], str],
                 clock: IReactorTime, ttl: float, started_at: float) -> None:
        """
        @param address: where this balancer's API listens (C{host:port}), "" without one.
        @param ttl: the lease's time to live, in seconds.
        """
        self._store = store
        self._shared = shared
        self._address = address
        self._clock = clock
        self._ttl = max(2, int(ttl))
        self._started_at = started_at
        self._lease = 0
        self._busy = False
        self._loop = LoopingCall(self.publish)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._loop.start(self._ttl / 3, now=True)

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        if self._loop.running:
            self._loop.stop()
        lease, self._lease = self._lease, 0
        if not lease or not self._shared.available:
            return succeed(None)
        revoking = self._store.revoke_lease(lease)
        return revoking.addErrback(lambda reason: log.info("cluster: the lease was not revoked: {why}",
                                                           why=reason.getErrorMessage()))

    def member(self) -> MemberView:
        """This balancer as it publishes itself now."""
        return MemberView(
            instance=self._shared.instance, address=self._address(), version=__version__, pid=os.getpid(),
            started_at=self._started_at, heartbeat=self._clock.seconds(),
            applied_revision=self._shared.revision, errors=self._shared.errors,
        )

    def publish(self) -> None:
        """Keep the lease alive (a new one when it expired) and publish this balancer under it."""
        if self._busy or not self.running:
            return
        self._busy = True
        renewing = self._store.keep_alive(self._lease) if self._lease else succeed(0)
        renewing.addCallback(self._renewed)
        renewing.addCallback(lambda _: self._store.commit(
            [], [Put(self._shared.prefix + records.MEMBERS + self._shared.instance, member_value(self.member()),
                     self._lease)]))
        renewing.addErrback(self._failed)
        renewing.addBoth(self._done)

    def _renewed(self, ttl: int) -> Deferred[None] | None:
        if ttl > 0:
            return None
        granting = self._store.grant_lease(self._ttl)

        def granted(lease: int) -> None:
            self._lease = lease

        return granting.addCallback(granted)

    def _failed(self, reason: Failure) -> None:
        if reason.check(StoreRefused):
            log.error("cluster: etcd refused this balancer's registration ({why}): trying again with a new lease",
                      why=reason.getErrorMessage())
            self._lease = 0
            return
        reason.trap(StoreUnavailable)
        if self._shared.available and self._shared.on_lost is not None:
            self._shared.on_lost(reason.getErrorMessage())

    def _done(self, result: object) -> None:
        self._busy = False
