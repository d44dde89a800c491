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
from balancer.control.errors import UnknownSession
from balancer.control.views import SessionView


class Sessions(Kind):
    """Live relays as /v1 sessions."""

    type = "sessions"
    shared_as = None
    member_methods = ("GET", "HEAD", "DELETE")
    volatile = ("rx", "tx", "age")

    def _find(self, id: str) -> SessionView | None:
        """The session of id C{id} (its decimal relay id), or None."""
        try:
            number = int(id)
        except ValueError:
            return None
        if str(number) != id:
            return None
        try:
            return self.control.session(number)
        except UnknownSession:
            return None

    def members(self) -> list[dict[str, Any]]:
        now = self.control.info().time
        return [self._resource(session, now) for session in self.control.sessions()]

    def get(self, id: str) -> dict[str, Any]:
        session = self._find(id)
        if session is None:
            raise self.missing(id)
        return self._resource(session, self.control.info().time)

    def _resource(self, session: SessionView, now: float) -> dict[str, Any]:
        """The resource object of C{session} at time C{now}."""
        attributes = {
            "service": session.service,
            "client": {"address": session.client_host, "port": session.client_port},
            "backend": session.backend,
            "server": session.server,
            "rx": session.rx,
            "tx": session.tx,
            "started_at": rfc3339(session.started_at),
            "age": round(now - session.started_at, 3),
        }
        server = session.server
        relationships = {"services": ("services", [session.service]), "servers": ("servers", [server] if server else [])}
        return documents.resource(self.type, str(session.id), attributes, relationships)

    def changed_at(self, id: str) -> float:
        session = self._find(id)
        return session.started_at if session is not None else self.control.info().started_at

    def collection_changed_at(self) -> float:
        return max([self.control.info().started_at, *(session.started_at for session in self.control.sessions())])

    def lock_key(self, id: str) -> str:
        return f"sessions/{id}"

    async def delete(self, id: str) -> None:
        session = self._find(id)
        if session is None:
            raise self.missing(id)
        await self.control.close_session(session.id)
