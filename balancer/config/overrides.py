"""
Runtime overrides of backends: C{[overrides."host:port"]} tables.

An override gives backend C{host:port} a C{weight}, C{priority} or
C{max_connections} other than the one its static list or its discovery
gives it, in every server whose pool has it (except where a backend created
through /v1 takes that address: that one has its own parameters).  The API
sets them (C{PATCH /v1/servers/<host:port>}); they persist in C{[state]},
survive each discovery round, and C{GET /dump} writes them as this section,
so a dump fed back as the configuration reproduces them (docs/overrides.md).
"""

from __future__ import annotations

from typing import Any, Mapping

import attrs

from balancer.config.addresses import AddressError, BackendSpec, join_host_port, split_host_port
from balancer.config.errors import Problems
from balancer.config.fields import INVALID, MAX_CONNECTIONS, MAX_COUNT, Parser, build, describe, join, setting, whole

#: The backend parameters an override may set, with their ranges.
OVERRIDABLE = {"weight": (0, MAX_COUNT), "priority": (0, MAX_COUNT), "max_connections": (0, MAX_CONNECTIONS)}


@attrs.frozen
class OverrideConfig:
    """
    C{[overrides."host:port"]}: what replaces backend C{host:port}'s own
    parameters (a key left out keeps the backend's own value).
    """

    weight: int | None = setting(None, parse=whole(*OVERRIDABLE["weight"]))
    priority: int | None = setting(None, parse=whole(*OVERRIDABLE["priority"]))
    max_connections: int | None = setting(None, parse=whole(*OVERRIDABLE["max_connections"]))

    @classmethod
    def of(cls, values: Mapping[str, int]) -> OverrideConfig:
        """An override of the parameters C{values} (names of L{OVERRIDABLE}, already checked)."""
        return cls(**values)

    def values(self) -> dict[str, int]:
        """The parameters it sets, by name (empty when it sets none)."""
        return {name: value for name in OVERRIDABLE if (value := getattr(self, name)) is not None}

    def apply(self, spec: BackendSpec) -> BackendSpec:
        """C{spec} with the parameters this override sets."""
        return attrs.evolve(
            spec,
            weight=spec.weight if self.weight is None else self.weight,
            priority=spec.priority if self.priority is None else self.priority,
            max_connections=spec.max_connections if self.max_connections is None else self.max_connections,
        )


def overridden(spec: BackendSpec, overrides: Mapping[str, OverrideConfig]) -> BackendSpec:
    """C{spec} with the override of its C{host:port} in C{overrides}, if any."""
    override = overrides.get(spec.key)
    return override.apply(spec) if override is not None else spec


def backend_key(text: str) -> str | None:
    """
    C{text} if it is a backend's C{host:port} as the pools and /v1 write it
    (a host, a port from 1 to 65535, an IPv6 host in brackets), else None.
    """
    try:
        address = split_host_port(text, allow_port_zero=False)
    except AddressError:
        return None
    if not address.host or join_host_port(address.host, address.port) != text:
        return None
    return text


def backend_tables(cls: type) -> Parser:
    """A table of tables keyed by backend C{"host:port"} (like C{[overrides."10.0.0.5:8080"]}), parsed to a dict."""

    def parse(value: object, path: str, problems: Problems) -> Any:
        if not isinstance(value, Mapping):
            problems.add(path, f'expected a table of "host:port" tables, got {describe(value)}')
            return INVALID
        result = {}
        for key, raw in value.items():
            where = join(path, key)
            if backend_key(key) is None:
                problems.add(where, 'expected a backend\'s "host:port" (IPv6 as "[::1]:port"), port from 1 to 65535')
                continue
            built = build(cls, raw, where, problems)
            if built is not INVALID:
                result[key] = built
        return result

    return parse
