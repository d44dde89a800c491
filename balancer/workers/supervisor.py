"""
One process per core (C{[defaults] workers = N}): the supervisor in worker 0.

The twistd process is worker 0, the only one with the admin API, the
metrics and the state file.  With N > 1 its L{WorkerSupervisor} starts
workers 1 to N-1 (C{python -m balancer.workers.child INDEX}, L{balancer.workers.child})
once worker 0's listeners are bound, and every process listens on the same
ports with C{SO_REUSEPORT}: the kernel spreads new connections across them.

 - Configuration: each worker gets worker 0's effective configuration (file
   plus runtime changes, with the real port of servers bound to port 0) and
   the admin states and overrides of its backends as a JSON line on its
   stdin when it starts, and again after every change made through the API
   (L{Controller.subscribe}).
 - Closing sessions: when the API closes every session of a backend
   (L{Controller.close_backend_sessions}), each worker gets a
   C{{"close_sessions": {server: [host:port, ...]}}} line on the same stdin
   (L{Controller.on_sessions_closed}).
 - Statistics: each worker sends its servers' statistics documents every
   second (L{balancer.stats.server_report}); the supervisor keeps each
   worker's latest, which the controller's views (C{GET /servers/<name>/stats},
   /v1 and /metrics read them) add to worker 0's own
   (L{balancer.control.sums}).  A worker that ended still counts with
   its last report until its replacement sends its first.
 - ACME certificates: only worker 0 orders them and answers challenges
   (L{balancer.acme.service}); it writes each new one to C{[acme] cache_dir}
   and sends C{{"acme_certificate": HOST}} to every worker, which reads it
   from there (and reads every cached one when it starts).  With
   C{challenge = "sni"} it also sends C{{"acme_challenge": HOST, "pem": PEM}}
   (C{null} once validated), since the CA's connection may reach any worker.
 - Logs: each worker's log events are logged here, with C{log_system} set to
   C{worker N}.
 - Failures: a worker that ends while the supervisor runs is started again
   after L{RESTART_DELAY} seconds, doubled after each quick failure up to
   L{RESTART_MAX_DELAY}, and back to L{RESTART_DELAY} once a worker ran for
   L{RESTART_MAX_DELAY} seconds.
 - Stopping: each worker gets SIGTERM (by the pid it was started with) and
   C{shutdown_grace} for its relays; one still running L{KILL_MARGIN} seconds
   after that gets SIGKILL.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any, Callable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, eventFromJSON, globalLogPublisher
from twisted.python.failure import Failure

import balancer
from balancer.backends import ACTIVE
from balancer.config.dump import to_mapping
from balancer.control.controller import Controller

log = Logger()

#: Seconds before a worker that ended is started again, the first time.
RESTART_DELAY = 1.0
#: The longest wait before a restart; a worker that ran this long counts as healthy.
RESTART_MAX_DELAY = 30.0
#: Seconds past the shutdown grace that a stopping worker has before SIGKILL.
KILL_MARGIN = 5.0
#: Seconds worker 0 waits for the workers to answer an ACME TLS-ALPN-01 challenge before the CA validates.
CHALLENGE_WAIT = 5.0
#: The configuration sections a worker needs (not the API's accounts, metrics or state; [acme] for its cache_dir).
WORKER_SECTIONS = ("logging", "defaults", "servers", "acme")


def config_message(control: Controller) -> bytes:
    """
    The line that gives a worker worker 0's configuration now (see
    L{balancer.workers.child.read_message}): the effective configuration, each
    server bound to port 0 given the port worker 0 got, the admin state
    of every backend that is not active, and the overrides of each
    server's backends (C{host:port} to the parameters overridden; not those
    of a backend created through the API, which has its own).
    """
    config = control.effective_config()
    views = {view.name: view for view in control.services()}
    servers = {}
    for name, server in config.servers.items():
        if server.bind.port == 0:
            server = attrs.evolve(server, bind=attrs.evolve(server.bind, port=views[name].port))
        servers[name] = server
    mapping = to_mapping(attrs.evolve(config, servers=servers))
    states = {
        name: {entry.key: entry.admin_state for entry in views[name].pool if entry.admin_state != ACTIVE}
        for name in servers
    }
    overrides: dict[str, dict[str, dict[str, int]]] = {name: {} for name in servers}
    for backend in control.backends().values():
        if backend.overrides:
            for entry in backend.entries:
                overrides[entry.service][entry.key] = backend.overrides
    message = {
        "config": {k: v for k, v in mapping.items() if k in WORKER_SECTIONS},
        "admin_states": states,
        "overrides": overrides,
    }
    return json.dumps(message).encode() + b"\n"


def close_message(targets: dict[str, list[str]]) -> bytes:
    """The line that tells a worker to close every relay to C{targets} (server name to backend C{host:port}s)."""
    return json.dumps({"close_sessions": targets}).encode() + b"\n"


def certificate_message(hostname: str) -> bytes:
    """The line that tells a worker to serve C{hostname}'s new ACME certificate, now in C{[acme] cache_dir}."""
    return json.dumps({"acme_certificate": hostname}).encode() + b"\n"


def challenge_message(hostname: str, pem: bytes | None) -> bytes:
    """The line that tells a worker to answer TLS-ALPN-01 for C{hostname} with C{pem} (key and certificate), or to stop."""
    return json.dumps({"acme_challenge": hostname, "pem": None if pem is None else pem.decode("ascii")}).encode() + b"\n"


def worker_environment() -> dict[str, str]:
    """This process's environment, with the directory our C{balancer} package came from first on C{PYTHONPATH}."""
    source = os.path.dirname(os.path.dirname(os.path.abspath(balancer.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source, env.get("PYTHONPATH")]))
    return env


class WorkerProcess(ProcessProtocol):
    """
    Worker 0's end of one worker's standard streams.

    @ivar ended: fires with None when the process has ended.
    @ivar started_at: when it was started, on the supervisor's clock.
    """

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.started_at = supervisor.reactor.seconds()
        self.ended: Deferred[None] = Deferred()
        self._out = b""
        self._err = b""

    @property
    def pid(self) -> int | None:
        """The process id (None once it has ended)."""
        return self.transport.pid if self.transport is not None else None

    def connectionMade(self) -> None:
        """Give the new worker the configuration it starts with."""
        self.send(config_message(self.supervisor.control))

    def send(self, line: bytes) -> None:
        """Write a configuration line to the worker's stdin."""
        if self.transport is not None:
            self.transport.write(line)

    def outReceived(self, data: bytes) -> None:
        """Messages, one JSON object a line: C{ready}, then C{stats}."""
        *lines, self._out = (self._out + data).split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                log.error("worker {index} sent {line!r}, not a message", index=self.index, line=line)
                continue
            if "stats" in message:
                self.supervisor.reports[self.index] = message["stats"]
            elif "acme_challenge_answered" in message:
                self.supervisor.challenge_answered(self.index, str(message["acme_challenge_answered"]))
            elif message.get("ready"):
                log.info("worker {index} (pid {pid}) serving", index=self.index, pid=self.pid)

    def errReceived(self, data: bytes) -> None:
        """Log events as JSON, one a line; any other line (a traceback) is logged as an error."""
        *lines, self._err = (self._err + data).split(b"\n")
        for line in lines:
            self._relay(line)

    def _relay(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").lstrip("\x1e")
        if not text.strip():
            return
        try:
            event = eventFromJSON(text)
        except ValueError:
            log.error("{text}", text=text, log_system=f"worker {self.index}")
            return
        event["log_system"] = f"worker {self.index}"
        globalLogPublisher(event)

    def processEnded(self, reason: Failure) -> None:
        """Log what is left of its output and tell the supervisor."""
        if self._err:
            self._relay(self._err)
            self._err = b""
        self.supervisor.ended(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(Service):
    """
    Starts, restarts and stops workers 1 to C{count}-1 beside worker 0, keeps
    their latest statistics, and sends them every configuration change made
    through C{control}.

    @ivar processes: the running workers by index.
    @ivar reports: the latest statistics of each worker that sent any, by
        index, then by server name.
    """

    def __init__(
        self, control: Controller, count: int, reactor: Any, *, grace: float, executable: str = sys.executable
    ) -> None:
        """
        @param count: the number of worker processes, worker 0 included.
        @param grace: the shutdown grace the workers give their relays.
        @param executable: the Python that runs the workers.
        """
        self.control = control
        self.count = count
        self.reactor = reactor
        self.grace = grace
        self.executable = executable
        self.processes: dict[int, WorkerProcess] = {}
        self.reports: dict[int, dict[str, dict[str, Any]]] = {}
        self._restarts: dict[int, IDelayedCall] = {}
        self._delays: dict[int, float] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        self._challenges: dict[str, tuple[set[int], Deferred[None]]] = {}

    def startService(self) -> None:
        """Start every worker and follow the controller's changes (worker 0's listeners are bound by now)."""
        super().startService()
        self._unsubscribe = [self.control.subscribe(self.push), self.control.on_sessions_closed(self.close_sessions)]
        self.control.peers.add_source(self.stats)
        for index in range(1, self.count):
            self._spawn(index)

    def _spawn(self, index: int) -> None:
        self._restarts.pop(index, None)
        process = WorkerProcess(self, index)
        argv = [self.executable, "-m", "balancer.workers.child", str(index)]
        self.reactor.spawnProcess(process, self.executable, argv, env=worker_environment())
        self.processes[index] = process
        log.info("worker {index} started (pid {pid})", index=index, pid=process.pid)

    def push(self) -> None:
        """Send the configuration as it is now to every running worker."""
        line = config_message(self.control)
        for process in self.processes.values():
            process.send(line)

    def close_sessions(self, targets: dict[str, list[str]]) -> None:
        """Tell every running worker to close its relays to C{targets} (server name to backend C{host:port}s)."""
        line = close_message(targets)
        for process in self.processes.values():
            process.send(line)

    def certificate_issued(self, hostname: str) -> None:
        """Tell every running worker to read C{hostname}'s new ACME certificate from C{cache_dir}."""
        line = certificate_message(hostname)
        for process in self.processes.values():
            process.send(line)

    def tls_challenge(self, hostname: str, pem: bytes | None) -> Deferred[None]:
        """
        Tell every running worker to answer TLS-ALPN-01 for C{hostname} with
        C{pem}, or to stop (C{None}).  Fires once every worker told to answer
        says it does (the CA's connection may reach any of them), or after
        L{CHALLENGE_WAIT} seconds without that (logged; the CA may then fail
        the validation, and the order is tried again).
        """
        line = challenge_message(hostname, pem)
        waiting = set(self.processes) if pem is not None else set()
        for process in self.processes.values():
            process.send(line)
        if not waiting:
            return succeed(None)
        answered: Deferred[None] = Deferred()
        self._challenges[hostname] = (waiting, answered)

        def late(result: object, timeout: float) -> None:
            if self._challenges.get(hostname, (None, None))[1] is answered:
                del self._challenges[hostname]
            log.warn("acme: workers {late} did not answer the challenge of {hostname} within {seconds} s",
                     late=sorted(waiting), hostname=hostname, seconds=timeout)

        return answered.addTimeout(CHALLENGE_WAIT, self.reactor, onTimeoutCancel=late)

    def challenge_answered(self, index: int, hostname: str) -> None:
        """Worker C{index} answers TLS-ALPN-01 for C{hostname} now."""
        waiting, answered = self._challenges.get(hostname, (set(), None))
        waiting.discard(index)
        if answered is not None and not waiting:
            del self._challenges[hostname]
            answered.callback(None)

    def stats(self, name: str) -> list[dict[str, Any]]:
        """The workers' latest statistics documents of server C{name}."""
        return [report[name] for report in self.reports.values() if name in report]

    def ended(self, process: WorkerProcess, reason: Failure) -> None:
        """A worker ended: unless we are stopping, start another after the backoff."""
        if self.processes.get(process.index) is process:
            del self.processes[process.index]
        if not self.running:
            log.info("worker {index} stopped", index=process.index)
            return
        lived = self.reactor.seconds() - process.started_at
        previous = self._delays.get(process.index)
        if previous is None or lived >= RESTART_MAX_DELAY:
            delay = RESTART_DELAY
        else:
            delay = min(previous * 2, RESTART_MAX_DELAY)
        self._delays[process.index] = delay
        log.warn(
            "worker {index} ended ({reason}); starting it again in {delay}s",
            index=process.index,
            reason=reason.getErrorMessage(),
            delay=delay,
        )
        self._restarts[process.index] = self.reactor.callLater(delay, self._spawn, process.index)

    def stopService(self) -> Deferred[None]:
        """
        Stop every worker: SIGTERM now, SIGKILL to any still running
        C{grace} + L{KILL_MARGIN} seconds later.

        @return: fires once every worker has ended.
        """
        if not self.running:
            return succeed(None)
        super().stopService()
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        self.control.peers.remove_source(self.stats)
        for restart in self._restarts.values():
            restart.cancel()
        self._restarts.clear()
        processes = list(self.processes.values())
        if not processes:
            return succeed(None)
        for process in processes:
            self._signal(process, signal.SIGTERM)
        deadline = self.reactor.callLater(self.grace + KILL_MARGIN, self._kill, processes)

        def ended(_: list[None]) -> None:
            if deadline.active():
                deadline.cancel()

        return gatherResults([p.ended for p in processes]).addCallback(ended)

    def _kill(self, processes: list[WorkerProcess]) -> None:
        """SIGKILL to those of C{processes} still running."""
        for process in processes:
            self._signal(process, signal.SIGKILL)

    def _signal(self, process: WorkerProcess, signum: int) -> None:
        """Send C{signum} to a worker we started, unless it has ended."""
        if process.transport is None:
            return
        try:
            process.transport.signalProcess(signum)
        except ProcessExitedAlready:
            return
        if signum == signal.SIGKILL:
            log.warn("worker {index} (pid {pid}) still running: killed", index=process.index, pid=process.pid)
