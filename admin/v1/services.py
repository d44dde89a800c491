"""
C{/v1/services}: the configured servers (C{[servers.<name>]}), each with its
definition as C{parameters} in the configuration's key names, its state and
statistics, and its servers, filter, monitor and listener.  The statistics
are summed over the worker processes, but for C{sessions}: worker 0's live
relays, those C{/v1/sessions} lists.
"""

from __future__ import annotations

from typing import Any

from admin.v1 import documents
from admin.v1.errors import bad_request, conflict, not_found, unprocessable
from admin.v1.kind import Kind
from admin.v1.servers import server_ids
from balancer.config.errors import ConfigError
from balancer.config.fields import join
from balancer.control.views import BackendView, ServiceView


#: A service's statistics, each from the figure of the server's statistics document it is.
FIGURES = {
    "connections": "active_connections",
    "total_connections": "total_connections",
    "rx": "rx_total",
    "tx": "tx_total",
    "rx_second": "rx_second",
    "tx_second": "tx_second",
    "over_limit": "over_limit",
    "no_backend": "no_backend",
    "denied": "denied",
}


def statistics(document: dict[str, Any]) -> dict[str, int]:
    """
    A service's statistics from its server's statistics document
    (L{balancer.control.views.ServiceView.statistics}, summed over the worker processes).
    """
    return {name: document[key] for name, key in FIGURES.items()}


class Services(Kind):
    """The configured servers as /v1 services."""

    type = "services"
    collection_methods = ("GET", "HEAD", "POST")
    member_methods = ("GET", "HEAD", "PATCH", "DELETE")
    writable = ("servers",)

    def members(self) -> list[dict[str, Any]]:
        backends = self.control.backends()
        return [self._resource(view, backends) for view in self.control.services()]

    def get(self, id: str) -> dict[str, Any]:
        if id not in self.control.server_names():
            raise self.missing(id)
        return self._resource(self.control.service(id), self.control.backends())

    def _resource(self, view: ServiceView, backends: dict[str, BackendView]) -> dict[str, Any]:
        """The resource object of service C{view}; C{backends} are L{IControl.backends}."""
        id = view.name
        attributes = {
            "router": view.config.balance,
            "protocol": view.config.protocol,
            "state": "Started" if view.running else "Stopped",
            "listening_on": view.address,
            "parameters": view.definition,
            "statistics": {**statistics(view.statistics), "sessions": view.sessions},
        }
        relationships = {
            "servers": ("servers", server_ids(backends, id)),
            "filters": ("filters", [id]),
            "monitors": ("monitors", [id]),
            "listeners": ("listeners", [id]),
        }
        return documents.resource(self.type, id, attributes, relationships)

    def view(self, resource: dict[str, Any]) -> Any:
        """Definition and links: state, address and statistics left out."""
        attributes = {k: v for k, v in resource["attributes"].items() if k in ("router", "protocol", "parameters")}
        return {**resource, "attributes": attributes}

    async def create(self, data: dict[str, Any]) -> str:
        name = data.get("id")
        if not isinstance(name, str):
            raise bad_request('a new service needs an "id" (its name)', "/data/id")
        definition = documents.parameters(data)
        if definition is None:
            raise unprocessable([("/data/attributes/parameters", "required: the service's definition (bind, discovery, ...)")])
        servers = documents.related_ids(data, "servers", "servers")
        self._only_created(name, servers or [], [])
        try:
            await self.control.add_server(name, definition)
        except ConfigError as e:
            raise documents.config_problems(e, join("servers", name)) from None
        if servers:
            try:
                await self.control.link_backends(name, servers)
            except BaseException:
                await self.control.remove_server(name)
                raise
        return name

    async def update(self, id: str, data: dict[str, Any], current: dict[str, Any]) -> None:
        servers = documents.related_ids(data, "servers", "servers")
        if servers is not None:
            self._only_created(id, servers, server_ids(self.control.backends(), id))
        given = documents.parameters(data)
        if given is not None:
            definition = documents.merge(current["attributes"]["parameters"], given)
            if definition != current["attributes"]["parameters"]:
                try:
                    await self.control.update_server(id, definition)
                except ConfigError as e:
                    raise documents.config_problems(e, join("servers", id)) from None
        if servers is not None:
            await self.control.link_backends(id, self._created_only(servers))

    async def delete(self, id: str) -> None:
        self.get(id)
        await self.control.remove_server(id)

    async def relate(self, id: str, name: str, ids: list[str]) -> None:
        self._only_created(id, ids, server_ids(self.control.backends(), id))
        await self.control.link_backends(id, self._created_only(ids))

    def _created_only(self, ids: list[str]) -> list[str]:
        """Those of C{ids} that are servers created through the API."""
        backends = self.control.backends()
        return [s for s in ids if s in backends and backends[s].origin == "api"]

    def _only_created(self, service: str, wanted: list[str], current: list[str]) -> None:
        """
        Servers from discovery cannot be linked or unlinked here: those of
        C{wanted} must be exactly those of C{current}.

        @raise ApiError: 404 for an unknown server, 409 for a discovered one added or left out.
        """
        backends = self.control.backends()
        created = {id for id, view in backends.items() if view.origin == "api"}
        known = set(backends)
        for id in wanted:
            if id not in known:
                raise not_found("servers", id)
        discovered_wanted = {s for s in wanted if s not in created}
        discovered_now = {s for s in current if s not in created}
        if discovered_wanted != discovered_now:
            changed = sorted(discovered_wanted ^ discovered_now)
            raise conflict(
                f'servers {", ".join(changed)} come from discovery: they follow the service\'s '
                "parameters.discovery and cannot be linked or unlinked here"
            )
