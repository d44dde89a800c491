"""C{GET /dump}: the configuration written out as TOML or JSON."""

from __future__ import annotations

from balancer.config.dump import to_json, to_toml
from balancer.config.schema import Config
from balancer.control.errors import DumpFormatError


def dump_config(config: Config, format: str) -> str:
    """C{config} as "toml" or "json". @raise DumpFormatError: for another format."""
    if format == "toml":
        return to_toml(config)
    if format == "json":
        return to_json(config)
    raise DumpFormatError(f'unknown format "{format}": expected "toml" or "json"')
