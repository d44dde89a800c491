"""
A headless Chromium for tests: the system's C{chromium} (Debian's package)
driven by Python Playwright's sync API, every call made in one thread of its
own, so that the reactor keeps serving (the API, backends, clients) while
the browser waits.  Playwright is launched on that executable: it never
downloads a browser (no C{playwright install}).

Where Chromium or Playwright is missing, L{require} skips the test with a
one-line reason, but under C{CI=true} it fails it: there the browser tests
must run.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Callable, TypeVar, cast

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from tests.support.tools import unavailable

T = TypeVar("T")

#: The Chromium executable: C{$BALANCER_CHROMIUM}, else Debian's.
CHROMIUM = os.environ.get("BALANCER_CHROMIUM", "/usr/bin/chromium")


def missing() -> str | None:
    """Why no browser test can run here, in one line; None when they can."""
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set BALANCER_CHROMIUM)"
    if importlib.util.find_spec("playwright") is None:
        return "Python playwright is not installed (pip install '.[test]')"
    return None


def require() -> None:
    """Skip the calling test when no browser can run here (see L{missing}); under C{CI=true}, fail it instead."""
    reason = missing()
    if reason is not None:
        unavailable(f"the browser tests cannot run: {reason}")


class Browser:
    """
    One headless Chromium and the thread that drives it; L{call} runs a
    function there and fires with its result.  Pages opened with L{open}
    record their console errors and uncaught exceptions in L{errors}.
    """

    def __init__(self) -> None:
        self._thread = ThreadPool(minthreads=1, maxthreads=1, name="browser")
        self._playwright: Any = None
        self._browser: Any = None
        self.errors: list[str] = []

    def call(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        """Fires with C{function(*args)} run in the browser's thread (all Playwright calls must be made there)."""
        return deferToThreadPool(cast(IReactorFromThreads, reactor), self._thread, function, *args)

    def start(self, test: SynchronousTestCase) -> Deferred[None]:
        """Launch Chromium; it is closed, and the thread stopped, when C{test} ends."""
        self._thread.start()
        test.addCleanup(self._stop)
        return self.call(self._launch)

    def _launch(self) -> None:
        from playwright.sync_api import sync_playwright

        self._playwright = sync_playwright().start()
        self._browser = self._playwright.chromium.launch(executable_path=CHROMIUM, headless=True)

    def open(self, url: str, credentials: tuple[str, str] | None, viewport: tuple[int, int] = (1280, 900),
             color_scheme: str = "light") -> Deferred[tuple[Any, int]]:
        """
        Open C{url} in a new context that answers HTTP Basic challenges with
        C{credentials} (None: no credentials), on a screen of C{viewport}
        (width, height) that prefers C{color_scheme} (light or dark); fires
        with (page, the status of the document's answer).
        """
        return self.call(self._open, url, credentials, viewport, color_scheme)

    def _open(self, url: str, credentials: tuple[str, str] | None, viewport: tuple[int, int],
              color_scheme: str) -> tuple[Any, int]:
        login = None if credentials is None else {"username": credentials[0], "password": credentials[1]}
        context = self._browser.new_context(http_credentials=login, color_scheme=color_scheme,
                                            viewport={"width": viewport[0], "height": viewport[1]})
        page = context.new_page()
        page.on("console", self._console)
        page.on("pageerror", self._uncaught)
        response = page.goto(url)
        return page, response.status if response is not None else 0

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def _uncaught(self, error: Any) -> None:
        self.errors.append(f"uncaught: {error}")

    def _stop(self) -> Deferred[None]:
        def close() -> None:
            if self._browser is not None:
                self._browser.close()
            if self._playwright is not None:
                self._playwright.stop()

        def stopped(result: Any) -> Any:
            self._thread.stop()
            return result

        return self.call(close).addBoth(stopped)
