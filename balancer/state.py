"""
The state file (C{[state] path}): runtime changes made through the API, kept
across restarts (docs/DESIGN.md §8).

It records, per server, the whole definition of servers created or changed at
run time and the names of servers deleted; for the /v1 API, the backends
created through it (with the services they are linked to), the admin state
(maintenance, drain) set on backends and the overrides of backends'
C{weight}, C{priority} and C{max_connections} (docs/overrides.md).  Files
written before those existed still load.  At start the configuration file
applies first, then the state on top of it.  Writes are atomic: a temporary
file in the same directory (C{.state-<name>-XXXXXXXX} beside the state
file C{<name>}), fsync, rename; temporary files that an interrupted write
left behind are removed at start (L{StateCleanup}).
"""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any, Mapping

import attrs
import tomli_w
from twisted.application.service import Service
from twisted.logger import Logger

from balancer.config.decode import DecodeError, loads_toml
from balancer.config.errors import ConfigError, Problem, Problems
from balancer.config.load import server_from_mapping
from balancer.config.overrides import OverrideConfig, backend_tables
from balancer.config.schema import Config

log = Logger()

#: The temporary files of writers before this one named them C{.state-} and
#: 8 characters of C{tempfile}'s alphabet, whatever the state file's name.
_OLD_TEMPORARY = re.compile(r"\.state-[a-z0-9_]{8}")


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
    @ivar overrides: a backend's C{host:port} to the parameters set on it
        through the API (L{balancer.config.overrides.OVERRIDABLE}); an empty
        one cancels the override the configuration file gives it.
    """

    servers: dict[str, dict[str, Any]] = attrs.Factory(dict)
    deleted: set[str] = attrs.Factory(set)
    backends: dict[str, dict[str, Any]] = attrs.Factory(dict)
    backend_states: dict[str, str] = attrs.Factory(dict)
    overrides: dict[str, dict[str, int]] = attrs.Factory(dict)

    def copy(self) -> RuntimeChanges:
        """An independent copy, to change and persist before it replaces this one."""
        return RuntimeChanges(
            servers=dict(self.servers),
            deleted=set(self.deleted),
            backends={name: dict(record) for name, record in self.backends.items()},
            backend_states=dict(self.backend_states),
            overrides={key: dict(values) for key, values in self.overrides.items()},
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

    def overridden(self, configured: Mapping[str, OverrideConfig]) -> dict[str, OverrideConfig]:
        """
        The overrides in effect: C{configured} (the configuration file's),
        each backend's replaced by the one recorded here (none when that is empty).
        """
        merged = dict(configured)
        for key, values in self.overrides.items():
            if values:
                merged[key] = OverrideConfig.of(values)
            else:
                merged.pop(key, None)
        return merged

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
        return attrs.evolve(base, overrides=self.overridden(config.overrides))


class StateFile:
    """Reads and atomically writes L{RuntimeChanges} at a path."""

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self) -> RuntimeChanges:
        """
        The changes recorded so far (none if the file does not exist yet).

        @raise ConfigError: the file exists but cannot be read or parsed, or
            does not hold the tables a state file has (one line naming what).
        """
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            return RuntimeChanges()
        except OSError as e:
            raise ConfigError(self.path, [Problem("", f"cannot read the state file: {e.strerror}")])
        try:
            raw = loads_toml(data.decode("utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(self.path, [Problem("", f"the state file is not UTF-8 text (byte {e.start})")])
        except DecodeError as e:
            raise ConfigError(self.path, [Problem("", f"invalid TOML in the state file: {e}")])
        servers = raw.get("servers", {})
        deleted = raw.get("deleted", [])
        backends = raw.get("backends", {})
        states = raw.get("backend_states", {})
        problems = Problems()
        overrides = backend_tables(OverrideConfig)(raw.get("overrides", {}), "overrides", problems)
        if len(problems):
            raise ConfigError(self.path, list(problems))
        if not isinstance(servers, dict) or not isinstance(deleted, list) or not all(isinstance(d, str) for d in deleted):
            raise ConfigError(self.path, [Problem("", "expected [servers.<name>] tables and a deleted = [...] list of names")])
        if not isinstance(backends, dict) or not all(_backend_record(b) for b in backends.values()):
            raise ConfigError(self.path, [Problem("backends", "expected [backends.<name>] tables, each with services = [...]")])
        if not isinstance(states, dict) or not all(v in ("maintenance", "drain") for v in states.values()):
            raise ConfigError(self.path, [Problem("backend_states", 'expected "<id>" = "maintenance" or "drain"')])
        return RuntimeChanges(
            servers=dict(servers), deleted=set(deleted), backends=dict(backends), backend_states=dict(states),
            overrides={key: override.values() for key, override in overrides.items()},
        )

    def temporary_prefix(self) -> str:
        """How the temporary files of L{save} begin: C{.state-<name of the state file>-}."""
        return f".state-{os.path.basename(self.path)}-"

    def remove_leftovers(self) -> list[str]:
        """
        Remove the temporary files that writes interrupted before their
        rename (a C{kill -9}, a crash, a full disk) left beside the state
        file: those of L{save}, and those of earlier versions (C{.state-}
        and 8 characters).  Call it at start, before any write.

        @return: the paths removed.
        """
        directory = os.path.dirname(os.path.abspath(self.path))
        prefix = self.temporary_prefix()
        try:
            names = os.listdir(directory)
        except OSError:
            return []
        removed = []
        for name in names:
            if name.startswith(prefix) or _OLD_TEMPORARY.fullmatch(name):
                path = os.path.join(directory, name)
                try:
                    os.unlink(path)
                except OSError as e:
                    log.warn("state: cannot remove the leftover temporary file {path}: {error}", path=path, error=e.strerror)
                    continue
                removed.append(path)
        return removed

    def render(self, changes: RuntimeChanges) -> str:
        """The text of the state file that records C{changes}."""
        document = {
            "deleted": sorted(changes.deleted),
            "servers": changes.servers,
            "backends": changes.backends,
            "backend_states": changes.backend_states,
            "overrides": changes.overrides,
        }
        return "# balancer runtime state: written by the API, applied on top of the configuration.\n" + tomli_w.dumps(document)

    def save(self, changes: RuntimeChanges) -> None:
        """
        Write C{changes} (L{render}, then L{write}).

        @raise OSError: if it cannot be written (the old file is left as it was).
        """
        self.write(self.render(changes))

    def write(self, text: str) -> None:
        """
        Make C{text} the state file: write it to a temporary file, fsync,
        rename it over the old one, fsync the directory.  It blocks on the
        disk: the control layer calls it in a thread (L{balancer.control.writers}).

        @raise OSError: if it cannot be written (the old file is left as it was).
        """
        directory = os.path.dirname(os.path.abspath(self.path))
        fd, temporary = tempfile.mkstemp(prefix=self.temporary_prefix(), dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
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


def _backend_record(record: object) -> bool:
    """Whether C{record} has the shape of a created backend's record (its values are checked where used)."""
    return isinstance(record, dict) and isinstance(record.get("services", []), list)


class StateCleanup(Service):
    """At start, removes what interrupted writes of the state file left (L{StateFile.remove_leftovers})."""

    def __init__(self, path: str) -> None:
        self.state = StateFile(path)

    def startService(self) -> None:
        """Remove the leftovers, saying how many in the log."""
        super().startService()
        removed = self.state.remove_leftovers()
        if removed:
            log.info("state: removed {count} temporary files left by interrupted writes", count=len(removed))
