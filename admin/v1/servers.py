"""
C{/v1/servers}: backends.  One with the id C{host:port} for each backend
found by a service's discovery (static lists included); one by its given name
for each backend created through the API, which serves once it is linked to
services with static discovery.  C{PUT .../set?state=} and C{.../clear}
change the admin state: C{maintenance} takes no new connections, C{drain}
keeps its live relays and takes no new ones.  The statistics are summed over
the worker processes (C{connections}: the live ones, to watch a drain);
C{state} follows worker 0's health checks and discovery.

C{PATCH} on a backend found by discovery overrides its C{weight},
C{priority} and C{max_connections} (C{null} clears an override; a value
equal to the one in effect changes nothing); C{attributes.overrides} shows
those set.  Its C{address}, C{port} and C{sni} are its discovery's (422).
C{DELETE .../sessions} closes its every session (L{IControl.close_backend_sessions}).
"""

from __future__ import annotations

from typing import Any

from admin.v1 import documents
from admin.v1.errors import bad_request, conflict, unprocessable
from admin.v1.health import health_attributes
from admin.v1.kind import Kind
from balancer.config.errors import ConfigError
from balancer.config.fields import join
from balancer.config.overrides import OVERRIDABLE
from balancer.control.errors import NotOverridable, UnknownBackend
from balancer.control.views import BackendView

#: The admin states C{set} and C{clear} take.
STATES = ("maintenance", "drain")

_STATE_NAMES = {"maintenance": "Maintenance", "drain": "Draining"}

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


def server_ids(backends: dict[str, BackendView], service: str) -> list[str]:
    """The ids of the servers service C{service} uses (C{backends}: L{IControl.backends}), in its pool's order."""
    return [id for id, view in backends.items() if service in view.services]


def statistics(view: BackendView) -> dict[str, int]:
    """
    A server's statistics: its figures in the pool of each service that uses
    it, added up, each summed over the worker processes.
    """
    totals = dict.fromkeys(FIGURES, 0)
    for entry in view.entries:
        for name, key in FIGURES.items():
            totals[name] += entry.statistics[key]
    return totals


def current_services(current: dict[str, Any]) -> list[str]:
    """The ids of the services a server's resource object C{current} links to."""
    return [entry["id"] for entry in current["relationships"]["services"]["data"]]


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
    shared_as = "backend"
    collection_methods = ("GET", "HEAD", "POST")
    member_methods = ("GET", "HEAD", "PATCH", "DELETE")
    writable = ("services",)

    def members(self) -> list[dict[str, Any]]:
        return [self._resource(view) for view in self.control.backends().values()]

    def get(self, id: str) -> dict[str, Any]:
        try:
            view = self.control.backend(id)
        except UnknownBackend:
            raise self.missing(id) from None
        return self._resource(view)

    def _resource(self, view: BackendView) -> dict[str, Any]:
        """The resource object of backend C{view}."""
        admin = view.admin_state
        if admin in _STATE_NAMES:
            state = _STATE_NAMES[admin]
        else:
            state = "Running" if view.serving else "Down"
        attributes = {
            "state": state,
            "admin_state": admin,
            "origin": view.origin,
            "parameters": view.parameters,
            "overrides": view.overrides,
            "statistics": statistics(view),
            **health_attributes(view),
        }
        services = view.services
        relationships = {"services": ("services", services), "monitors": ("monitors", services)}
        return documents.resource(self.type, view.id, attributes, relationships)

    def view(self, resource: dict[str, Any]) -> Any:
        """Parameters, admin state and links: health (C{state}, the checks) and statistics left out."""
        live = ("statistics", "state", "last_check", "state_changed_at")
        attributes = {k: v for k, v in resource["attributes"].items() if k not in live}
        return {**resource, "attributes": attributes}

    def changed_at(self, id: str) -> float:
        """The latest change of the server itself or of a service that uses it."""
        view = self.control.backends().get(id)
        services = view.services if view is not None else []
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
        if current["attributes"]["origin"] != "api":
            await self._override(id, data, current)
            return
        self._created(id)
        parameters = documents.merge(current["attributes"]["parameters"], documents.parameters(data) or {})
        services = documents.related_ids(data, "services", "services")
        try:
            await self.control.update_backend(id, parameters, services)
        except ConfigError as e:
            raise documents.config_problems(e, join("backends", id)) from None

    async def _override(self, id: str, data: dict[str, Any], current: dict[str, Any]) -> None:
        """
        PATCH on a backend found by discovery: the parameters given that
        differ from those in effect become overrides (C{null} clears one);
        its links are its services' discovery's.

        @raise ApiError: 422 naming a read-only parameter that changes or a bad value; 409 for a link.
        """
        if documents.related_ids(data, "services", "services") not in (None, current_services(current)):
            raise conflict(f'server "{id}" comes from the discovery of its services; its links are theirs')
        given = documents.parameters(data) or {}
        effective = current["attributes"]["parameters"]
        readonly = sorted(k for k in given if k not in OVERRIDABLE and given[k] != effective.get(k))
        if readonly:
            raise unprocessable([
                (f"/data/attributes/parameters/{documents.escape(k)}",
                 f'parameters.{k} is read-only: server "{id}" comes from the discovery of its services; '
                 f"only {', '.join(OVERRIDABLE)} can be overridden")
                for k in readonly
            ])
        changes = {k: v for k, v in given.items() if k in OVERRIDABLE and (v is None or v != effective.get(k))}
        if not changes:
            return
        try:
            await self.control.set_override(id, changes)
        except ConfigError as e:
            raise documents.config_problems(e, join("overrides", id)) from None
        except NotOverridable as e:
            raise conflict(str(e)) from None

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
        view = self.control.backends().get(id)
        if view is None or view.origin != "api":
            raise conflict(
                f'server "{id}" comes from the discovery of its services; change it there '
                "(only servers created through the API are changed or deleted here)"
            )
