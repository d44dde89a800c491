"""
L{HealthMonitor}: checks each backend of one server every C{interval} and
marks it live or down after C{passes} or C{fails} consecutive results.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable

from twisted.internet.defer import CancelledError, Deferred, TimeoutError, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from balancer.backends import Backend, Pool
from balancer.config.schema import HealthcheckConfig
from balancer.health.base import HealthCheckError, IHealthCheck
from balancer.health.registry import make_check
from balancer.health.results import ERROR, FAILED, NOT_CHECKED, PASSED, TIMEOUT, CheckResult

log = Logger()

OnChange = Callable[[Backend, bool], None]


class _Watch:
    """
    The checking of one backend.

    @ivar opposed: consecutive results that disagree with the backend's
        current status (failures while live, passes while down).
    @ivar running: the check in flight, if any.
    @ivar due: a check came due while C{running} was in flight; it starts
        when that one ends.
    """

    def __init__(self, backend: Backend, loop: LoopingCall, starting: IDelayedCall) -> None:
        self.backend = backend
        self.loop = loop
        self.starting = starting
        self.opposed = 0
        self.running: Deferred[bool] | None = None
        self.due = False

    def stop(self) -> None:
        """Cancel the first run if it is still to come, the later ones, and the one in flight."""
        if self.starting.active():
            self.starting.cancel()
        if self.loop.running:
            self.loop.stop()
        if self.running is not None:
            self.running.cancel()


class HealthMonitor:
    """
    Runs one server's health check on its discovered backends.

    Backend I{i} of I{n} is first checked C{interval * i / n} seconds after
    L{start} (backends found later by L{backends_changed} are spread the same
    way among themselves), then every C{interval}.  A check still running
    after C{check_timeout} is cancelled and counts as a failure.  One
    backend's checks never overlap: with a C{timeout} longer than the
    interval (as gobetween and HAProxy allow), a check that comes due while
    the previous one still runs starts when that one ends.  A live
    backend goes down after C{fails} consecutive failures, a down one comes
    back after C{passes} consecutive passes; a result that agrees with the
    current status resets the count, and a L{HealthCheckError} (or any other
    error of the check itself) is logged and changes nothing.  The monitor
    never sets a backend's status before its checks say so: backends start
    as the L{Pool} made them (C{initial_status}).  What the checks of each
    backend found (L{result}) is kept while it is checked.

    @ivar runs: checks started, by backend key (C{host:port}), for the
        backends being checked.
    """

    def __init__(
        self,
        pool: Pool,
        config: HealthcheckConfig,
        reactor: Any,
        check: IHealthCheck | None = None,
        on_change: OnChange | None = None,
    ) -> None:
        """
        @param pool: the server's backends.
        @param config: C{interval}, C{check_timeout}, C{fails}, C{passes},
            and the kind of check when C{check} is not given.
        @param reactor: provides L{IReactorTime}, and what the check needs
            (see L{make_check}).
        @param check: the check to run; by default the one C{config} names.
            Without a check (C{kind = "none"}) the monitor does nothing.
        @param on_change: called with the backend and its new status after
            each transition.
        @raise ValueError: when there is a check but C{interval} is not above 0.
        """
        self._pool = pool
        self._config = config
        self._reactor = reactor
        self._check = check if check is not None else make_check(config, reactor)
        self._on_change = on_change
        self._watches: dict[str, _Watch] = {}
        self._started = False
        self.runs: Counter[str] = Counter()
        self._results: dict[str, CheckResult] = {}
        if self._check is not None and config.interval <= 0:
            raise ValueError(f"a health check needs an interval above 0, got {config.interval}")

    def start(self) -> None:
        """Start checking the pool's discovered backends."""
        self._started = True
        self.backends_changed()

    def stop(self) -> None:
        """Stop all checking, cancelling the checks in flight (their results are ignored)."""
        self._started = False
        for key in list(self._watches):
            self._unwatch(key)

    def result(self, key: str) -> CheckResult | None:
        """
        What the checks of backend C{key} (C{host:port}) found so far: the
        latest one's outcome, time and duration, and the counts; None before
        its first check has ended, or when it is not checked.
        """
        return self._results.get(key)

    def backends_changed(self) -> None:
        """
        Follow the pool after C{Pool.replace}: start checking backends that
        are new, stop checking those gone or no longer discovered.
        """
        check = self._check
        if not self._started or check is None:
            return
        current = {backend.key: backend for backend in self._pool if backend.discovered}
        for key, watch in list(self._watches.items()):
            if current.get(key) is not watch.backend:
                self._unwatch(key)
        new = [backend for key, backend in current.items() if key not in self._watches]
        for i, backend in enumerate(new):
            self._watch(check, backend, self._config.interval * i / len(new))

    def _watch(self, check: IHealthCheck, backend: Backend, delay: float) -> None:
        loop = LoopingCall(self._run, check, backend.key)
        loop.clock = self._reactor
        starting = self._reactor.callLater(delay, loop.start, self._config.interval)
        self._watches[backend.key] = _Watch(backend, loop, starting)

    def _unwatch(self, key: str) -> None:
        self._watches.pop(key).stop()
        del self.runs[key]
        self._results.pop(key, None)

    def _run(self, check: IHealthCheck, key: str) -> None:
        watch = self._watches[key]
        if watch.running is not None:
            watch.due = True
            return
        self.runs[key] += 1
        running = maybeDeferred(check.check, watch.backend.host, watch.backend.port)
        running.addTimeout(self._config.check_timeout, self._reactor)
        watch.running = running
        running.addBoth(self._settle, watch, running, self._reactor.seconds())
        running.addBoth(self._run_due, check, watch)

    def _run_due(self, _: None, check: IHealthCheck, watch: _Watch) -> None:
        """A check ended: the one that came due meanwhile starts now, if the backend is still watched."""
        if watch.due and self._watches.get(watch.backend.key) is watch and watch.running is None:
            watch.due = False
            self._run(check, watch.backend.key)

    def _settle(self, result: bool | Failure, watch: _Watch, running: Deferred[bool], started: float) -> None:
        if watch.running is running:
            watch.running = None
        if self._watches.get(watch.backend.key) is not watch:
            return
        backend = watch.backend
        if not isinstance(result, Failure):
            self._record(backend.key, PASSED if result else FAILED, started)
            self._count(watch, bool(result))
        elif result.check(TimeoutError, CancelledError):
            log.debug("check of {host}:{port} timed out", host=backend.host, port=backend.port)
            self._record(backend.key, TIMEOUT, started)
            self._count(watch, False)
        else:
            self._record(backend.key, ERROR, started)
            self._log_error(result, backend)

    def _record(self, key: str, outcome: str, started: float) -> None:
        now = self._reactor.seconds()
        self._results[key] = self._results.get(key, NOT_CHECKED).then(outcome, now, now - started)

    def _log_error(self, reason: Failure, backend: Backend) -> None:
        if reason.check(HealthCheckError):
            log.warn(
                "backend {host}:{port} health check error, status kept: {error}",
                host=backend.host, port=backend.port, error=reason.getErrorMessage(),
            )
        else:
            log.failure(
                "backend {host}:{port} health check broke, status kept", reason, host=backend.host, port=backend.port
            )

    def _count(self, watch: _Watch, passed: bool) -> None:
        backend = watch.backend
        if passed == backend.live:
            watch.opposed = 0
            return
        watch.opposed += 1
        needed = self._config.passes if passed else self._config.fails
        if watch.opposed < needed:
            return
        watch.opposed = 0
        backend.live = passed
        self._results[backend.key] = self._results[backend.key].turned(self._reactor.seconds())
        if passed:
            log.info("backend {host}:{port} up after {passes} passed checks", host=backend.host, port=backend.port,
                     passes=needed)
        else:
            log.info("backend {host}:{port} down after {fails} failed checks", host=backend.host, port=backend.port,
                     fails=needed)
        if self._on_change is not None:
            self._on_change(backend, passed)
