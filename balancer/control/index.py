"""
The backend index of the /v1 API: every backend by its /v1 id (a created
backend's name, else C{host:port}), made from the service views and the
catalogue of created backends.
"""

from __future__ import annotations

from typing import Mapping

from balancer.backends import ACTIVE
from balancer.config.addresses import split_host_port
from balancer.config.overrides import OverrideConfig
from balancer.control.catalogue import BackendCatalogue, parameters_of
from balancer.control.views import BackendView, PoolEntry, ServiceView


def backend_views(
    services: list[ServiceView],
    catalogue: BackendCatalogue,
    states: Mapping[str, str],
    overrides: Mapping[str, OverrideConfig],
) -> dict[str, BackendView]:
    """
    Every backend by /v1 id: the created backends first (in the order they
    were created, linked or not), then those of the services' pools in
    order, then those that only an override names (no pool has them now:
    their discovery dropped them, or has not found them yet), so that the
    override can be seen and cleared.

    @param states: the admin states set on backends, by /v1 id.
    @param overrides: the overrides in effect, by C{host:port} (a backend found by discovery's /v1 id).
    """
    entries: dict[str, list[PoolEntry]] = {name: [] for name in catalogue.records}
    for service in services:
        claims = catalogue.claims(service.name)
        for entry in service.pool:
            entries.setdefault(claims.get(entry.key, entry.key), []).append(entry)
    for key in overrides:
        entries.setdefault(key, [])
    views = {}
    for id, used in entries.items():
        record = catalogue.records.get(id)
        override = overrides.get(id) if record is None else None
        if record is not None:
            parameters = parameters_of(record)
        elif not used and override is not None:
            address = split_host_port(id, allow_port_zero=False)
            parameters = {"address": address.host, "port": address.port, **override.values()}
        else:
            spec = used[0].spec
            parameters = {"address": spec.host, "port": spec.port, "weight": spec.weight,
                          "priority": spec.priority, "max_connections": spec.max_connections,
                          **({"sni": spec.sni} if spec.sni else {})}
        views[id] = BackendView(
            id=id,
            origin="api" if record is not None else "discovery",
            parameters=parameters,
            admin_state=states.get(id, ACTIVE),
            entries=tuple(used),
            overrides=override.values() if override is not None else {},
        )
    return views
