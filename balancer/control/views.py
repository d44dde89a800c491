"""
Frozen views of the running balancer: what the admin API, the metrics, the
worker supervisor (and the coming CLI, dashboard and cluster code) read.

A view is a copy taken when it is asked for; it never changes and never
reaches back into the running services (docs/DESIGN.md §7).  Its mappings
(definitions, statistics) are fresh copies too: a reader may keep or
reshape them.  L{balancer.control.running} builds them.
"""

from __future__ import annotations

from typing import Any

import attrs

from balancer.config.addresses import BackendSpec
from balancer.config.schema import ServerConfig
from balancer.health.results import CheckResult


@attrs.frozen
class ProcessInfo:
    """
    The balancer process.

    @ivar started_at: when it started, in epoch seconds of its clock.
    @ivar time: now, on the same clock.
    @ivar config_path: the configuration file's absolute path.
    @ivar revision: a number that grows with every configuration change.
    """

    pid: int
    version: str
    started_at: float
    time: float
    config_path: str
    revision: int


@attrs.frozen
class PoolEntry:
    """
    One backend in one service's pool.

    @ivar key: C{host:port}, its identity within the pool.
    @ivar spec: address, weight, priority, limits, as configured or discovered.
    @ivar live: the health check's verdict (True without health checks).
    @ivar discovered: whether the service's latest discovery still lists it.
    @ivar admin_state: C{"active"}, C{"maintenance"} or C{"drain"}.
    @ivar statistics: its C{stats} in the service's statistics document,
        summed over the worker processes (C{total_connections},
        C{active_connections}, C{refused_connections}, C{rx}, C{tx}, ...).
    @ivar check: what worker 0's health checks of it found: the latest
        check's outcome, time and duration, the counts, and when the checks
        last turned it live or down; None before its
        first check has ended, or without health checks.
    """

    service: str
    key: str
    spec: BackendSpec
    live: bool
    discovered: bool
    admin_state: str
    statistics: dict[str, Any]
    check: CheckResult | None = None


@attrs.frozen
class DiscoveryStatus:
    """
    The fetches of one service's running discovery (worker 0's; they start
    again from 0 when its discovery or health check is reconfigured).

    @ivar kind: the discovery's C{kind}.
    @ivar fetches: fetches started.
    @ivar failures: fetches that failed (error, timeout, bad answer).
    @ivar last_success: when the latest good fetch ended, in epoch seconds
        of the balancer's clock; None before any.
    @ivar last_error: the reason of the latest failed fetch; None before any.
    """

    kind: str
    fetches: int
    failures: int
    last_success: float | None
    last_error: str | None


@attrs.frozen
class ServiceView:
    """
    One running server (C{[servers.<name>]}, a /v1 service).

    @ivar config: its definition as configuration objects.
    @ivar definition: the same in configuration key names (secrets included
        unless the control redacts them).
    @ivar running: whether it is started.
    @ivar address: the address listened on (the real port when configured with 0).
    @ivar port: the port listened on.
    @ivar sessions: how many client sessions (relays) it has in this process.
    @ivar statistics: its statistics document summed over the worker
        processes: gobetween's fields, C{backends}, and the server counters
        of L{balancer.stats.SERVER_COUNTERS}.
    @ivar pool: its backends, in the pool's order.
    @ivar discovery: its discovery's fetches; None while it is stopped.
    """

    name: str
    config: ServerConfig
    definition: dict[str, Any]
    running: bool
    address: str
    port: int
    sessions: int
    statistics: dict[str, Any]
    pool: tuple[PoolEntry, ...]
    discovery: DiscoveryStatus | None = None


@attrs.frozen
class BackendView:
    """
    One backend as the /v1 API knows it: by a created backend's name, or by
    C{host:port} for one found by discovery.

    @ivar origin: C{"api"} (created through the API) or C{"discovery"}.
    @ivar parameters: C{address}, C{port}, C{weight}, C{priority},
        C{max_connections} and C{sni} when set.
    @ivar admin_state: the admin state set on it: C{"active"},
        C{"maintenance"} or C{"drain"}.
    @ivar overrides: the parameters an override sets on a backend found by
        discovery (C{[overrides."host:port"]}, the API), already in its
        C{parameters}; empty when none (always for a created backend).
    @ivar entries: where it is in use, one entry per service (none for a
        created backend linked nowhere).
    """

    id: str
    origin: str
    parameters: dict[str, Any]
    admin_state: str
    entries: tuple[PoolEntry, ...]
    overrides: dict[str, int] = attrs.Factory(dict)

    @property
    def services(self) -> list[str]:
        """The services that use it, each once, in order."""
        return list(dict.fromkeys(entry.service for entry in self.entries))

    @property
    def serving(self) -> bool:
        """Whether some service has it live and discovered."""
        return any(entry.live and entry.discovered for entry in self.entries)


@attrs.frozen
class SessionView:
    """
    One live client session (a relay) of worker 0.

    @ivar client_host: the client's address.
    @ivar client_port: the client's port (None if its address has none).
    @ivar backend: the C{host:port} of its backend (None before one is chosen).
    @ivar server: the /v1 id of that backend (None without one).
    @ivar rx: bytes relayed from the backend to the client.
    @ivar tx: bytes relayed from the client to the backend.
    @ivar started_at: when it began, in epoch seconds of the balancer's clock.
    """

    id: int
    service: str
    client_host: str
    client_port: int | None
    backend: str | None
    server: str | None
    rx: int
    tx: int
    started_at: float


@attrs.frozen
class MemberView:
    """
    One balancer of the cluster, as it last published itself.

    @ivar instance: its name (C{[cluster] instance}).
    @ivar address: where its API listens (C{host:port}), "" without an API.
    @ivar started_at: when it started, epoch seconds.
    @ivar heartbeat: when it last published itself, epoch seconds.
    @ivar applied_revision: the store revision whose changes it has applied.
    @ivar errors: the shared changes it could not apply, one line each.
    """

    instance: str
    address: str
    version: str
    pid: int
    started_at: float
    heartbeat: float
    applied_revision: int
    errors: tuple[str, ...]


@attrs.frozen
class ClusterView:
    """
    The cluster this balancer belongs to (C{[cluster]}).

    @ivar available: whether the store answers (writes through the API answer 503 when not).
    @ivar revision: the store revision this balancer has applied.
    @ivar since: when C{available} last changed, epoch seconds.
    @ivar last_error: why the store was last unreachable; None if it never was.
    @ivar errors: the shared changes this balancer could not apply.
    @ivar members: the balancers registered now (this one included once it has registered).
    """

    name: str
    prefix: str
    instance: str
    endpoints: tuple[str, ...]
    available: bool
    revision: int
    since: float
    last_error: str | None
    errors: tuple[str, ...]
    members: tuple[MemberView, ...]
