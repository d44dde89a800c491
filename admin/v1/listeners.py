"""
C{/v1/listeners}: each service's listener: its C{bind} address and
C{protocol} (and the C{tls}, C{sni}, C{udp} sections that shape how it
listens).  Changing them rebinds the service atomically: the old listener
stays if the new one cannot bind.
"""

from __future__ import annotations

from typing import Any

from admin.v1.parts import ServicePart
from balancer.config.schema import LISTENER_KEYS
from balancer.control.views import ServiceView


class Listeners(ServicePart):
    """Services' listeners."""

    type = "listeners"
    volatile = ("state", "address")

    def attributes(self, view: ServiceView) -> dict[str, Any]:
        definition = view.definition
        parameters = {"bind": definition["bind"], "protocol": view.config.protocol}
        parameters.update({k: definition[k] for k in LISTENER_KEYS if k in definition and k not in parameters})
        return {"state": "Running" if view.running else "Stopped", "address": view.address, "parameters": parameters}

    def definition(self, id: str, parameters: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in self.control.server_definition(id).items() if k not in LISTENER_KEYS}
        return {**kept, **parameters}

    def allowed(self) -> tuple[str, ...]:
        return LISTENER_KEYS
