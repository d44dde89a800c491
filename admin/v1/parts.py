"""
L{ServicePart}: a resource that is one part of a service's definition (its
listener, monitor or filter), with the service's name as its id.  Changing
it changes the service's definition, applied and persisted like any change
of a service.
"""

from __future__ import annotations

from typing import Any

from admin.v1 import documents
from admin.v1.errors import unprocessable
from admin.v1.kind import Kind
from balancer.config.errors import ConfigError
from balancer.config.fields import join


class ServicePart(Kind):
    """
    Part of a service's definition as a resource of its own.

    @cvar keys: the definition keys the part owns, or None for one whole section.
    @cvar section: the definition's section the part is, when C{keys} is None.
    """

    member_methods = ("GET", "HEAD", "PATCH")
    section = ""

    def ids(self) -> list[str]:
        return self.control.server_names()

    def get(self, id: str) -> dict[str, Any]:
        if id not in self.control.server_names():
            raise self.missing(id)
        server = self.control.server(id)
        return documents.resource(self.type, id, self.attributes(id, server), self.relationships(id))

    def attributes(self, id: str, server: Any) -> dict[str, Any]:
        """The resource's attributes (C{parameters} among them)."""
        raise NotImplementedError

    def relationships(self, id: str) -> dict[str, tuple[str, list[str]]]:
        """The resource's relationships."""
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
