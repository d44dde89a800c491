"""
A worker process of C{[defaults] workers} > 1: C{python -m balancer.workers.child INDEX}.

The twistd process is worker 0; its L{balancer.workers.supervisor.WorkerSupervisor}
starts the others with this module.  A worker serves every server of the
configuration on the same ports as worker 0 (C{SO_REUSEPORT}, see
L{balancer.reuseport}), with its own health checks and discovery, and
nothing else: no admin API, no metrics, no state file.

Its standard streams are its link to worker 0:

 - stdin: JSON lines (L{read_message}), each a whole configuration, a
   request to close sessions, or news of an ACME certificate in C{cache_dir}.  The first configuration starts the servers;
   each later one, sent when the API changed worker 0, is applied as a
   difference (L{server_changes<balancer.control.reloading.server_changes>}): servers removed, changed (in place, or
   with a new listener) and added.  A request to close sessions closes at
   once every relay to the backends it names (C{DELETE /v1/servers/<id>/sessions}).
 - stdout: C{{"ready": true}} once the listeners are bound, then
   C{{"stats": {server: document}}} every second on this process's clock,
   each document the server's L{balancer.stats.server_report}: gobetween's
   statistics document and the counters /v1 and /metrics show besides.
 - stderr: its log events as JSON (C{jsonFileLogObserver}), which worker 0
   logs as its own; so are its access lines, unless C{[logging] output} is
   a file: then it appends them itself to the access log's file
   (L{access_file}), rendered as worker 0 would write its events.

A worker stops on SIGTERM (listeners close first, relays get C{shutdown_grace})
and when its stdin closes (worker 0 is gone).  SIGINT is ignored: Ctrl-C on a
terminal reaches the whole process group, and worker 0 stops its workers itself;
so is SIGHUP (worker 0 reloads the configuration and sends it on), and SIGUSR1
(worker 0 reopens the log files; a worker logs through it, or follows the
access log file's path by itself).
"""

from __future__ import annotations

import json
import signal
import sys
from typing import Any, Generator

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks, succeed
from twisted.internet.stdio import StandardIO
from twisted.internet.task import LoopingCall
from twisted.logger import (
    FilteringLogObserver,
    LogLevel,
    LogLevelFilterPredicate,
    Logger,
    globalLogBeginner,
    jsonFileLogObserver,
)
from twisted.protocols.basic import LineReceiver

from balancer.accesslog import start_access_log
from balancer.acme.cache import CertificateCache
from balancer.acme.service import acme_hosts, answer_tls, load_cached
from balancer.backends import ACTIVE
from balancer.config import ConfigError
from balancer.config.load import config_from_mapping
from balancer.config.overrides import OverrideConfig
from balancer.config.schema import Config, LoggingConfig
from balancer.control.reloading import server_changes
from balancer.control.running import close_backend_relays, name_of
from balancer.root_service import BalancerService
from balancer.listening import BindError
from balancer.logs import PathFollowingFile
from balancer.stats import server_report
from balancer.turnbuffer import TurnBuffer

log = Logger()

#: Seconds between two statistics reports.
REPORT_INTERVAL = 1.0


@attrs.frozen
class Configuration:
    """
    A configuration from worker 0.

    @ivar admin_states: server name to backend C{host:port} to its admin
        state, for backends that are not active.
    @ivar overrides: server name to backend C{host:port} to its overridden parameters.
    """

    config: Config
    admin_states: dict[str, dict[str, str]]
    overrides: dict[str, dict[str, OverrideConfig]]


@attrs.frozen
class CloseSessions:
    """
    Worker 0's request to close every relay to some backends.

    @ivar targets: server name to backend C{host:port}s.
    """

    targets: dict[str, list[str]]


@attrs.frozen
class AcmeIssued:
    """Worker 0 wrote a new ACME certificate for C{hostname} to C{[acme] cache_dir}."""

    hostname: str


@attrs.frozen
class AcmeChallenge:
    """Answer TLS-ALPN-01 for C{hostname} with C{pem} (key and certificate), or stop (C{None})."""

    hostname: str
    pem: bytes | None


def read_message(line: bytes) -> Configuration | CloseSessions | AcmeIssued | AcmeChallenge:
    """
    A line from worker 0: a configuration, C{{"config": MAPPING,
    "admin_states": {server: {"host:port": state}}, "overrides": {server:
    {"host:port": {"weight": N, ...}}}}}, the mapping in the file's own key
    names (L{balancer.config.dump.to_mapping}), the admin states of backends
    that are not active and the overrides; C{{"close_sessions": {server:
    ["host:port", ...]}}}; C{{"acme_certificate": HOST}}; or
    C{{"acme_challenge": HOST, "pem": PEM or null}}.

    @raise balancer.config.ConfigError: if the configuration does not validate.
    @raise ValueError: if the line is not JSON, or not one of those.
    """
    message = json.loads(line)
    if not isinstance(message, dict):
        raise ValueError(f"expected a JSON object, got {line[:40]!r}")
    if "acme_challenge" in message:
        pem = message["pem"]
        return AcmeChallenge(str(message["acme_challenge"]), None if pem is None else str(pem).encode("ascii"))
    if "acme_certificate" in message:
        return AcmeIssued(str(message["acme_certificate"]))
    if "close_sessions" in message:
        return CloseSessions({str(name): [str(key) for key in keys] for name, keys in message["close_sessions"].items()})
    overrides = {
        name: {key: OverrideConfig.of(values) for key, values in backends.items()}
        for name, backends in message.get("overrides", {}).items()
    }
    return Configuration(config_from_mapping(message["config"], "worker 0"), message["admin_states"], overrides)


def access_file(config: LoggingConfig) -> str | None:
    """
    The file a worker appends its access lines to itself, or C{None} when
    they go to worker 0 as log events (stdout or stderr, or twistd's
    C{--logfile}, C{--syslog} or C{--logger}, which only worker 0 knows of).

    With C{[logging] output} a file, worker 0 writes its log there whatever
    twistd's options say, and the access lines there or to
    C{access_output}'s file: a worker writes whole lines to that file with
    C{O_APPEND}, one write per reactor turn, as worker 0 does, following the
    path when logrotate renames the file (L{PathFollowingFile}).
    """
    if config.output in ("stdout", "stderr"):
        return None
    if config.access_output in ("", config.output):
        return config.output
    if config.access_output in ("stdout", "stderr"):
        return None
    return config.access_output


class Worker(LineReceiver):
    """
    The worker's end of its standard streams (L{StandardIO}): starts, changes
    and stops its L{BalancerService} as worker 0 says, and reports statistics.

    @ivar exit_code: the process's exit status: 1 when its first
        configuration could not be served.
    """

    delimiter = b"\n"
    MAX_LENGTH = 64 << 20

    def __init__(self, reactor: Any, level: LogLevelFilterPredicate, index: int = 1) -> None:
        """
        @param level: the filter of the process's log, set to C{[logging] level}
            by the first configuration.
        @param index: the worker's index (C{worker N} in the lines it logs).
        """
        self._level = level
        self._system = f"worker {index}"
        self.exit_code = 0
        self.balancer: BalancerService | None = None
        self._reactor = reactor
        self._applied: Deferred[None] = succeed(None)
        self._stopping = False
        self._reports = LoopingCall(self._report)
        self._reports.clock = reactor

    def lineReceived(self, line: bytes) -> None:
        """
        Start with the first configuration; apply each later one after the
        one before (none once stopping).
        """
        if self._stopping:
            return
        try:
            message = read_message(line)
        except (ValueError, KeyError, TypeError, AttributeError, ConfigError) as e:
            log.critical("not a configuration from worker 0: {error}", error=str(e))
            self._stop(1)
            return
        if isinstance(message, CloseSessions):
            if self.balancer is not None:
                close_backend_relays(self.balancer, message.targets)
            return
        if isinstance(message, AcmeIssued):
            if self.balancer is not None:
                self._load_certificates(self.balancer, [message.hostname])
            return
        if isinstance(message, AcmeChallenge):
            if self.balancer is not None and self.balancer.certificates is not None:
                answer_tls(self.balancer.certificates, message.hostname, message.pem)
            if message.pem is not None:
                # Worker 0 tells the CA to validate only once every worker answers: its connection may come here.
                self._send({"acme_challenge_answered": message.hostname})
            return
        if self.balancer is None:
            self._start(message)
            return
        self._applied.addCallback(lambda _: self._apply(message))
        self._applied.addErrback(lambda failure: log.failure("applying a configuration failed", failure))

    def lineLengthExceeded(self, line: bytes) -> None:
        """A configuration over L{MAX_LENGTH} bytes: worker 0 is not speaking our language."""
        log.critical("configuration line over {limit} bytes", limit=self.MAX_LENGTH)
        self._stop(1)

    def _start(self, message: Configuration) -> None:
        """Log as C{[logging] level} says, bind every listener, report that we serve."""
        config = message.config
        level = config.logging.level
        self._level.defaultLogLevel = LogLevel.levelWithName("warn" if level == "warning" else level)
        balancer = BalancerService(config, self._reactor)
        path = access_file(config.logging)
        destination = TurnBuffer(PathFollowingFile(path), self._reactor, path) if path is not None else None
        start_access_log(config.logging, balancer.finished, destination, self._system)
        try:
            balancer.privilegedStartService()
        except BindError as e:
            log.critical("{error}", error=str(e))
            self._stop(1)
            return
        balancer.startService()
        self.balancer = balancer
        self._load_certificates(balancer, acme_hosts(config))
        self._apply_states(message)
        self._reactor.addSystemEventTrigger("before", "shutdown", self._shutdown)
        self._send({"ready": True})
        self._reports.start(REPORT_INTERVAL, now=True)

    def _load_certificates(self, balancer: BalancerService, hostnames: list[str]) -> None:
        """Serve the certificates worker 0 keeps in C{[acme] cache_dir} for C{hostnames}."""
        acme = balancer.config.acme
        if acme is not None and balancer.certificates is not None:
            load_cached(balancer.certificates, CertificateCache(acme.cache_dir), hostnames)

    @inlineCallbacks
    def _apply(self, message: Configuration) -> Generator[Deferred[Any], Any, None]:
        """Bring the running servers to C{message}'s configuration: removals, then changes, then additions."""
        balancer = self.balancer
        if balancer is None:  # stopping
            return
        config = message.config
        changes = server_changes({s.name: s.config for s in balancer.servers()}, config.servers)
        for name in changes.removed:
            yield balancer.remove_server(name)
        for name, server in changes.updated.items():
            try:
                yield balancer.update_server(name, server)
            except BindError as e:
                log.error("{error}", error=str(e))
        for name, server in changes.added.items():
            try:
                balancer.add_server(name, server)
            except BindError as e:
                log.error("{error}", error=str(e))
        self._apply_states(message)

    def _apply_states(self, message: Configuration) -> None:
        """Give every backend the admin state worker 0 has for it (active if none), every pool its overrides."""
        assert self.balancer is not None
        for server in self.balancer.servers():
            server.pool.set_overrides(message.overrides.get(name_of(server), {}))
            wanted = message.admin_states.get(name_of(server), {})
            for backend in server.pool:
                backend.admin_state = wanted.get(backend.key, ACTIVE)

    def _report(self) -> None:
        """Send every server's statistics document."""
        assert self.balancer is not None
        self._send({"stats": {server.name: server_report(server) for server in self.balancer.servers()}})

    def _send(self, message: dict[str, Any]) -> None:
        transport = self.transport
        assert transport is not None, "a worker sends only once connected to its standard I/O"
        transport.write(json.dumps(message).encode() + b"\n")

    def _shutdown(self) -> Deferred[None] | None:
        """Before the reactor stops: stop reporting, close listeners, give relays their grace."""
        self._stopping = True
        if self._reports.running:
            self._reports.stop()
        balancer, self.balancer = self.balancer, None
        return balancer.stopService() if balancer is not None and balancer.running else None

    def _stop(self, exit_code: int) -> None:
        """Stop the reactor (once), exiting with C{exit_code}."""
        if not self._stopping:
            self._stopping = True
            self.exit_code = exit_code
            self._reactor.stop()

    def connectionLost(self, reason: object = None) -> None:
        """Worker 0 closed our stdin (it is gone): stop."""
        self._stop(self.exit_code)


def main() -> int:
    """
    Run a worker until it is told to stop; returns the exit status.

    Its one argument, the worker's index, is for C{ps} and C{top} to show.
    """
    from twisted.internet import reactor

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    level = LogLevelFilterPredicate(LogLevel.info)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(jsonFileLogObserver(sys.stderr), [level])], redirectStandardIO=False
    )
    worker = Worker(reactor, level, int(sys.argv[1]))
    StandardIO(worker, reactor=reactor)
    reactor.run()
    return worker.exit_code


if __name__ == "__main__":
    sys.exit(main())
