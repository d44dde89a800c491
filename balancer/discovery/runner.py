"""
Running a discovery: fetch, then again every C{interval}, applying the
failpolicy when a fetch fails.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed

from balancer.config.addresses import BackendSpec
from balancer.config.schema import DiscoveryConfig
from balancer.discovery.base import DiscoveryError, IDiscovery
from balancer.discovery.registry import fetch_timeout, make_discovery

log = Logger()

RETRY_WAIT = 2.0
"""Seconds from a failed fetch to the next try (gobetween's), or C{interval} if shorter."""


def describe(failure: Failure) -> str:
    """A one-line reason for a failed fetch."""
    error = failure.value
    if isinstance(error, DiscoveryError):
        return str(error)
    if isinstance(error, ResponseFailed):
        reasons = "; ".join(reason.getErrorMessage() for reason in error.reasons)
        return f"{type(error).__name__}: {reasons}"
    return f"{type(error).__name__}: {failure.getErrorMessage()}"


class DiscoveryRunner:
    """
    Keeps one server's backends up to date from its discovery.

    L{start} fetches at once; after a good fetch the next comes C{interval}
    later (never, if C{interval} is 0 or the kind is C{static}); after a
    failed one, C{min(interval, 2s)} later (2s when C{interval} is 0), until
    a fetch succeeds.  Fetches never overlap.  Each fetch may take
    L{timeout} seconds, then it is cancelled and counts as failed (whatever
    error the cancelled source reports, the reason logged is the timeout).

    A good fetch calls C{on_backends} with the backends found.  A failed
    fetch (connection error, timeout, HTTP status other than 2xx, output
    that does not parse) is logged with its reason, then the failpolicy
    applies: C{keeplast} calls nothing, so the last good list stays;
    C{setempty} calls C{on_backends([])}.

    @ivar fetches: fetches started.
    @ivar failures: fetches that failed.
    @ivar last_error: the reason of the latest failed fetch (C{None} before
        any); it is kept after later good fetches.
    @ivar last_success: when the latest good fetch ended, in epoch seconds
        of the reactor's clock (C{None} before any).
    @ivar timeout: seconds one fetch may take; 0 is no limit.
    """

    def __init__(
        self,
        config: DiscoveryConfig,
        reactor: Any,
        on_backends: Callable[[list[BackendSpec]], None],
        discovery: IDiscovery | None = None,
        *,
        name: str = "",
    ) -> None:
        """
        @param reactor: schedules the fetches and their timeouts (an
            L{IReactorTime}); also what a default C{discovery} connects with.
        @param on_backends: called with each new list (also with C{[]} under C{setempty}).
        @param discovery: the source; default: L{make_discovery}C{(config, reactor)}.
        @param name: the server's name, for the log.
        @raise ValueError: as L{make_discovery} does.
        """
        self._config = config
        self._reactor = reactor
        self._on_backends = on_backends
        self._discovery = discovery if discovery is not None else make_discovery(config, reactor)
        self._name = name or config.kind
        self.timeout = fetch_timeout(config)
        self.fetches = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_success: float | None = None
        self._running = False
        self._fetching: Deferred[Any] | None = None
        self._next: IDelayedCall | None = None

    def start(self) -> None:
        """Fetch now, and keep fetching until L{stop}."""
        if not self._running:
            self._running = True
            self._fetch()

    def stop(self) -> None:
        """Cancel the fetch in progress (no callback follows) and fetch no more."""
        self._running = False
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        fetching, self._fetching = self._fetching, None
        if fetching is not None:
            fetching.cancel()

    def _fetch(self) -> None:
        self._next = None
        self.fetches += 1
        fetching: Deferred[Any] = maybeDeferred(self._discovery.fetch)
        self._fetching = fetching
        timer = self._reactor.callLater(self.timeout, fetching.cancel) if self.timeout else None
        fetching.addCallbacks(
            self._succeeded, self._failed, callbackArgs=(fetching, timer), errbackArgs=(fetching, timer)
        )

    def _ended(self, fetching: Deferred[Any], timer: IDelayedCall | None) -> bool:
        """Stop the fetch's timer; whether the fetch is still the current one."""
        if timer is not None and timer.active():
            timer.cancel()
        if fetching is not self._fetching:
            return False
        self._fetching = None
        return True

    def _succeeded(self, backends: list[BackendSpec], fetching: Deferred[Any], timer: IDelayedCall | None) -> None:
        if not self._ended(fetching, timer):
            return
        self.last_success = self._reactor.seconds()
        if self._config.interval and self._config.kind != "static":
            self._schedule(self._config.interval)
        log.debug("discovery {server}: {count} backends", server=self._name, count=len(backends))
        self._deliver(list(backends))

    def _failed(self, failure: Failure, fetching: Deferred[Any], timer: IDelayedCall | None) -> None:
        timed_out = timer is not None and not timer.active()
        if not self._ended(fetching, timer):
            return
        self.failures += 1
        self.last_error = f"no answer within {self.timeout:g}s (timeout)" if timed_out else describe(failure)
        retry = min(self._config.interval, RETRY_WAIT) if self._config.interval else RETRY_WAIT
        self._schedule(retry)
        log.warn(
            "discovery {server} ({kind}): fetch failed: {reason}; failpolicy {policy}, next try in {retry:g}s",
            server=self._name,
            kind=self._config.kind,
            reason=self.last_error,
            policy=self._config.failpolicy,
            retry=retry,
        )
        if self._config.failpolicy == "setempty":
            self._deliver([])

    def _schedule(self, delay: float) -> None:
        self._next = self._reactor.callLater(delay, self._fetch)

    def _deliver(self, backends: list[BackendSpec]) -> None:
        try:
            self._on_backends(backends)
        except Exception:
            log.failure("discovery {server}: on_backends failed", server=self._name)
