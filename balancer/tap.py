"""
The twistd entry point: C{Options} parses the command line and loads the
configuration; C{makeService} builds the service tree without doing any I/O.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import ILogObserver
from twisted.python import usage

from admin.listener import api_service
from balancer import __version__
from balancer.accesslog import start_access_log
from balancer.acme.http01 import Http01Service
from balancer.acme.service import AcmeService, acme_hosts
from balancer.cluster.service import ClusterService, etcd_store, shared_state
from balancer.cluster.startup import SharedAtStart, bound_first, read_at_start
from balancer.config import Config, ConfigError, read_config_file
from balancer.config.load import check_resources
from balancer.control.controller import Controller
from balancer.control.effective import load_effective
from balancer.demo import demo_service, loopback_backends
from balancer.launch import LaunchTerminal
from balancer.logs import ApplicationLog, OnSignal, TwistdLogging, application_log
from balancer.metrics import metrics_service
from balancer.reload import on_hangup
from balancer.listening import BindError
from balancer.root_service import BalancerService
from balancer.starting import EXAMPLES, no_config_given
from balancer.state import RuntimeChanges, StateCleanup
from balancer.workers.supervisor import WorkerSupervisor


class Options(usage.Options):
    """C{twistd balancer} options."""

    synopsis = "--config=FILE [--check] [--demo]"
    optParameters = [
        ["config", "c", None, f"The configuration file (TOML, or JSON if it ends in .json). Examples: {EXAMPLES}"],
    ]
    optFlags = [
        ["check", None, "Validate the configuration, print the result and exit (0: valid, 1: invalid)."],
        ["demo", None, "Also start demo backends on the configuration's loopback backend addresses."],
    ]

    def opt_version(self) -> None:
        """Print the balancer's version and exit."""
        print(f"balancer {__version__}")
        sys.exit(0)

    def postOptions(self) -> None:
        """
        Load and validate the configuration, then the files it names (TLS
        certificates and keys).

        Every problem is printed to stderr, one per line, and the process exits
        with status 1 before anything binds; so does a missing C{--config},
        with the place of the example configurations.  With C{--check}, a
        valid file exits 0 at once.
        """
        if self["config"] is None:
            print(no_config_given(), file=sys.stderr)
            raise SystemExit(1)
        try:
            configured = read_config_file(self["config"])
            self["configured"] = configured
            self["loaded"], self["changes"] = load_effective(configured, self["config"])
            check_resources(self["loaded"], self["config"])
        except ConfigError as e:
            for line in e.lines():
                print(line, file=sys.stderr)
            raise SystemExit(1)
        if self["check"]:
            servers = len(self["loaded"].servers)
            print(f"{self['config']}: configuration is valid ({servers} servers)")
            raise SystemExit(0)
        cluster = self["configured"].cluster
        self["shared"] = read_at_start(cluster) if cluster is not None else None


class BalancerRoot(MultiService):
    """
    The root service.

    A listener that cannot bind at start ends the process with status 1,
    as C{terminal} says (in the foreground or, through twistd's parent, as a
    daemon).

    The observer of C{log} becomes the application's log observer: twistd
    asks the application for one after C{makeService} and before logging
    starts, and then builds none of its own (see L{balancer.logs}).
    """

    def __init__(self, log: ApplicationLog, terminal: LaunchTerminal | None = None) -> None:
        super().__init__()
        self._log = log
        self._terminal = terminal if terminal is not None else LaunchTerminal(daemon=False)

    def setServiceParent(self, parent: Any) -> Any:
        """Join the application, handing it our log observer."""
        if self._log.observer is not None and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, self._log.observer)
        return super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        """Bind every listener; a L{BindError} ends the start (see L{LaunchTerminal.fail})."""
        try:
            super().privilegedStartService()
        except BindError as e:
            self._terminal.fail(str(e))

    def startService(self) -> None:
        """Start every service, then let go of the starter's terminal: the start has succeeded."""
        try:
            super().startService()
        except BindError as e:
            self._terminal.fail(str(e))
        self._terminal.close()


def build_service(
    config: Config,
    reactor: Any,
    *,
    demo: bool = False,
    config_path: str = "",
    configured: Config | None = None,
    changes: RuntimeChanges | None = None,
    terminal: LaunchTerminal | None = None,
    twistd: TwistdLogging | None = None,
    shared_at_start: SharedAtStart | None = None,
) -> MultiService:
    """
    The whole service tree for C{config}: the balancer, its control
    interface, the reload of the configuration file on C{SIGHUP}, the
    removal of what interrupted writes of C{[state] path} left, the admin API when C{[api] enabled}, the other worker
    processes when C{[defaults] workers} is over 1 and, with C{demo}, its
    demo backends.

    Nothing binds or connects until the tree is started.

    @param config: the effective configuration (file plus runtime state).
    @param configured: the file alone, when it differs from C{config}.
    @param terminal: where a start failure is told (the foreground's stderr when not given).
    @param twistd: twistd's logging options (C{twistd -n} without C{--logfile} when not given).
    @param shared_at_start: with C{[cluster]}, the shared state read at
        start (L{balancer.cluster.startup}); its servers are applied once started.
    """
    log = application_log(config.logging, twistd if twistd is not None else TwistdLogging(), reactor)
    root = BalancerRoot(log, terminal)
    if log.on_usr1 is not None:
        OnSignal(signal.SIGUSR1, log.on_usr1, reactor).setServiceParent(root)
    if config.state is not None:
        StateCleanup(config.state.path).setServiceParent(root)
    if demo:
        demo_service(loopback_backends(config), reactor).setServiceParent(root)
    store, shared = None, None
    if config.cluster is not None:
        store = etcd_store(config.cluster, reactor)
        at_start = shared_at_start if shared_at_start is not None else SharedAtStart(None, "not read at start")
        shared = shared_state(config.cluster, store, at_start, changes or RuntimeChanges(), reactor)
        changes = shared.changes()
        config = bound_first(configured if configured is not None else config, changes)
    balancer = BalancerService(config, reactor)
    balancer.setName("balancer")
    balancer.setServiceParent(root)
    start_access_log(config.logging, balancer.finished, log.access)
    root.control = Controller(  # type: ignore[attr-defined]
        balancer, config, config_path, reactor, configured=configured, changes=changes, shared=shared
    )
    on_hangup(root.control, reactor).setServiceParent(root)  # type: ignore[attr-defined]
    acme_workers = acme_services(config, balancer, reactor, root)
    api = api_service(root.control, config.api, reactor) if config.api.enabled else None  # type: ignore[attr-defined]
    if api is not None:
        api.setServiceParent(root)
    if config.cluster is not None and store is not None and shared is not None:
        ClusterService(config.cluster, store, shared, root.control.apply_shared,  # type: ignore[attr-defined]
                       api.address if api is not None else str, reactor,
                       root.control.info().started_at).setServiceParent(root)  # type: ignore[attr-defined]
    if config.metrics.enabled:
        metrics_service(config.metrics, root.control, reactor,  # type: ignore[attr-defined]
                        balancer.finished).setServiceParent(root)
    if config.defaults.workers > 1:
        supervisor = WorkerSupervisor(root.control, config.defaults.workers, reactor,  # type: ignore[attr-defined]
                                      grace=config.defaults.shutdown_grace)
        supervisor.setName("workers")
        supervisor.setServiceParent(root)
        acme_workers.append(supervisor)
    return root


def acme_services(config: Config, balancer: BalancerService, reactor: Any, root: MultiService) -> list[WorkerSupervisor]:
    """
    Add what orders and renews the certificates of C{acme_hosts} to
    C{root}, with the C{http_bind} listener when C{[acme] challenge = "http"}.

    @return: the list of the worker supervisors to tell of each new
        certificate and TLS-ALPN-01 answer (the caller adds its supervisor).
    """
    told: list[WorkerSupervisor] = []
    hosts = acme_hosts(config)
    certificates = balancer.certificates
    if config.acme is None or certificates is None or not hosts or config.acme.challenge == "dns":
        return told
    if config.acme.challenge == "http":
        Http01Service(config.acme.http_bind, certificates, reactor).setServiceParent(root)

    def issued(hostname: str) -> None:
        for supervisor in told:
            supervisor.certificate_issued(hostname)

    def challenged(hostname: str, pem: bytes | None) -> Deferred[Any]:
        return gatherResults([supervisor.tls_challenge(hostname, pem) for supervisor in told])

    AcmeService(config.acme, hosts, certificates, reactor, issued=issued, challenged=challenged).setServiceParent(root)
    return told


def makeService(options: Options) -> IService:
    """
    twistd's hook: build the service tree from parsed options.

    twistd calls it before it daemonises, so this is where the stderr of
    the starting command is kept for a daemon's start failure.
    """
    from twisted.internet import reactor

    twistd = TwistdLogging.from_options(getattr(options, "parent", {}))

    return build_service(
        options["loaded"],
        reactor,
        demo=bool(options["demo"]),
        config_path=options["config"],
        configured=options["configured"],
        changes=options["changes"],
        terminal=LaunchTerminal(twistd.daemon),
        twistd=twistd,
        shared_at_start=options.get("shared"),
    )
