"""
C{/v1/balancer}: the process: version, pid, start time, uptime,
configuration path and revision; C{POST /v1/balancer/reload} loads the
configuration file again.
"""

from __future__ import annotations

from typing import Any

from admin.gobetween import rfc3339
from admin.v1 import documents
from admin.v1.kind import Kind


class Balancer(Kind):
    """The balancer itself, one resource of id C{balancer}."""

    type = "balancer"
    shared_as = None
    volatile = ("uptime",)

    def member_path(self, id: str) -> str:
        return documents.path("balancer")

    def members(self) -> list[dict[str, Any]]:
        return [self.get("balancer")]

    def get(self, id: str) -> dict[str, Any]:
        info = self.control.info()
        cluster = self.control.cluster()
        attributes = {
            "version": info.version,
            "pid": info.pid,
            "started_at": rfc3339(info.started_at),
            "uptime": round(info.time - info.started_at, 3),
            "config_path": info.config_path,
            "revision": info.revision,
            "cluster": cluster.name if cluster is not None else None,
        }
        return documents.resource(self.type, "balancer", attributes, self_link=self.member_path(id))

    def changed_at(self, id: str) -> float:
        return self.control.changed_at("balancer", "")

    async def reload(self) -> dict[str, Any]:
        """
        Load the configuration file again (as C{SIGHUP} does): the answer's
        document, what changed in its C{meta} (L{ReloadReport.document<balancer.control.reloading.ReloadReport.document>}).
        Fails with L{ReloadRefused<balancer.control.errors.ReloadRefused>} when the file does not validate.
        """
        report = await self.control.reload()
        return {"links": {"self": documents.path("balancer", "reload")}, "meta": report.document()}
