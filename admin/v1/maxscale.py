"""
C{/v1/maxscale}: the process in the shape of MaxScale's own resource (id and
type C{maxscale}; C{version}, C{uptime} in whole seconds, C{started_at} as an
HTTP-date, C{parameters}), for tools written against MaxScale; the same
process as C{/v1/balancer}.  Its C{parameters} are the process-wide
sections of the configuration (every one but C{servers}, secrets redacted).
"""

from __future__ import annotations

from typing import Any

from admin.v1 import conditional, documents
from admin.v1.kind import Kind
from balancer.config.dump import to_mapping
from balancer.config.secrets import CONFIG_SECRETS, redact


class MaxScale(Kind):
    """The balancer as MaxScale's C{/v1/maxscale} resource."""

    type = "maxscale"
    shared_as = None
    volatile = ("uptime",)

    def member_path(self, id: str) -> str:
        return documents.path("maxscale")

    def members(self) -> list[dict[str, Any]]:
        return [self.get("maxscale")]

    def get(self, id: str) -> dict[str, Any]:
        info = self.control.info()
        parameters = to_mapping(redact(self.control.effective_config(), CONFIG_SECRETS))
        parameters.pop("servers", None)
        attributes = {
            "version": info.version,
            "uptime": int(info.time - info.started_at),
            "started_at": conditional.http_date(info.started_at),
            "activated_at": conditional.http_date(info.started_at),
            "parameters": parameters,
        }
        return documents.resource(self.type, "maxscale", attributes, self_link=self.member_path(id))

    def changed_at(self, id: str) -> float:
        return self.control.changed_at("balancer", "")
