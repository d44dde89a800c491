"""
C{/v1/filters}: each service's access rules (C{[servers.<name>.access]}):
C{default} (allow or deny) and C{rules} (first match wins).  A service
without the section has the filter that allows everyone.
"""

from __future__ import annotations

from typing import Any

from admin.v1.parts import ServicePart
from balancer.control.views import ServiceView


class Filters(ServicePart):
    """Services' access rule sets."""

    type = "filters"
    section = "access"

    def attributes(self, view: ServiceView) -> dict[str, Any]:
        access = view.config.access
        parameters = {"default": "allow", "rules": []} if access is None else {
            "default": access.default, "rules": list(access.rules)}
        return {"module": "access", "parameters": parameters}
