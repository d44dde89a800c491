"""
C{/v1/sessions}: live client connections (relays), by relay id: the client's
address, the service, the backend, bytes each way and age.  C{DELETE} closes
both of its connections at once.
"""

from __future__ import annotations

from typing import Any

from admin.gobetween import rfc3339
from admin.v1 import documents
from admin.v1.kind import Kind
from admin.v1.servers import id_of


class Sessions(Kind):
    """Live relays as /v1 sessions."""

    type = "sessions"
    member_methods = ("GET", "HEAD", "DELETE")
    volatile = ("rx", "tx", "age")

    def _relays(self) -> dict[str, tuple[str, Any]]:
        """Every live relay by id, with its service's name."""
        found = {}
        for name in self.control.server_names():
            for relay in list(self.control.server(name).relays.values()):
                found[str(relay.id)] = (name, relay)
        return found

    def ids(self) -> list[str]:
        return list(self._relays())

    def get(self, id: str) -> dict[str, Any]:
        found = self._relays().get(id)
        if found is None:
            raise self.missing(id)
        service, relay = found
        client = relay.client_address
        server = id_of(self.control, service, relay.backend) if relay.backend is not None else None
        now = self.control.info()["time"]
        attributes = {
            "service": service,
            "client": {"address": getattr(client, "host", str(client)), "port": getattr(client, "port", None)},
            "backend": relay.backend.key if relay.backend is not None else None,
            "server": server,
            "rx": relay.rx,
            "tx": relay.tx,
            "started_at": rfc3339(relay.started_at),
            "age": round(now - relay.started_at, 3),
        }
        relationships = {"services": ("services", [service]), "servers": ("servers", [server] if server else [])}
        return documents.resource(self.type, id, attributes, relationships)

    def changed_at(self, id: str) -> float:
        found = self._relays().get(id)
        return found[1].started_at if found is not None else self.control.info()["started_at"]

    def collection_changed_at(self) -> float:
        relays = self._relays().values()
        return max([self.control.info()["started_at"], *(relay.started_at for _, relay in relays)])

    def lock_key(self, id: str) -> str:
        return f"sessions/{id}"

    async def delete(self, id: str) -> None:
        if id not in self._relays():
            raise self.missing(id)
        self.control.close_session(int(id))
