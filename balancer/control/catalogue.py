"""
The backends created through the /v1 API (C{POST /v1/servers}) and their
links to services.

A created backend is a record: its parameters (C{address}, C{port},
C{weight}, C{priority}, C{max_connections}, C{sni}) and C{services}, the
services it is linked to.  A service with static discovery serves its
linked backends as part of its C{static_list}; the catalogue works out
those lists and checks the links.  The records are kept by the change log
(L{balancer.control.changelog}) and persisted in C{[state] path}.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from balancer.config.addresses import AddressError, BackendSpec, parse_backend_line
from balancer.config.errors import ConfigError, Problem
from balancer.config.fields import MAX_CONNECTIONS, MAX_COUNT, describe, join
from balancer.config.schema import ServerConfig
from balancer.control.errors import LinkError

#: The parameters of a backend created through the API.
BACKEND_PARAMETERS = ("address", "port", "weight", "priority", "max_connections", "sni")


def spec_of(record: Mapping[str, Any]) -> BackendSpec:
    """The backend spec of a created backend's record."""
    return BackendSpec(
        record["address"], record["port"], record["weight"], record["priority"], record["max_connections"], record.get("sni")
    )


def parameters_of(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record's parameters: the record without its C{services}."""
    return {key: value for key, value in record.items() if key != "services"}


def backend_parameters(name: str, raw: object) -> dict[str, Any]:
    """
    Check the parameters of created backend C{name}: C{address} and C{port}
    (required), C{weight} and C{priority} (default 1), C{max_connections}
    (default 0, unlimited), C{sni} (optional).

    (Not L{balancer.config.fields.build}: its messages for these keys differ
    from the ones the API has always given, which clients and tests rely on.)

    @return: the parameters with their defaults.
    @raise ConfigError: listing every problem, with paths C{backends.<name>.<key>}.
    """
    where = join("backends", name)
    if not isinstance(raw, dict):
        raise ConfigError("request body", [Problem(where, f"expected a table of {', '.join(BACKEND_PARAMETERS)}")])
    problems = [
        Problem(join(where, str(key)), f"unknown key; expected one of {', '.join(BACKEND_PARAMETERS)}")
        for key in raw
        if key not in BACKEND_PARAMETERS
    ]
    ranges = {"port": (1, 65535, None), "weight": (0, MAX_COUNT, 1), "priority": (0, MAX_COUNT, 1),
              "max_connections": (0, MAX_CONNECTIONS, 0)}
    values: dict[str, Any] = {}
    for key, (low, high, default) in ranges.items():
        value = raw.get(key, default)
        if type(value) is not int or not low <= value <= high:
            required = "required: " if default is None else ""
            problems.append(Problem(join(where, key), f"{required}expected an integer from {low} to {high}, got {describe(value)}"))
        values[key] = value
    address, sni = raw.get("address"), raw.get("sni")
    if not isinstance(address, str) or not address or "\x00" in address:
        problems.append(Problem(join(where, "address"), f"required: expected a host name or IP address, got {describe(address)}"))
    if sni is not None and (not isinstance(sni, str) or not re.fullmatch(r"[^\s\x00]+", sni)):
        problems.append(Problem(join(where, "sni"), f"expected a server name without spaces, got {describe(sni)}"))
    if not problems and isinstance(address, str):
        spec = BackendSpec(address, values["port"], sni=sni)
        try:
            parse_backend_line(spec.to_line())
        except AddressError as e:
            problems.append(Problem(join(where, "address"), str(e)))
    if problems:
        raise ConfigError("request body", problems)
    return {"address": address, **values, **({"sni": sni} if sni is not None else {})}


class BackendCatalogue:
    """
    The created backends' records at one moment, and what follows from them.

    @ivar records: created backend name to record; not changed here (the
        methods that change links return new records).
    """

    def __init__(self, records: Mapping[str, Mapping[str, Any]]) -> None:
        self.records = records

    def __contains__(self, name: object) -> bool:
        return name in self.records

    def linked_names(self, service: str) -> set[str]:
        """The created backends linked to service C{service}."""
        return {name for name, record in self.records.items() if service in record["services"]}

    def linked_services(self, name: str, running: set[str]) -> list[str]:
        """The services of C{running} that created backend C{name} is linked to."""
        return [s for s in self.records[name]["services"] if s in running]

    def claims(self, service: str) -> dict[str, str]:
        """The C{host:port} of each created backend linked to C{service}, to its name (its /v1 id there)."""
        return {spec_of(self.records[name]).key: name for name in self.linked_names(service)}

    def static_list(self, service: str, config: ServerConfig, linked: list[BackendSpec]) -> tuple[BackendSpec, ...] | None:
        """
        Service C{service}'s static list with C{linked} as its created
        backends in place of those linked now (None when it has no static
        list and none are to be linked).

        @raise LinkError: discovery is not static, an address is taken, or no backend would be left.
        """
        kind = config.discovery.kind
        if kind != "static":
            if linked:
                raise LinkError(
                    f'server "{service}" finds its backends by discovery kind "{kind}", which would replace a '
                    'linked server: only servers with discovery kind "static" take servers created through the API'
                )
            return None
        old_keys = set(self.claims(service))
        kept = [spec for spec in config.discovery.static_list if spec.key not in old_keys]
        taken = {spec.key for spec in kept}
        for spec in linked:
            if spec.key in taken:
                raise LinkError(f'server "{service}" already has a backend at {spec.key}')
            taken.add(spec.key)
        if not kept and not linked:
            raise LinkError(f'server "{service}" would be left without backends (its static_list cannot be empty)')
        return tuple(kept + linked)


def relinked(records: Mapping[str, Mapping[str, Any]], wanted: Mapping[str, set[str]]) -> dict[str, dict[str, Any]]:
    """
    C{records} with the links of C{wanted} (service name to the created
    backend names linked to it; services not named keep their links).
    """
    result = {name: dict(record) for name, record in records.items()}
    for name, record in result.items():
        services = set(record["services"])
        for service, names in wanted.items():
            services.discard(service)
            if name in names:
                services.add(service)
        record["services"] = sorted(services)
    return result
