"""
The control interface: everything the admin APIs may ask of or do to the
running balancer, in one place.  The APIs never reach past it into services
or protocols; both the root API and /v1 make the same changes through it,
and it persists them (C{[state] path}) before they are reported done.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.logger import Logger
from zope.interface import Interface, implementer

from balancer import __version__
from balancer.backends import ACTIVE, DRAIN, MAINTENANCE, Backend
from balancer.config.addresses import AddressError, BackendSpec, parse_backend_line
from balancer.config.dump import to_json, to_mapping, to_toml
from balancer.config.errors import ConfigError, Problem
from balancer.config.fields import MAX_CONNECTIONS, MAX_COUNT, NAME_PATTERN, NAME_RULE, describe, join
from balancer.config.load import server_from_mapping
from balancer.config.schema import Config, ServerConfig
from balancer.config.secrets import keep_secrets
from balancer.policy import ChangePolicy, ChangeRefused, check_server_change
from balancer.root_service import BalancerService, ServerExists, UnknownServer
from balancer.server_service import ServerService
from balancer.state import RuntimeChanges, StateFile
from balancer.stats import SERVER_COUNTERS, server_report

log = Logger()

__all__ = [
    "IControl",
    "Controller",
    "UnknownServer",
    "ServerExists",
    "DumpFormatError",
    "UnknownBackend",
    "UnknownSession",
    "BackendInUse",
    "LinkError",
    "ChangeRefused",
    "dump_config",
]

class DumpFormatError(ValueError):
    """A dump format other than toml or json was asked for."""


class UnknownBackend(KeyError):
    """No backend (/v1 server) has that id."""


class UnknownSession(KeyError):
    """No live client session has that id."""


class BackendInUse(ValueError):
    """The backend cannot be removed or changed that way while services use it; the message says why."""


class LinkError(ValueError):
    """A backend cannot be linked to (or unlinked from) a service; the message says why."""


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
        C{[servers.<name>]} name.  The change passes L{check_server_change}
        under C{[api]}'s policy; a secret given as C{"********"} is refused
        (there is none to keep, see L{keep_secrets}).
        @raise ConfigError, ServerExists, BindError, ChangeRefused (as the Deferred's failure)
        """

    def update_server(name: str, definition: object) -> Deferred[dict[str, Any]]:
        """
        Validate a server's new definition, apply it and persist it; fires with it.
        In place (relays kept) when C{bind}, C{protocol}, C{tls}, C{sni} and C{udp}
        are unchanged; else a new listener replaces the old one, whose relays get
        the shutdown grace.  Atomic: on any failure nothing changed.  The change
        passes L{check_server_change} under C{[api]}'s policy; a secret given as
        C{"********"} keeps the server's current one (L{keep_secrets}).
        @raise UnknownServer, ConfigError, BindError, ChangeRefused (as the Deferred's failure)
        """

    def remove_server(name: str) -> Deferred[None]:
        """
        Persist a server's removal, then stop it (listener and relays); fires once it stopped.
        If the removal cannot be persisted, nothing changed.  @raise UnknownServer
        """

    def stats(name: str) -> dict[str, Any]:
        """
        gobetween's statistics document for a server, summed over the worker
        processes (L{sum_stats}). @raise UnknownServer
        """

    def statistics(name: str) -> dict[str, Any]:
        """
        L{stats} with the server counters /v1 and /metrics show besides
        (L{balancer.stats.SERVER_COUNTERS}), all summed over the worker
        processes. @raise UnknownServer
        """

    def dump(format: str) -> str:
        """The effective configuration as "toml" or "json". @raise DumpFormatError"""

    def effective_config() -> Config:
        """The configuration the balancer runs now, runtime changes included."""

    # For the /v1 API: backends as resources of their own, sessions, change times

    def shutting_down() -> bool:
        """Whether the balancer is stopping (or not started): no change is taken then."""

    def changed_at(kind: str, name: str) -> float:
        """
        When the configuration of C{name} last changed, in epoch seconds of the
        balancer's clock (its start time if not since): C{kind} "server" for a
        C{[servers.<name>]}, "backend" for a /v1 server id, "balancer" (name "") for any change.
        """

    def backend_index() -> dict[str, list[tuple[str, Backend]]]:
        """
        Every backend by /v1 id (a created backend's name, else C{host:port}),
        each with the (server name, pool entry) pairs where it is in use; a
        created backend linked nowhere has an empty list.  Read-only use.
        """

    def created_backends() -> dict[str, dict[str, Any]]:
        """Backends created through the API by name: their parameters and C{services} (the links)."""

    def backend_state(id: str) -> str:
        """The admin state set on a backend: "active", "maintenance" or "drain". @raise UnknownBackend"""

    def create_backend(name: str, parameters: object, services: list[str]) -> Deferred[dict[str, Any]]:
        """
        Create a backend and link it to C{services} (static discovery only);
        persisted; fires with its record.  Atomic: on failure nothing changed.
        @raise ConfigError, ServerExists, UnknownServer, LinkError (as the Deferred's failure)
        """

    def update_backend(name: str, parameters: object, services: list[str] | None) -> Deferred[dict[str, Any]]:
        """
        Give a created backend new parameters and, unless None, a new set of
        linked services; the services' static lists follow.  Persisted.
        @raise UnknownBackend, ConfigError, UnknownServer, LinkError
        """

    def remove_backend(name: str) -> Deferred[None]:
        """Remove a created backend that no service uses. @raise UnknownBackend, BackendInUse"""

    def link_backends(server: str, names: list[str]) -> Deferred[None]:
        """
        Make C{names} the created backends linked to server C{server} (others
        are unlinked); its static list follows.  @raise UnknownServer, UnknownBackend, LinkError
        """

    def set_backend_state(id: str, state: str | None) -> None:
        """
        Set a backend's admin state ("maintenance" or "drain"; None clears it),
        in every pool that has it; persisted.  @raise UnknownBackend
        """

    def close_session(id: int) -> None:
        """Close a live client session (both of its connections) now. @raise UnknownSession"""


@implementer(IControl)
class Controller:
    """
    L{IControl} over a L{BalancerService}.

    @ivar revision: a number that grows with every configuration change.
    @ivar on_change: called with no argument after each change of servers or
        backend states has been applied and persisted (the worker supervisor,
        L{balancer.workers}, sends the new configuration to the other worker
        processes).
    @ivar peer_stats: sources of the other worker processes' latest
        statistics documents of a server, by name (each a
        L{balancer.stats.server_report}); L{stats} and L{statistics} add them up.
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
        self._changed: dict[tuple[str, str], float] = {}
        self.revision = 1
        self.on_change: list[Callable[[], object]] = []
        self.peer_stats: list[Callable[[str], list[dict[str, Any]]]] = []
        self._apply_backend_states()

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
        return sum_stats(self._balancer.server(name).stats(), self._peer_documents(name))

    def statistics(self, name: str) -> dict[str, Any]:
        own = server_report(self._balancer.server(name))
        return sum_stats(own, self._peer_documents(name), SERVER_SUMS + SERVER_COUNTERS)

    def _peer_documents(self, name: str) -> list[dict[str, Any]]:
        """The other worker processes' latest reports of server C{name}."""
        return [doc for source in self.peer_stats for doc in source(name)]

    def effective_config(self) -> Config:
        servers = {s.name: s.config for s in self._balancer.servers()}
        return attrs.evolve(self._config, servers=servers)

    def dump(self, format: str) -> str:
        return dump_config(self.effective_config(), format)

    @inlineCallbacks
    def add_server(self, name: str, definition: object):  # type: ignore[no-untyped-def]
        if name in self.server_names():
            raise ServerExists(f'a server named "{name}" already exists')
        definition = keep_secrets(definition, None, name, "request body")
        effective = self.effective_config()
        config: ServerConfig = server_from_mapping(name, definition, "request body", effective)
        check_server_change(name, config, None, ChangePolicy.of(effective.api))
        self._balancer.add_server(name, config)
        mapping = to_mapping(config)
        try:
            self._record(lambda changes: changes.created(name, mapping))
        except OSError:
            yield self._balancer.remove_server(name)
            raise
        self._notify_change()
        return mapping

    @inlineCallbacks
    def update_server(self, name: str, definition: object):  # type: ignore[no-untyped-def]
        old = self._balancer.server(name).config
        definition = keep_secrets(definition, to_mapping(old), name, "request body")
        effective = self.effective_config()
        config: ServerConfig = server_from_mapping(name, definition, "request body", effective)
        check_server_change(name, config, old, ChangePolicy.of(effective.api))
        yield self._balancer.update_server(name, config)
        mapping = to_mapping(config)
        try:
            self._record(lambda changes: changes.created(name, mapping))
        except OSError:
            yield self._balancer.update_server(name, old)
            raise
        self._notify_change()
        return mapping

    @inlineCallbacks
    def remove_server(self, name: str):  # type: ignore[no-untyped-def]
        self._balancer.server(name)
        self._record(lambda changes: changes.removed(name, configured=name in self._configured.servers))
        yield self._balancer.remove_server(name)
        self._notify_change()

    # For the /v1 API: created backends, their links, admin states, sessions

    def shutting_down(self) -> bool:
        return not self._balancer.running

    def changed_at(self, kind: str, name: str) -> float:
        return self._changed.get((kind, name), self._started_at)

    def created_backends(self) -> dict[str, dict[str, Any]]:
        return {name: dict(record) for name, record in self._changes.backends.items()}

    def backend_index(self) -> dict[str, list[tuple[str, Backend]]]:
        index: dict[str, list[tuple[str, Backend]]] = {name: [] for name in self._changes.backends}
        for service in self._balancer.servers():
            claimed = {_spec(self._changes.backends[n]).key: n for n in self._linked_names(service.name)}
            for backend in service.pool:
                index.setdefault(claimed.get(backend.key, backend.key), []).append((service.name, backend))
        return index

    def backend_state(self, id: str) -> str:
        if id in self._changes.backend_states:
            return self._changes.backend_states[id]
        if id not in self.backend_index():
            raise UnknownBackend(id)
        return ACTIVE

    @inlineCallbacks
    def create_backend(self, name: str, parameters: object, services: list[str]):  # type: ignore[no-untyped-def]
        if not re.fullmatch(NAME_PATTERN, name):
            raise ConfigError("request body", [Problem(join("backends", name), NAME_RULE)])
        if name in self._changes.backends:
            raise ServerExists(f'a server named "{name}" already exists')
        record = {**backend_parameters(name, parameters), "services": []}
        wanted = {service: self._linked_names(service) | {name} for service in services}
        records = yield self._relink({**self._changes.backends, name: record}, wanted)
        return dict(records[name])

    @inlineCallbacks
    def update_backend(self, name: str, parameters: object, services: list[str] | None):  # type: ignore[no-untyped-def]
        if name not in self._changes.backends:
            raise UnknownBackend(name)
        linked = set(self._linked_services(name))
        targets = linked if services is None else set(services)
        record = {**backend_parameters(name, parameters), "services": sorted(linked)}
        wanted = {s: (self._linked_names(s) - {name}) | ({name} if s in targets else set()) for s in linked | targets}
        records = yield self._relink({**self._changes.backends, name: record}, wanted)
        return dict(records[name])

    def remove_backend(self, name: str) -> Deferred[None]:
        if name not in self._changes.backends:
            raise UnknownBackend(name)
        users = self._linked_services(name)
        if users:
            raise BackendInUse(f'server "{name}" is used by {", ".join(users)}: unlink it first')

        def remove(changes: RuntimeChanges) -> None:
            del changes.backends[name]
            changes.backend_states.pop(name, None)

        self._record(remove)
        return succeed(None)

    def link_backends(self, server: str, names: list[str]) -> Deferred[None]:
        self._balancer.server(server)
        for name in names:
            if name not in self._changes.backends:
                raise UnknownBackend(name)
        return self._relink(dict(self._changes.backends), {server: set(names)}).addCallback(lambda _: None)

    def set_backend_state(self, id: str, state: str | None) -> None:
        if state not in (None, MAINTENANCE, DRAIN):
            raise ValueError(f"unknown admin state {state!r}")
        if id not in self.backend_index():
            raise UnknownBackend(id)

        def change(changes: RuntimeChanges) -> None:
            if state is None:
                changes.backend_states.pop(id, None)
            else:
                changes.backend_states[id] = state

        self._record(change)
        self._notify_change()

    def close_session(self, id: int) -> None:
        for service in self._balancer.servers():
            relay = service.relays.get(id)
            if relay is not None:
                log.info("{server}: closing session {id} by request", server=service.name, id=id)
                relay.close()
                return
        raise UnknownSession(id)

    def _linked_names(self, server: str) -> set[str]:
        """The created backends linked to server C{server}."""
        return {name for name, record in self._changes.backends.items() if server in record["services"]}

    def _linked_services(self, name: str) -> list[str]:
        """The running servers created backend C{name} is linked to."""
        running = set(self.server_names())
        return [s for s in self._changes.backends[name]["services"] if s in running]

    @inlineCallbacks
    def _relink(self, records: dict[str, dict[str, Any]], wanted: dict[str, set[str]]):  # type: ignore[no-untyped-def]
        """
        Make C{wanted} (server name to created backend names) the links of
        those servers, with the backends' parameters of C{records}: each
        server whose static list changes is updated (and persisted) through
        L{update_server}, then the records are persisted.  Checked before
        anything changes; on a later failure, servers already updated get
        their old definition back.  Fires with the records as persisted.
        """
        plans = []
        for server, names in sorted(wanted.items()):
            config = self._balancer.server(server).config
            new_list = self._static_list(server, config, [_spec(records[n]) for n in sorted(names)])
            if new_list is not None and new_list != config.discovery.static_list:
                plans.append((server, config, new_list))
        records = {name: dict(record) for name, record in records.items()}
        for name, record in records.items():
            services = set(record["services"])
            for server, names in wanted.items():
                services.discard(server)
                if name in names:
                    services.add(server)
            record["services"] = sorted(services)
        done: list[tuple[str, ServerConfig]] = []
        try:
            for server, config, new_list in plans:
                discovery = attrs.evolve(config.discovery, static_list=new_list)
                yield self.update_server(server, to_mapping(attrs.evolve(config, discovery=discovery)))
                done.append((server, config))
            self._record(lambda changes: setattr(changes, "backends", records))
        except BaseException:
            for server, config in reversed(done):
                yield self.update_server(server, to_mapping(config))
            raise
        self._notify_change()
        return records

    def _static_list(self, server: str, config: ServerConfig, linked: list[BackendSpec]) -> tuple[BackendSpec, ...] | None:
        """
        Server C{server}'s static list with C{linked} as its created backends
        (None when it has no static list and none are to be linked).

        @raise LinkError: discovery is not static, an address is taken, or no backend would be left.
        """
        kind = config.discovery.kind
        if kind != "static":
            if linked:
                raise LinkError(
                    f'server "{server}" finds its backends by discovery kind "{kind}", which would replace a '
                    'linked server: only servers with discovery kind "static" take servers created through the API'
                )
            return None
        old_keys = {_spec(self._changes.backends[n]).key for n in self._linked_names(server)}
        kept = [spec for spec in config.discovery.static_list if spec.key not in old_keys]
        taken = {spec.key for spec in kept}
        for spec in linked:
            if spec.key in taken:
                raise LinkError(f'server "{server}" already has a backend at {spec.key}')
            taken.add(spec.key)
        if not kept and not linked:
            raise LinkError(f'server "{server}" would be left without backends (its static_list cannot be empty)')
        return tuple(kept + linked)

    def _apply_backend_states(self) -> None:
        """Give every pool entry the admin state recorded for its /v1 id (active if none)."""
        states = self._changes.backend_states
        for id, entries in self.backend_index().items():
            for _, backend in entries:
                backend.admin_state = states.get(id, ACTIVE)

    def _stamp(self, old: RuntimeChanges, new: RuntimeChanges) -> None:
        """Note the time of change of every server and backend that differs between C{old} and C{new}."""
        now = self._reactor.seconds()
        self._changed[("balancer", "")] = now
        for name in set(old.servers) | set(new.servers) | (old.deleted ^ new.deleted):
            if old.servers.get(name) != new.servers.get(name) or (name in old.deleted) != (name in new.deleted):
                self._changed[("server", name)] = now
        for table_old, table_new in ((old.backends, new.backends), (old.backend_states, new.backend_states)):
            for id in set(table_old) | set(table_new):
                if table_old.get(id) != table_new.get(id):
                    self._changed[("backend", id)] = now

    def _notify_change(self) -> None:
        """Tell L{on_change} that servers or backend states changed."""
        for callback in self.on_change:
            callback()

    def _record(self, change: Any) -> None:
        """Apply C{change} to the runtime changes and persist them before returning."""
        candidate = self._changes.copy()
        change(candidate)
        if self._state is not None:
            self._state.save(candidate)
        self._stamp(self._changes, candidate)
        self._changes = candidate
        self.revision += 1
        self._apply_backend_states()


def dump_config(config: Config, format: str) -> str:
    """C{config} as "toml" or "json" (C{GET /dump}). @raise DumpFormatError: for another format."""
    if format == "toml":
        return to_toml(config)
    if format == "json":
        return to_json(config)
    raise DumpFormatError(f'unknown format "{format}": expected "toml" or "json"')


#: The server figures of gobetween's document, and the backend figures, that add up over worker processes.
SERVER_SUMS = ("active_connections", "rx_total", "tx_total", "rx_second", "tx_second")
BACKEND_SUMS = (
    "total_connections", "active_connections", "refused_connections", "rx", "tx", "rx_second", "tx_second"
)


def sum_stats(
    own: dict[str, Any], others: list[dict[str, Any]], server_sums: tuple[str, ...] = SERVER_SUMS
) -> dict[str, Any]:
    """
    A server's statistics document over every worker process.

    C{own} is this process's document: its backends, their weights and their
    C{live} and C{discovered} flags (this process's health checks and
    discovery) are kept, and the C{server_sums} and L{BACKEND_SUMS} of each
    document of C{others} are added, backends matched by host and port.  A
    backend that only another process still has is left out.
    """
    total = {**own, "backends": [{**b, "stats": dict(b["stats"])} for b in own["backends"]]}
    by_address = {(b["host"], b["port"]): b["stats"] for b in total["backends"]}
    for doc in others:
        for key in server_sums:
            total[key] += doc[key]
        for backend in doc["backends"]:
            stats = by_address.get((backend["host"], backend["port"]))
            if stats is not None:
                for key in BACKEND_SUMS:
                    stats[key] += backend["stats"][key]
    return total


#: The parameters of a backend created through the API.
BACKEND_PARAMETERS = ("address", "port", "weight", "priority", "max_connections", "sni")


def _spec(record: dict[str, Any]) -> BackendSpec:
    """The backend spec of a created backend's record."""
    return BackendSpec(
        record["address"], record["port"], record["weight"], record["priority"], record["max_connections"], record.get("sni")
    )


def backend_parameters(name: str, raw: object) -> dict[str, Any]:
    """
    Check the parameters of created backend C{name}: C{address} and C{port}
    (required), C{weight} and C{priority} (default 1), C{max_connections}
    (default 0, unlimited), C{sni} (optional).

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
    if not problems:
        spec = BackendSpec(address, values["port"], sni=sni)  # type: ignore[arg-type]
        try:
            parse_backend_line(spec.to_line())
        except AddressError as e:
            problems.append(Problem(join(where, "address"), f"expected a host name or IP address: {e}"))
    if problems:
        raise ConfigError("request body", problems)
    return {"address": address, **values, **({"sni": sni} if sni is not None else {})}


def load_effective(config: Config, source: str) -> tuple[Config, RuntimeChanges]:
    """
    The configuration file with the state file's changes applied on top.

    @raise ConfigError: the state file is unreadable or a recorded server no longer validates.
    """
    if config.state is None:
        return config, RuntimeChanges()
    state = StateFile(config.state.path)
    changes = state.load()
    problems = []
    for name, record in changes.backends.items():
        try:
            if not re.fullmatch(NAME_PATTERN, name):
                raise ConfigError(state.path, [Problem(join("backends", name), NAME_RULE)])
            checked = backend_parameters(name, {k: v for k, v in record.items() if k != "services"})
        except ConfigError as e:
            problems += e.problems
            continue
        services = record.get("services", [])
        if not all(isinstance(s, str) for s in services):
            problems.append(Problem(join(join("backends", name), "services"), "expected a list of service names"))
        changes.backends[name] = {**checked, "services": list(services)}
    if problems:
        raise ConfigError(state.path, problems)
    return changes.apply(config, state.path), changes

