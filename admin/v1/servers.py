"""
C{/v1/servers}: backends.  One with the id C{host:port} for each backend
found by a service's discovery (static lists included); one by its given name
for each backend created through the API, which serves once it is linked to
services with static discovery.  C{PUT .../set?state=} and C{.../clear}
change the admin state: C{maintenance} takes no new connections, C{drain}
keeps its live relays and takes no new ones.  The statistics are summed over
the worker processes; C{state} follows worker 0's health checks and discovery.
"""

from __future__ import annotations

from typing import Any

from admin.v1 import documents
from admin.v1.errors import bad_request, conflict
from admin.v1.kind import Kind
from balancer.backends import DRAIN, MAINTENANCE, Backend
from balancer.config.errors import ConfigError
from balancer.config.fields import join
from balancer.control import IControl

#: The admin states C{set} and C{clear} take.
STATES = (MAINTENANCE, DRAIN)

_STATE_NAMES = {MAINTENANCE: "Maintenance", DRAIN: "Draining"}

#: A server's statistics, each from the figure of a backend's C{stats} it adds up.
FIGURES = {
    "connections": "active_connections",
    "total_connections": "total_connections",
    "refused": "refused_connections",
    "rx": "rx",
    "tx": "tx",
    "rx_second": "rx_second",
    "tx_second": "tx_second",
}


def server_ids(control: IControl, service: str) -> list[str]:
    """The ids of the servers service C{service} uses, in its pool's order."""
    return [id for id, entries in control.backend_index().items() if any(s == service for s, _ in entries)]


def id_of(control: IControl, service: str, backend: Backend) -> str | None:
    """The /v1 id of C{backend} in the pool of C{service}."""
    for id, entries in control.backend_index().items():
        if any(s == service and b is backend for s, b in entries):
            return id
    return None


def statistics(control: IControl, entries: list[tuple[str, Backend]]) -> dict[str, int]:
    """
    A server's statistics: its figures in the pool of each service that uses
    it (C{entries}, from L{IControl.backend_index}), added up, each summed
    over the worker processes (L{IControl.statistics}).
    """
    by_service = {service: control.statistics(service) for service in dict.fromkeys(s for s, _ in entries)}
    totals = dict.fromkeys(FIGURES, 0)
    for service, backend in entries:
        stats = backend_stats(by_service[service], backend)
        for name, key in FIGURES.items():
            totals[name] += stats[key]
    return totals


def backend_stats(document: dict[str, Any], backend: Backend) -> dict[str, Any]:
    """The C{stats} of C{backend} in its server's statistics document (matched by host and port)."""
    address = (backend.host, str(backend.port))
    return next(b["stats"] for b in document["backends"] if (b["host"], b["port"]) == address)


def parse_state(args: dict[bytes, list[bytes]], required: bool) -> str | None:
    """
    The C{state} query parameter of C{set} (required) or C{clear} (optional).

    @raise ApiError: 400 when missing (for C{set}) or not maintenance/drain.
    """
    values = args.get(b"state")
    if not values:
        if required:
            raise bad_request('state is required: "maintenance" or "drain"')
        return None
    state = values[-1].decode("utf-8", "replace")
    if state not in STATES:
        raise bad_request(f'state must be "maintenance" or "drain", got "{state}"')
    return state


class Servers(Kind):
    """Backends as /v1 servers."""

    type = "servers"
    collection_methods = ("GET", "HEAD", "POST")
    member_methods = ("GET", "HEAD", "PATCH", "DELETE")
    writable = ("services",)

    def ids(self) -> list[str]:
        return list(self.control.backend_index())

    def get(self, id: str) -> dict[str, Any]:
        index = self.control.backend_index()
        if id not in index:
            raise self.missing(id)
        entries = index[id]
        created = self.control.created_backends().get(id)
        if created is not None:
            parameters = {k: v for k, v in created.items() if k != "services"}
        else:
            spec = entries[0][1].spec
            parameters = {"address": spec.host, "port": spec.port, "weight": spec.weight,
                          "priority": spec.priority, "max_connections": spec.max_connections,
                          **({"sni": spec.sni} if spec.sni else {})}
        admin = self.control.backend_state(id)
        if admin in _STATE_NAMES:
            state = _STATE_NAMES[admin]
        else:
            state = "Running" if any(b.live and b.discovered for _, b in entries) else "Down"
        services = list(dict.fromkeys(s for s, _ in entries))
        attributes = {
            "state": state,
            "admin_state": admin,
            "origin": "api" if created is not None else "discovery",
            "parameters": parameters,
            "statistics": statistics(self.control, entries),
        }
        relationships = {"services": ("services", services), "monitors": ("monitors", services)}
        return documents.resource(self.type, id, attributes, relationships)

    def view(self, resource: dict[str, Any]) -> Any:
        """Parameters, admin state and links: health (C{state}) and statistics left out."""
        attributes = {k: v for k, v in resource["attributes"].items() if k not in ("statistics", "state")}
        return {**resource, "attributes": attributes}

    def changed_at(self, id: str) -> float:
        """The latest change of the server itself or of a service that uses it."""
        services = {s for s, _ in self.control.backend_index().get(id, [])}
        return max([self.control.changed_at("backend", id), *(self.control.changed_at("server", s) for s in services)])

    def lock_key(self, id: str) -> str:
        return f"servers/{id}"

    async def create(self, data: dict[str, Any]) -> str:
        name = data.get("id")
        if not isinstance(name, str):
            raise bad_request('a new server needs an "id" (its name)', "/data/id")
        services = documents.related_ids(data, "services", "services") or []
        try:
            await self.control.create_backend(name, documents.parameters(data), services)
        except ConfigError as e:
            raise documents.config_problems(e, join("backends", name)) from None
        return name

    async def update(self, id: str, data: dict[str, Any], current: dict[str, Any]) -> None:
        self._created(id)
        parameters = documents.merge(current["attributes"]["parameters"], documents.parameters(data) or {})
        services = documents.related_ids(data, "services", "services")
        try:
            await self.control.update_backend(id, parameters, services)
        except ConfigError as e:
            raise documents.config_problems(e, join("backends", id)) from None

    async def delete(self, id: str) -> None:
        self.get(id)
        self._created(id)
        await self.control.remove_backend(id)

    async def relate(self, id: str, name: str, ids: list[str]) -> None:
        self._created(id)
        current = self.get(id)
        await self.update(id, {"relationships": {name: {"data": [{"id": i, "type": "services"} for i in ids]}}}, current)

    def _created(self, id: str) -> None:
        """@raise ApiError: 409 for a server from discovery (its service's discovery owns it)."""
        if id not in self.control.created_backends():
            raise conflict(
                f'server "{id}" comes from the discovery of its services; change it there '
                "(only servers created through the API are changed or deleted here)"
            )
