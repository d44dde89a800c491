"""
L{ClusterService}: a cluster member's moving parts under one service:
the shared state, the sync that watches the prefix, the membership with
its lease, and the store client they share (closed last).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from balancer.cluster import records
from balancer.cluster.etcd import EtcdGateway
from balancer.cluster.members import Membership
from balancer.cluster.records import Record
from balancer.cluster.shared import SharedState
from balancer.cluster.startup import SharedAtStart, etcd_options
from balancer.cluster.store import IKeyValueStore
from balancer.cluster.sync import ClusterSync
from balancer.config.schema import ClusterConfig
from balancer.control.shared import ApplyShared
from balancer.state import RuntimeChanges

log = Logger()


def etcd_store(cluster: ClusterConfig, reactor: Any) -> IKeyValueStore:
    """The etcd client of C{[cluster]}."""
    return EtcdGateway(reactor, list(cluster.etcd_endpoints), **etcd_options(cluster))


def shared_state(cluster: ClusterConfig, store: IKeyValueStore, at_start: SharedAtStart, cached: RuntimeChanges,
                 reactor: Any) -> SharedState:
    """
    This member's shared state at start: the keys read then, or, when etcd
    did not answer, its last copy (C{cached}, from C{[state] path}) until it does.
    """
    shared = SharedState(store, cluster.key_prefix(), cluster.instance_name(), cluster.etcd_endpoints,
                         cluster.cluster_name, reactor)
    if at_start.snapshot is not None:
        shared.load(at_start.snapshot)
        shared.reachable()
        return shared
    now = reactor.seconds()
    shared.records = {key: Record(fields, 0, now, shared.instance) for key, fields in records.layout(cached).items()}
    shared.last_error = at_start.problem
    log.error("cluster {name}: etcd could not be read at start ({why}): serving {what} until it can",
              name=cluster.cluster_name, why=at_start.problem,
              what="the last copy of the shared state" if shared.records else "the configuration file")
    return shared


class ClusterService(MultiService):
    """The sync and the membership of one cluster member; the store is closed once both have stopped."""

    def __init__(self, cluster: ClusterConfig, store: IKeyValueStore, shared: SharedState, apply: ApplyShared,
                 api_address: Callable[[], str], reactor: Any, started_at: float) -> None:
        super().__init__()
        self._store = store
        self.shared = shared
        ClusterSync(store, shared, apply, reactor).setServiceParent(self)
        Membership(store, shared, api_address, reactor, cluster.lease_ttl, started_at).setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        stopped: Deferred[Any] = super().stopService()
        return stopped.addBoth(lambda _: self._store.close())
