"""
A cluster member's start: the shared state read before the reactor runs
(blocking, bounded by C{etcd_timeout} per endpoint), and the configuration
the balancer binds first.

The servers the shared state defines or replaces are not bound at start
with the file's: they are applied right after, through the control layer
(L{balancer.control.controller.Controller.apply_shared}), like any change
that arrives from the cluster, so one that cannot bind on this host is
reported instead of stopping the start.  When etcd does not answer, the
balancer starts with its last copy of the shared state (C{[state] path})
and resyncs when etcd answers.
"""

from __future__ import annotations

import attrs
from twisted.logger import Logger

from balancer.cluster.etcd import EtcdOptions, read_prefix_now
from balancer.cluster.store import Snapshot, StoreRefused, StoreUnavailable
from balancer.config.schema import ClusterConfig, Config
from balancer.state import RuntimeChanges

log = Logger()


@attrs.frozen
class SharedAtStart:
    """
    What a cluster member starts with.

    @ivar snapshot: the cluster's keys as read at start; None when etcd did not answer.
    @ivar problem: why etcd could not be read (None when it was).
    """

    snapshot: Snapshot | None
    problem: str | None


def etcd_options(cluster: ClusterConfig) -> EtcdOptions:
    """How C{[cluster]} says etcd is reached (besides its endpoints): for the start's read and the reactor's client alike."""
    return EtcdOptions(
        user=cluster.etcd_user or None, password=cluster.etcd_password or None, ca=cluster.etcd_ca or None,
        cert=cluster.etcd_cert or None, key=cluster.etcd_key or None, timeout=cluster.etcd_timeout,
    )


def read_at_start(cluster: ClusterConfig) -> SharedAtStart:
    """Read the cluster's keys now, blocking; a store that does not answer is a problem, not an error."""
    try:
        snapshot = read_prefix_now(list(cluster.etcd_endpoints), cluster.key_prefix() + "/", **etcd_options(cluster))
    except (StoreUnavailable, StoreRefused) as e:
        return SharedAtStart(None, str(e))
    return SharedAtStart(snapshot, None)


def bound_first(configured: Config, changes: RuntimeChanges) -> Config:
    """
    The configuration a cluster member binds at start: the file's servers
    without those the shared state deletes or defines (those come right
    after), with the shared overrides.
    """
    servers = {name: server for name, server in configured.servers.items()
               if name not in changes.deleted and name not in changes.servers}
    return attrs.evolve(configured, servers=servers, overrides=changes.overridden(configured.overrides))
