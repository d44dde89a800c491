"""
L{ServicePart}: a resource that is one part of a service's definition (its
listener, monitor or filter), with the service's name as its id.  Changing
it changes the service's definition, applied and persisted like any change
of a service.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from admin.v1 import documents
from admin.v1.errors import unprocessable
from admin.v1.kind import Kind
from balancer.config.errors import ConfigError
from balancer.config.fields import join
from balancer.control.views import BackendView, ServiceView

#: The backends by /v1 id (L{balancer.control.interface.IControl.backends}), read at most once.
Backends = Callable[[], dict[str, BackendView]]


class ServicePart(Kind):
    """
    Part of a service's definition as a resource of its own.

    @cvar keys: the definition keys the part owns, or None for one whole section.
    @cvar section: the definition's section the part is, when C{keys} is None.
    """

    member_methods = ("GET", "HEAD", "PATCH")
    section = ""

    def members(self) -> list[dict[str, Any]]:
        backends = functools.cache(self.control.backends)
        return [self._resource(view, backends) for view in self.control.services()]

    def get(self, id: str) -> dict[str, Any]:
        if id not in self.control.server_names():
            raise self.missing(id)
        return self._resource(self.control.service(id), functools.cache(self.control.backends))

    def _resource(self, view: ServiceView, backends: Backends) -> dict[str, Any]:
        """The resource object of service C{view}'s part."""
        return documents.resource(self.type, view.name, self.attributes(view), self.relationships(view.name, backends))

    def attributes(self, view: ServiceView) -> dict[str, Any]:
        """The resource's attributes (C{parameters} among them), from its service's view."""
        raise NotImplementedError

    def relationships(self, id: str, backends: Backends) -> dict[str, tuple[str, list[str]]]:
        """The resource's relationships (C{backends} for those that name servers)."""
        return {"services": ("services", [id])}

    def definition(self, id: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """The service's definition with this part replaced by C{parameters}."""
        return {**self.control.server_definition(id), self.section: parameters}

    def allowed(self) -> tuple[str, ...] | None:
        """The parameter names the part takes (None: the section's own validation decides)."""
        return None

    async def update(self, id: str, data: dict[str, Any], current: dict[str, Any]) -> None:
        given = documents.parameters(data)
        if given is None:
            return
        parameters = documents.merge(current["attributes"]["parameters"], given)
        allowed = self.allowed()
        if allowed is not None:
            unknown = [k for k in parameters if k not in allowed]
            if unknown:
                raise unprocessable([(f"/data/attributes/parameters/{documents.escape(k)}",
                                      f'"{k}" is not a {self.type[:-1]} parameter; expected one of {", ".join(allowed)}')
                                     for k in unknown])
        if parameters == current["attributes"]["parameters"]:
            return
        try:
            await self.control.update_server(id, self.definition(id, parameters))
        except ConfigError as e:
            prefix = join(join("servers", id), self.section) if self.section else join("servers", id)
            raise documents.config_problems(e, prefix) from None
