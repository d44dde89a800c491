"""Fake C{run_blocking} functions: one that runs at once and records, one that waits for the test."""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred, maybeDeferred


class Runner:
    """A C{run_blocking} that runs each call at once and records it."""

    def __init__(self) -> None:
        self.ran: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        self.ran.append((function, args))
        return maybeDeferred(function, *args)

    def hashes(self) -> list[bytes]:
        """The hashes checked, in order."""
        return [args[1] for _, args in self.ran]


class BlockingRunner:
    """A fake C{run_blocking}: each call waits until the test finishes it."""

    def __init__(self) -> None:
        self.started: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []
        self.ran: list[tuple[Any, ...]] = []

    def __call__(self, function: Callable[..., Any], *args: Any) -> Deferred[Any]:
        waiting: Deferred[Any] = Deferred()
        self.started.append((function, args, waiting))
        return waiting

    @property
    def running(self) -> int:
        return len(self.started)

    def finish(self, index: int = 0) -> None:
        """Run the C{index}th started call now and fire its result."""
        function, args, waiting = self.started.pop(index)
        self.ran.append(args)
        try:
            result = function(*args)
        except Exception as e:
            waiting.errback(e)
        else:
            waiting.callback(result)
