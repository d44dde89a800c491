"""
L{Controller}: L{IControl} over a running L{BalancerService}.

It answers queries with views (L{balancer.control.running},
L{balancer.control.index}) and runs commands one at a time: validate,
apply to the running servers, persist through the change log
(L{balancer.control.changelog}), and undo the change on the servers when it
cannot be persisted.  docs/architecture.md follows an API change from the
request to the state file.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Coroutine, Mapping, TypeVar

import attrs
from twisted.internet.defer import Deferred, DeferredLock, fail, succeed
from twisted.logger import Logger
from zope.interface import implementer

from balancer.backends import DRAIN, MAINTENANCE
from balancer.config.dump import to_mapping
from balancer.config.errors import ConfigError, Problem, Problems
from balancer.config.fields import INVALID, NAME_PATTERN, NAME_RULE, describe, join, whole
from balancer.config.load import check_resources, read_config_file, server_from_mapping
from balancer.config.overrides import OVERRIDABLE, OverrideConfig
from balancer.config.schema import Config, ServerConfig
from balancer.listeners.handover import same_socket
from balancer.config.secrets import keep_secrets
from balancer.control.catalogue import BackendCatalogue, backend_parameters, relinked, spec_of
from balancer.control.changelog import ChangeLog, Observer
from balancer.control.dump import dump_config
from balancer.control.errors import (
    BackendInUse, ListenerError, NotOverridable, ReloadRefused, ServerExists, UnknownBackend, UnknownSession)
from balancer.control.index import backend_views
from balancer.control.interface import IControl
from balancer.control.process import Process
from balancer.control.reloading import (
    ReloadReport, ServerChanges, file_versions, listener_changes, sections_needing_restart, server_changes)
from balancer.control.running import RunningServers
from balancer.control.sums import PeerStatistics
from balancer.control.views import BackendView, ClusterView, ProcessInfo, ServiceView, SessionView
from balancer.control.shared import Basis, ISharedChanges
from balancer.control.writers import IStateWriter, writer_for
from balancer.policy import ChangePolicy, ChangeRefused, check_server_change
from balancer.root_service import BalancerService
from balancer.state import RuntimeChanges, StateFile

T = TypeVar("T")

log = Logger()

#: Called with the backends whose sessions worker 0 closed: server name to backend C{host:port}s.
SessionsClosed = Callable[[dict[str, list[str]]], object]


@implementer(IControl)
class Controller:
    """
    L{IControl} over a L{BalancerService}.

    Commands run one after the other, each from its checks to its persisted
    change (a L{DeferredLock}): one never computes its change from a state
    another is still writing.

    @ivar peers: the other worker processes' statistics, added to worker 0's
        in every view (the worker supervisor, L{balancer.workers.supervisor}, adds its
        reports as a source).
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
        writer: IStateWriter | None = None,
        shared: ISharedChanges | None = None,
    ) -> None:
        """
        @param config: the effective configuration at start (file plus state).
        @param configured: the configuration file alone (to know which deletions to record).
        @param changes: the runtime changes loaded from the state file (or the cluster).
        @param writer: how changes reach C{[state] path}; by default in the
            reactor's thread pool (L{writer_for}).
        @param shared: the cluster changes are shared with (C{[cluster]}),
            which gives the changes made elsewhere to L{apply_shared}.
        """
        self._config = config
        self._configured = configured if configured is not None else config
        self.peers = PeerStatistics()
        self._running = RunningServers(balancer, self.peers)
        self._process = Process(reactor, config_path)
        if writer is None and config.state is not None:
            writer = writer_for(StateFile(config.state.path), reactor)
        self._shared = shared
        self._log = ChangeLog(changes if changes is not None else RuntimeChanges(), writer, reactor,
                              self._process.started_at, shared)
        self._lock = DeferredLock()
        self._basis: Basis | None = None
        self._closers: list[SessionsClosed] = []
        self._config_file = os.path.abspath(config_path) if config_path else ""
        self._files = {name: file_versions(server) for name, server in config.servers.items()}
        self._apply_to_pools()

    @property
    def revision(self) -> int:
        """A number that grows with every configuration change."""
        return self._log.revision

    def subscribe(self, observer: Observer) -> Callable[[], None]:
        """
        Call C{observer} with no argument after each change of servers or
        backend states has been applied and persisted (the worker
        supervisor sends the new configuration to the other worker processes).

        @return: a callable that ends the subscription.
        """
        return self._log.subscribe(observer)

    def on_sessions_closed(self, observer: SessionsClosed) -> Callable[[], None]:
        """
        Call C{observer} with the backends of each L{close_backend_sessions}
        (server name to C{host:port}s) once worker 0's are closed (the worker
        supervisor tells the other worker processes to close theirs).

        @return: a callable that ends the subscription.
        """
        self._closers.append(observer)
        return lambda: self._closers.remove(observer)

    # Queries

    def info(self) -> ProcessInfo:
        return self._process.info(self._log.revision)

    def shutting_down(self) -> bool:
        return self._running.stopping()

    def server_names(self) -> list[str]:
        return self._running.names()

    def server_definition(self, name: str) -> dict[str, Any]:
        return to_mapping(self._running.config(name))

    def service(self, name: str) -> ServiceView:
        return self._running.service(name)

    def services(self) -> list[ServiceView]:
        return self._running.services()

    def backends(self) -> dict[str, BackendView]:
        return backend_views(
            self._running.services(), self._catalogue(), self._log.changes.backend_states, self._overrides()
        )

    def backend(self, id: str) -> BackendView:
        view = self.backends().get(id)
        if view is None:
            raise UnknownBackend(id)
        return view

    def sessions(self) -> list[SessionView]:
        return self._running.sessions(self._catalogue())

    def session(self, id: int) -> SessionView:
        view = self._running.session(id, self._catalogue())
        if view is None:
            raise UnknownSession(id)
        return view

    def effective_config(self) -> Config:
        return attrs.evolve(self._config, servers=self._running.configs(), overrides=self._overrides())

    def dump(self, format: str) -> str:
        return dump_config(self.effective_config(), format)

    def changed_at(self, kind: str, name: str) -> float:
        if self._shared is not None and kind != "balancer":
            shared = self._shared.changed_at(kind, name)
            if shared is not None:
                return shared
        return self._log.changed_at(kind, name)

    def shared_version(self, kind: str, name: str) -> int | None:
        return self._shared.version(kind, name) if self._shared is not None else None

    def cluster(self) -> ClusterView | None:
        return self._shared.view() if self._shared is not None else None

    # Commands

    def add_server(self, name: str, definition: object) -> Deferred[dict[str, Any]]:
        return self._command(lambda: self._add_server(name, definition))

    def update_server(self, name: str, definition: object) -> Deferred[dict[str, Any]]:
        return self._command(lambda: self._update_server(name, definition))

    def remove_server(self, name: str) -> Deferred[None]:
        return self._command(lambda: self._remove_server(name))

    def create_backend(self, name: str, parameters: object, services: list[str]) -> Deferred[dict[str, Any]]:
        return self._command(lambda: self._create_backend(name, parameters, services))

    def update_backend(self, name: str, parameters: object, services: list[str] | None) -> Deferred[dict[str, Any]]:
        return self._command(lambda: self._update_backend(name, parameters, services))

    def remove_backend(self, name: str) -> Deferred[None]:
        return self._command(lambda: self._remove_backend(name))

    def link_backends(self, server: str, names: list[str]) -> Deferred[None]:
        return self._command(lambda: self._link_backends(server, names))

    def set_backend_state(self, id: str, state: str | None) -> Deferred[None]:
        return self._command(lambda: self._set_backend_state(id, state))

    def set_override(self, id: str, values: object) -> Deferred[dict[str, int]]:
        return self._command(lambda: self._set_override(id, values))

    def reload(self) -> Deferred[ReloadReport]:
        return self._command(self._reload)

    def close_session(self, id: int) -> Deferred[None]:
        if self._running.close_session(id):
            return succeed(None)
        return fail(UnknownSession(id))

    def close_backend_sessions(self, id: str) -> Deferred[int]:
        view = self.backends().get(id)
        if view is None:
            return fail(UnknownBackend(id))
        targets: dict[str, list[str]] = {}
        for entry in view.entries:
            targets.setdefault(entry.service, []).append(entry.key)
        closed = self._running.close_backend_sessions(targets)
        for observer in list(self._closers):
            observer(targets)
        return succeed(closed)

    # How commands run

    def _command(self, work: Callable[[], Coroutine[Any, Any, T]]) -> Deferred[T]:
        """
        Run C{work} once the commands before it have ended; its exceptions
        fail the Deferred.  In a cluster, what it changes is conditioned on
        the shared state as it is now, when the API has just checked the
        request's preconditions (L{ISharedChanges.basis}), not as it will be
        when the command runs.
        """
        basis = self._shared.basis() if self._shared is not None else None

        def run() -> Deferred[T]:
            self._basis = basis
            return Deferred.fromCoroutine(work())

        return self._lock.run(run)

    async def _add_server(self, name: str, definition: object) -> dict[str, Any]:
        if name in self._running.names():
            raise ServerExists(f'a server named "{name}" already exists')
        definition = keep_secrets(definition, None, name, "request body")
        effective = self.effective_config()
        config: ServerConfig = server_from_mapping(name, definition, "request body", effective)
        check_server_change(name, config, None, ChangePolicy.of(effective.api))
        self._running.add(name, config)
        mapping = to_mapping(config)
        try:
            await self._record(lambda changes: changes.created(name, mapping))
        except Exception:
            await self._running.remove(name)
            raise
        self._log.announce()
        return mapping

    async def _update_server(self, name: str, definition: object) -> dict[str, Any]:
        old = self._running.config(name)
        definition = keep_secrets(definition, to_mapping(old), name, "request body")
        effective = self.effective_config()
        config: ServerConfig = server_from_mapping(name, definition, "request body", effective)
        check_server_change(name, config, old, ChangePolicy.of(effective.api))
        await self._running.update(name, config)
        mapping = to_mapping(config)
        try:
            await self._record(lambda changes: changes.created(name, mapping))
        except Exception:
            await self._running.update(name, old)
            raise
        self._log.announce()
        return mapping

    async def _remove_server(self, name: str) -> None:
        self._running.config(name)
        configured = name in self._configured.servers
        await self._record(lambda changes: changes.removed(name, configured=configured))
        await self._running.remove(name)
        self._log.announce()

    async def _reload(self) -> ReloadReport:
        configured, effective = self._read_config_file()
        report = ReloadReport(restart=sections_needing_restart(self._config, configured))
        running = self._running.configs()
        plan = await self._converge(running, effective.servers, report)
        for name, config in self._running.configs().items():
            versions = file_versions(config)
            if name in running and name not in plan.updated and versions != self._files.get(name, versions):
                try:
                    self._running.reload_files(name)
                except ListenerError as e:
                    report.refused[name] = str(e)
                    continue
                report.changed[name] = "files read again"
            self._files[name] = versions
        overrides = [key for key in set(configured.overrides) | set(self._configured.overrides)
                     if configured.overrides.get(key) != self._configured.overrides.get(key)]
        self._configured = configured
        self._apply_to_pools()
        self._log.reloaded([*report.removed, *report.changed, *report.added], overrides)
        for name, reason in report.refused.items():
            log.error("reload: server {server} not changed: {reason}", server=name, reason=reason)
        log.info("{line}", line=report.line())
        self._log.announce()
        return report

    async def _converge(self, running: dict[str, ServerConfig], target: Mapping[str, ServerConfig],
                        report: ReloadReport) -> ServerChanges:
        """
        Make the running servers C{target}, one server at a time: removed,
        changed (in place or rebound), added; each one whose listener cannot
        be set up runs as before, in C{report.refused}.

        @return: what was to change.
        """
        plan = server_changes(running, target)
        for name in plan.removed:
            await self._running.remove(name)
            report.removed.append(name)
        for name, config in plan.updated.items():
            try:
                await self._running.update(name, config)
            except ListenerError as e:
                report.refused[name] = str(e)
                continue
            report.changed[name] = listener_note(running[name], config)
        for name, config in plan.added.items():
            try:
                self._running.add(name, config)
            except ListenerError as e:
                report.refused[name] = str(e)
                continue
            report.added.append(name)
        return plan

    def apply_shared(self, current: Callable[[], RuntimeChanges]) -> Deferred[list[str]]:
        """
        Make the cluster's changes (L{ISharedChanges}) the runtime changes,
        as C{current} gives them once the commands before have ended (a
        change this balancer is committing meanwhile is then in them), and
        apply them on top of the configuration file, the way a
        reload applies the file: only the servers that differ change, and
        only those whose listener moved are rebound.  A shared server that
        does not validate here, that this balancer's policy refuses
        (C{[api] allow_exec}), or whose listener cannot be set up on this host
        keeps running as it was (or does not run): each is logged and
        returned, one line each, and the rest applies.
        """
        return self._lock.run(lambda: Deferred.fromCoroutine(self._apply_shared(current())))

    async def _apply_shared(self, changes: RuntimeChanges) -> list[str]:
        if self._running.stopping():
            return []
        running = self._running.configs()
        target, problems = self._shared_servers(self._configured, changes, running)
        report = ReloadReport()
        await self._converge(running, target, report)
        problems += [f"server {name}: {reason}" for name, reason in report.refused.items()]
        self._log.replace(changes)
        self._apply_to_pools()
        for problem in problems:
            log.error("cluster: not applied here: {problem}", problem=problem)
        if report.applied:
            log.info("{line}", line=report.line("cluster"))
        self._log.announce()
        return problems

    def _shared_servers(self, configured: Config, changes: RuntimeChanges,
                        running: Mapping[str, ServerConfig]) -> tuple[dict[str, ServerConfig], list[str]]:
        """
        The servers of C{configured} with the cluster's C{changes} on top,
        each shared definition checked here (against this file, its files,
        this balancer's policy); one that does not pass keeps its C{running}
        configuration (or does not run).

        @return: the servers, and one line per shared server left out.
        """
        base = {n: s for n, s in configured.servers.items() if n not in changes.deleted and n not in changes.servers}
        effective = attrs.evolve(configured, servers=base)
        policy = ChangePolicy.of(self._config.api)
        target = dict(base)
        problems: list[str] = []
        for name, definition in changes.servers.items():
            try:
                config = server_from_mapping(name, definition, "the cluster", effective)
                check_resources(attrs.evolve(effective, servers={name: config}), "the cluster")
                check_server_change(name, config, running.get(name), policy)
            except (ConfigError, ChangeRefused) as e:
                problems.append(f"server {name}: {'; '.join(e.lines()) if isinstance(e, ConfigError) else e}")
                if name in running:
                    target[name] = running[name]
                continue
            target[name] = config
        return target, problems

    def _read_config_file(self) -> tuple[Config, Config]:
        """
        The configuration file as it is now, and with the runtime changes on top.

        @raise ReloadRefused: listing every problem (each also logged): the
            file does not validate, names files that cannot be used, or a
            change made through the API no longer validates against it.
        """
        path = self._config_file
        if self._running.stopping():
            log.error("reload: the balancer is stopping: nothing changed")
            raise ReloadRefused(["the balancer is stopping: nothing changed"])
        try:
            if not path:
                raise ConfigError("reload", [Problem("", "the balancer was started without a configuration file")])
            configured = read_config_file(path)
            if self._shared is None:
                effective = self._log.changes.apply(configured, f"{path} (with the changes made through the API)")
            else:
                check_resources(configured, path)
                servers, problems = self._shared_servers(configured, self._log.changes, self._running.configs())
                for problem in problems:
                    log.error("reload: the cluster's {problem}: not applied here", problem=problem)
                effective = attrs.evolve(configured, servers=servers,
                                         overrides=self._log.changes.overridden(configured.overrides))
            check_resources(effective, path)
        except ConfigError as e:
            lines = e.lines()
            for line in lines:
                log.error("reload: {problem}", problem=line)
            log.error("reload: {path} not applied ({count} problems): nothing changed", path=path, count=len(lines))
            raise ReloadRefused(lines) from e
        return configured, effective

    async def _create_backend(self, name: str, parameters: object, services: list[str]) -> dict[str, Any]:
        if not re.fullmatch(NAME_PATTERN, name):
            raise ConfigError("request body", [Problem(join("backends", name), NAME_RULE)])
        catalogue = self._catalogue()
        if name in catalogue:
            raise ServerExists(f'a server named "{name}" already exists')
        record = {**backend_parameters(name, parameters), "services": []}
        wanted = {service: catalogue.linked_names(service) | {name} for service in services}
        records = await self._relink({**catalogue.records, name: record}, wanted)
        return dict(records[name])

    async def _update_backend(self, name: str, parameters: object, services: list[str] | None) -> dict[str, Any]:
        catalogue = self._catalogue()
        if name not in catalogue:
            raise UnknownBackend(name)
        linked = set(catalogue.linked_services(name, set(self._running.names())))
        targets = linked if services is None else set(services)
        record = {**backend_parameters(name, parameters), "services": sorted(linked)}
        wanted = {
            s: (catalogue.linked_names(s) - {name}) | ({name} if s in targets else set()) for s in linked | targets
        }
        records = await self._relink({**catalogue.records, name: record}, wanted)
        return dict(records[name])

    async def _remove_backend(self, name: str) -> None:
        catalogue = self._catalogue()
        if name not in catalogue:
            raise UnknownBackend(name)
        users = catalogue.linked_services(name, set(self._running.names()))
        if users:
            raise BackendInUse(f'server "{name}" is used by {", ".join(users)}: unlink it first')

        def remove(changes: RuntimeChanges) -> None:
            del changes.backends[name]
            changes.backend_states.pop(name, None)

        await self._record(remove)

    async def _link_backends(self, server: str, names: list[str]) -> None:
        self._running.config(server)
        catalogue = self._catalogue()
        for name in names:
            if name not in catalogue:
                raise UnknownBackend(name)
        await self._relink(catalogue.records, {server: set(names)})

    async def _set_backend_state(self, id: str, state: str | None) -> None:
        if state not in (None, MAINTENANCE, DRAIN):
            raise ValueError(f"unknown admin state {state!r}")
        if id not in self.backends():
            raise UnknownBackend(id)

        def change(changes: RuntimeChanges) -> None:
            if state is None:
                changes.backend_states.pop(id, None)
            else:
                changes.backend_states[id] = state

        await self._record(change)
        self._log.announce()

    async def _relink(
        self, records: Mapping[str, Mapping[str, Any]], wanted: dict[str, set[str]]
    ) -> dict[str, dict[str, Any]]:
        """
        Make C{wanted} (server name to created backend names) the links of
        those servers, with the backends' parameters of C{records}: each
        server whose static list changes is updated (and persisted) through
        L{_update_server}, then the records are persisted.  Checked before
        anything changes; on a later failure, servers already updated get
        their old definition back.  Returns the records as persisted.
        """
        catalogue = self._catalogue()
        plans = []
        for server, names in sorted(wanted.items()):
            config = self._running.config(server)
            new_list = catalogue.static_list(server, config, [spec_of(records[n]) for n in sorted(names)])
            if new_list is not None and new_list != config.discovery.static_list:
                plans.append((server, config, new_list))
        new_records = relinked(records, wanted)
        effective = self.effective_config()
        updated = {}
        for server, config, new_list in plans:
            discovery = attrs.evolve(config.discovery, static_list=new_list)
            updated[server] = server_from_mapping(
                server, to_mapping(attrs.evolve(config, discovery=discovery)), "request body", effective)
        done: list[tuple[str, ServerConfig]] = []

        def change(changes: RuntimeChanges) -> None:
            for server, config in updated.items():
                changes.created(server, to_mapping(config))
            changes.backends = new_records

        try:
            for server, config, _ in plans:
                await self._running.update(server, updated[server])
                done.append((server, config))
            await self._record(change)
        except BaseException:
            for server, config in reversed(done):
                await self._running.update(server, config)
            raise
        self._log.announce()
        return new_records

    async def _set_override(self, id: str, values: object) -> dict[str, int]:
        view = self.backends().get(id)
        if view is None:
            raise UnknownBackend(id)
        if view.origin != "discovery":
            raise NotOverridable(
                f'server "{id}" was created through the API: its parameters are changed, not overridden'
            )
        given = override_values(id, values)
        kept = {k: v for k, v in view.overrides.items() if k not in given}
        wanted = {**kept, **{k: v for k, v in given.items() if v is not None}}
        configured = self._configured.overrides.get(id)
        in_file = configured.values() if configured is not None else {}

        def change(changes: RuntimeChanges) -> None:
            if wanted == in_file:
                changes.overrides.pop(id, None)
            else:
                changes.overrides[id] = wanted

        await self._record(change)
        self._log.announce()
        return wanted

    def _overrides(self) -> dict[str, OverrideConfig]:
        """The overrides in effect: the configuration file's, then those set through the API."""
        return self._log.changes.overridden(self._configured.overrides)

    def _catalogue(self) -> BackendCatalogue:
        """The created backends as recorded now."""
        return BackendCatalogue(self._log.changes.backends)

    def _record(self, change: Callable[[RuntimeChanges], None]) -> Deferred[None]:
        """Persist C{change} through the change log; once it is, give every pool entry its admin state and overrides."""
        return self._log.record(change, self._basis).addCallback(lambda _: self._apply_to_pools())

    def _apply_to_pools(self) -> None:
        """Give every pool entry the admin state recorded for its /v1 id (active if none), every pool the overrides."""
        catalogue = self._catalogue()
        self._running.set_admin_states(catalogue, self._log.changes.backend_states)
        self._running.set_overrides(catalogue, self._overrides())


def listener_note(old: ServerConfig, new: ServerConfig) -> str | None:
    """
    What a server's change from C{old} to C{new} does to its listener, for
    a reload's report: None when it changes in place.
    """
    keys = listener_changes(old, new)
    if not keys:
        return None
    if same_socket(old, new):
        return f"new listener on the same socket: {', '.join(keys)}"
    return f"listener rebound to {new.bind}"


def override_values(id: str, values: object) -> dict[str, int | None]:
    """
    The override parameters C{values} of backend C{id} sets (an integer) or
    clears (None): some of L{OVERRIDABLE}, each in its range.

    @raise ConfigError: listing every problem, with paths C{overrides."<id>".<key>}.
    """
    where = join("overrides", id)
    names = ", ".join(OVERRIDABLE)
    if not isinstance(values, Mapping):
        raise ConfigError("request body", [Problem(where, f"expected a table of {names}, got {describe(values)}")])
    problems = Problems()
    result: dict[str, int | None] = {}
    for key, value in values.items():
        path = join(where, str(key))
        if key not in OVERRIDABLE:
            problems.add(path, f"unknown key; only {names} can be overridden")
        elif value is None:
            result[key] = None
        else:
            parsed = whole(*OVERRIDABLE[key])(value, path, problems)
            if parsed is not INVALID:
                result[key] = parsed
    if len(problems):
        raise ConfigError("request body", list(problems))
    return result
