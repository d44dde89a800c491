"""
Writing a configuration back out (C{GET /dump}): to a plain mapping in the
file's own key names, then to TOML or JSON.  Loading the output again gives
an equal L{Config}.
"""

from __future__ import annotations

import json
from typing import Any

import attrs
import tomli_w

from balancer.config.addresses import BackendSpec, HostPort
from balancer.config.fields import write_back


def to_mapping(instance: Any) -> dict[str, Any]:
    """
    The raw mapping that builds C{instance} again.

    Keys left at their default are omitted; keys with no default are always written.
    """
    result: dict[str, Any] = {}
    for f in attrs.fields(type(instance)):
        value = getattr(instance, f.name)
        if f.default is not attrs.NOTHING and _same(value, f.default) and f.name != "kind":
            continue
        if value is None:
            continue
        writer = write_back(f)
        result[f.name] = writer(value) if writer else _raw(value)
    return result


def to_toml(instance: Any) -> str:
    """The configuration as TOML text."""
    return tomli_w.dumps(to_mapping(instance))


def to_json(instance: Any) -> str:
    """The configuration as JSON text (gobetween's C{/dump?format=json})."""
    return json.dumps(to_mapping(instance), indent=2, sort_keys=False)


def _same(value: Any, default: Any) -> bool:
    # attrs' stubs declare Factory a function returning the value (so that it
    # can stand as a field's default), but it is a class:
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        return bool(value == default.factory())
    return bool(value == default)


def _raw(value: Any) -> Any:
    if isinstance(value, HostPort):
        return str(value)
    if isinstance(value, BackendSpec):
        return value.to_line()
    if isinstance(value, dict):
        return {k: to_mapping(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_raw(v) for v in value]
    if attrs.has(type(value)):
        return to_mapping(value)
    return value
