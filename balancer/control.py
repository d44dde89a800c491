"""
The control interface: everything the admin APIs may ask of or do to the
running balancer, in one place.  The APIs never reach past it into services
or protocols; both the root API and /v1 make the same changes through it,
and it persists them (C{[state] path}) before they are reported done.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from zope.interface import Interface, implementer

from balancer import __version__
from balancer.config.dump import to_json, to_mapping, to_toml
from balancer.config.load import server_from_mapping
from balancer.config.schema import Config, ServerConfig
from balancer.server import ServerService
from balancer.service import BalancerService, ServerExists, UnknownServer
from balancer.state import RuntimeChanges, StateFile

log = Logger()

__all__ = ["IControl", "Controller", "UnknownServer", "ServerExists", "DumpFormatError"]

#: A server name, as C{[servers.<name>]} accepts it in a file (L{balancer.config.fields.named_sections}).


class DumpFormatError(ValueError):
    """A dump format other than toml or json was asked for."""


class IControl(Interface):
    """What the admin API can see and change."""

    def info() -> dict[str, Any]:
        """
        Process facts: pid, version, C{started_at} and C{time} (now), both in
        epoch seconds of the balancer's clock, configuration path and revision.
        """

    def server_names() -> list[str]:
        """Names of the running servers, in configuration order."""

    def server_definition(name: str) -> dict[str, Any]:
        """A server's definition in configuration key names. @raise UnknownServer"""

    def server(name: str) -> ServerService:
        """The running server (read-only use: stats, pool, relays). @raise UnknownServer"""

    def add_server(name: str, definition: object) -> Deferred[dict[str, Any]]:
        """
        Validate, bind, start and persist a new server; fires with its definition.
        Atomic: on any failure nothing changed.  C{name} must be a valid
        C{[servers.<name>]} name.
        @raise ConfigError, ServerExists, BindError (as the Deferred's failure)
        """

    def update_server(name: str, definition: object) -> Deferred[dict[str, Any]]:
        """
        Validate a server's new definition, apply it and persist it; fires with it.
        In place (relays kept) when C{bind}, C{protocol}, C{tls}, C{sni} and C{udp}
        are unchanged; else a new listener replaces the old one, whose relays get
        the shutdown grace.  Atomic: on any failure nothing changed.
        @raise UnknownServer, ConfigError, BindError (as the Deferred's failure)
        """

    def remove_server(name: str) -> Deferred[None]:
        """
        Persist a server's removal, then stop it (listener and relays); fires once it stopped.
        If the removal cannot be persisted, nothing changed.  @raise UnknownServer
        """

    def stats(name: str) -> dict[str, Any]:
        """gobetween's statistics document for a server. @raise UnknownServer"""

    def dump(format: str) -> str:
        """The effective configuration as "toml" or "json". @raise DumpFormatError"""

    def effective_config() -> Config:
        """The configuration the balancer runs now, runtime changes included."""


@implementer(IControl)
class Controller:
    """
    L{IControl} over a L{BalancerService}.

    @ivar revision: a number that grows with every configuration change.
    """

    def __init__(
        self,
        balancer: BalancerService,
        config: Config,
        config_path: str,
        reactor: Any,
        *,
        configured: Config | None = None,
        changes: RuntimeChanges | None = None,
    ) -> None:
        """
        @param config: the effective configuration at start (file plus state).
        @param configured: the configuration file alone (to know which deletions to record).
        @param changes: the runtime changes loaded from the state file.
        """
        self._balancer = balancer
        self._config = config
        self._configured = configured if configured is not None else config
        self._config_path = config_path
        self._reactor = reactor
        self._state = StateFile(config.state.path) if config.state is not None else None
        self._changes = changes if changes is not None else RuntimeChanges()
        self._started_at = reactor.seconds()
        self.revision = 1

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self._started_at,
            "time": self._reactor.seconds(),
            "config_path": os.path.abspath(self._config_path),
            "revision": self.revision,
        }

    def server_names(self) -> list[str]:
        return [s.name for s in self._balancer.servers()]

    def server(self, name: str) -> ServerService:
        return self._balancer.server(name)

    def server_definition(self, name: str) -> dict[str, Any]:
        return to_mapping(self._balancer.server(name).config)

    def stats(self, name: str) -> dict[str, Any]:
        return self._balancer.server(name).stats()

    def effective_config(self) -> Config:
        servers = {s.name: s.config for s in self._balancer.servers()}
        return attrs.evolve(self._config, servers=servers)

    def dump(self, format: str) -> str:
        if format == "toml":
            return to_toml(self.effective_config())
        if format == "json":
            return to_json(self.effective_config())
        raise DumpFormatError(f'unknown format "{format}": expected "toml" or "json"')

    @inlineCallbacks
    def add_server(self, name: str, definition: object):  # type: ignore[no-untyped-def]
        if name in self.server_names():
            raise ServerExists(f'a server named "{name}" already exists')
        config: ServerConfig = server_from_mapping(name, definition, "request body", self.effective_config())
        self._balancer.add_server(name, config)
        mapping = to_mapping(config)
        try:
            self._record(lambda changes: changes.created(name, mapping))
        except OSError:
            yield self._balancer.remove_server(name)
            raise
        return mapping

    @inlineCallbacks
    def update_server(self, name: str, definition: object):  # type: ignore[no-untyped-def]
        old = self._balancer.server(name).config
        config: ServerConfig = server_from_mapping(name, definition, "request body", self.effective_config())
        yield self._balancer.update_server(name, config)
        mapping = to_mapping(config)
        try:
            self._record(lambda changes: changes.created(name, mapping))
        except OSError:
            yield self._balancer.update_server(name, old)
            raise
        return mapping

    @inlineCallbacks
    def remove_server(self, name: str):  # type: ignore[no-untyped-def]
        self._balancer.server(name)
        self._record(lambda changes: changes.removed(name, configured=name in self._configured.servers))
        yield self._balancer.remove_server(name)

    def _record(self, change: Any) -> None:
        """Apply C{change} to the runtime changes and persist them before returning."""
        candidate = RuntimeChanges(servers=dict(self._changes.servers), deleted=set(self._changes.deleted))
        change(candidate)
        if self._state is not None:
            self._state.save(candidate)
        self._changes = candidate
        self.revision += 1


def load_effective(config: Config, source: str) -> tuple[Config, RuntimeChanges]:
    """
    The configuration file with the state file's changes applied on top.

    @raise ConfigError: the state file is unreadable or a recorded server no longer validates.
    """
    if config.state is None:
        return config, RuntimeChanges()
    state = StateFile(config.state.path)
    changes = state.load()
    return changes.apply(config, state.path), changes

