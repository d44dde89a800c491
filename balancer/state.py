"""
The state file (C{[state] path}): runtime changes made through the API, kept
across restarts (DESIGN §8).

It records, per server, the whole definition of servers created or changed at
run time and the names of servers deleted; for the /v1 API, the backends
created through it (with the services they are linked to) and the admin state
(maintenance, drain) set on backends.  Files written before those existed
still load.  At start the configuration file
applies first, then the state on top of it.  Writes are atomic: a temporary
file in the same directory, fsync, rename.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from typing import Any

import attrs
import toml

from balancer.config.errors import ConfigError, Problem
from balancer.config.load import server_from_mapping
from balancer.config.schema import Config


@attrs.define
class RuntimeChanges:
    """
    Changes made at run time.

    @ivar servers: name to raw definition (config key names) of servers created or replaced.
    @ivar deleted: names of configured servers deleted.
    @ivar backends: name to parameters (C{address}, C{port}, C{weight},
        C{priority}, C{max_connections}, C{sni}) and C{services} (the
        services it is linked to) of backends created through /v1.
    @ivar backend_states: a /v1 server id (a created backend's name, or
        C{host:port}) to its admin state, C{"maintenance"} or C{"drain"}.
    """

    servers: dict[str, dict[str, Any]] = attrs.Factory(dict)
    deleted: set[str] = attrs.Factory(set)
    backends: dict[str, dict[str, Any]] = attrs.Factory(dict)
    backend_states: dict[str, str] = attrs.Factory(dict)

    def copy(self) -> RuntimeChanges:
        """An independent copy, to change and persist before it replaces this one."""
        return RuntimeChanges(
            servers=dict(self.servers),
            deleted=set(self.deleted),
            backends={name: dict(record) for name, record in self.backends.items()},
            backend_states=dict(self.backend_states),
        )

    def created(self, name: str, definition: dict[str, Any]) -> None:
        """Record that server C{name} now has C{definition}."""
        self.servers[name] = definition
        self.deleted.discard(name)

    def removed(self, name: str, configured: bool) -> None:
        """Record that server C{name} is gone (C{configured}: the file defines it)."""
        self.servers.pop(name, None)
        if configured:
            self.deleted.add(name)

    def apply(self, config: Config, source: str) -> Config:
        """
        C{config} with these changes on top.

        @raise ConfigError: if a recorded server no longer validates against C{config}.
        """
        servers = {n: s for n, s in config.servers.items() if n not in self.deleted and n not in self.servers}
        base = attrs.evolve(config, servers=servers)
        for name, definition in self.servers.items():
            server = server_from_mapping(name, definition, source, base)
            base = attrs.evolve(base, servers={**base.servers, name: server})
        return base


class StateFile:
    """Reads and atomically writes L{RuntimeChanges} at a path."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> RuntimeChanges:
        """
        The changes recorded so far (none if the file does not exist yet).

        @raise ConfigError: the file exists but cannot be read or parsed.
        """
        try:
            with open(self.path, "rb") as f:
                raw = tomllib.load(f)
        except FileNotFoundError:
            return RuntimeChanges()
        except OSError as e:
            raise ConfigError(self.path, [Problem("", f"cannot read the state file: {e.strerror}")])
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(self.path, [Problem("", f"invalid TOML in the state file: {e}")])
        servers = raw.get("servers", {})
        deleted = raw.get("deleted", [])
        backends = raw.get("backends", {})
        states = raw.get("backend_states", {})
        if not isinstance(servers, dict) or not isinstance(deleted, list):
            raise ConfigError(self.path, [Problem("", "expected [servers.<name>] tables and a deleted = [...] list")])
        if not isinstance(backends, dict) or not all(isinstance(b, dict) for b in backends.values()):
            raise ConfigError(self.path, [Problem("backends", "expected [backends.<name>] tables")])
        if not isinstance(states, dict) or not all(v in ("maintenance", "drain") for v in states.values()):
            raise ConfigError(self.path, [Problem("backend_states", 'expected "<id>" = "maintenance" or "drain"')])
        return RuntimeChanges(
            servers=dict(servers), deleted=set(map(str, deleted)), backends=dict(backends), backend_states=dict(states)
        )

    def save(self, changes: RuntimeChanges) -> None:
        """
        Write C{changes}: to a temporary file, fsync, then rename over the old one.

        @raise OSError: if it cannot be written (the old file is left as it was).
        """
        document = {
            "deleted": sorted(changes.deleted),
            "servers": changes.servers,
            "backends": changes.backends,
            "backend_states": changes.backend_states,
        }
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, temporary = tempfile.mkstemp(prefix=".state-", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("# balancer runtime state: written by the API, applied on top of the configuration.\n")
                f.write(toml.dumps(document))
                f.flush()
                os.fsync(f.fileno())
            os.replace(temporary, self.path)
        except BaseException:
            if os.path.exists(temporary):
                os.unlink(temporary)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
