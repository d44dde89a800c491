"""
L{Kind}: what the pipeline of L{admin.v1.api} needs from one resource type.
Each type's module subclasses it; methods a type does not support are not
in its C{collection_methods}/C{member_methods}, so the pipeline answers 405
before calling them.
"""

from __future__ import annotations

from typing import Any

from admin.v1 import conditional, documents
from admin.v1.errors import not_found
from balancer.control.interface import IControl


class Kind:
    """
    One resource type of /v1.

    @cvar type: the JSON:API type and the collection's path segment.
    @cvar collection_methods: what C{/v1/<type>} answers to.
    @cvar member_methods: what C{/v1/<type>/<id>} answers to.
    @cvar writable: relationship names C{PATCH /v1/<type>/<id>/relationships/<name>} changes.
    @cvar volatile: attributes left out of the C{ETag} (statistics and other live figures).
    @cvar shared_as: in a cluster, the kind of shared resource a member is
        (L{IControl.shared_version}): "server" for what a C{[servers.<name>]}
        defines, "backend" for a /v1 server; None for what is not shared.
    """

    type = ""
    collection_methods: tuple[str, ...] = ("GET", "HEAD")
    member_methods: tuple[str, ...] = ("GET", "HEAD")
    writable: tuple[str, ...] = ()
    volatile: tuple[str, ...] = ("statistics",)
    shared_as: str | None = "server"

    def __init__(self, control: IControl) -> None:
        self.control = control

    def collection_path(self) -> str:
        """The collection's path."""
        return documents.path(self.type)

    def member_path(self, id: str) -> str:
        """A member's path."""
        return documents.path(self.type, id)

    def get(self, id: str) -> dict[str, Any]:
        """
        The member's resource object.

        @raise ApiError: 404 if there is none.
        """
        raise NotImplementedError

    def members(self) -> list[dict[str, Any]]:
        """
        Every member's resource object, in order, from one read of the
        control interface: the work grows with the number of members, not
        with its square (never L{get} per member, which reads them all).
        """
        raise NotImplementedError

    def view(self, resource: dict[str, Any]) -> Any:
        """What the member's C{ETag} is computed from: the resource without its volatile attributes."""
        attributes = {k: v for k, v in resource.get("attributes", {}).items() if k not in self.volatile}
        return {**resource, "attributes": attributes}

    def tag(self, resource: dict[str, Any]) -> str:
        """The member's C{ETag}: of its L{view}, with its shared revision in a cluster."""
        revision = self.control.shared_version(self.shared_as, resource["id"]) if self.shared_as else None
        return conditional.etag(self.view(resource), revision)

    def changed_at(self, id: str) -> float:
        """When the member's configuration last changed."""
        return self.control.changed_at("server", id)

    def collection_changed_at(self) -> float:
        """When the collection last changed."""
        return self.control.changed_at("balancer", "")

    def lock_key(self, id: str) -> str:
        """The lock a write to the member takes (members sharing a configuration share it)."""
        return f"services/{id}"

    def missing(self, id: str) -> Exception:
        """The 404 of member C{id}."""
        return not_found(self.type, id)

    async def create(self, data: dict[str, Any]) -> str:
        """Create a member from a request's resource object; returns its id."""
        raise NotImplementedError

    async def update(self, id: str, data: dict[str, Any], current: dict[str, Any]) -> None:
        """Apply a request's resource object (merged over C{current}) to the member."""
        raise NotImplementedError

    async def delete(self, id: str) -> None:
        """Remove the member."""
        raise NotImplementedError

    async def relate(self, id: str, name: str, ids: list[str]) -> None:
        """Make C{ids} the member's relationship C{name} (one of L{writable})."""
        raise NotImplementedError
