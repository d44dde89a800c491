"""
C{/v1/monitors}: each service's health check (C{[servers.<name>.healthcheck]}),
its parameters in the configuration's key names and the servers it watches.
"""

from __future__ import annotations

from typing import Any

from admin.v1.parts import Backends, ServicePart
from admin.v1.servers import server_ids
from balancer.config.dump import to_mapping
from balancer.control.views import ServiceView


class Monitors(ServicePart):
    """Services' health checks."""

    type = "monitors"
    section = "healthcheck"
    volatile = ("state",)

    def attributes(self, view: ServiceView) -> dict[str, Any]:
        check = view.config.healthcheck
        running = view.running and check.kind != "none"
        return {"module": check.kind, "state": "Running" if running else "Stopped", "parameters": to_mapping(check)}

    def relationships(self, id: str, backends: Backends) -> dict[str, tuple[str, list[str]]]:
        return {"servers": ("servers", server_ids(backends(), id)), "services": ("services", [id])}
