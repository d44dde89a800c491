"""
C{/v1/monitors}: each service's health check (C{[servers.<name>.healthcheck]}),
its parameters in the configuration's key names and the servers it watches.
"""

from __future__ import annotations

from typing import Any

from admin.v1.parts import ServicePart
from admin.v1.servers import server_ids
from balancer.config.dump import to_mapping


class Monitors(ServicePart):
    """Services' health checks."""

    type = "monitors"
    section = "healthcheck"
    volatile = ("state",)

    def attributes(self, id: str, server: Any) -> dict[str, Any]:
        check = server.config.healthcheck
        running = server.running and check.kind != "none"
        return {"module": check.kind, "state": "Running" if running else "Stopped", "parameters": to_mapping(check)}

    def relationships(self, id: str) -> dict[str, tuple[str, list[str]]]:
        return {"servers": ("servers", server_ids(self.control, id)), "services": ("services", [id])}
