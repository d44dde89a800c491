"""
The dashboard (C{/ui/}) in headless Chromium (L{tests.support.browser})
against a real C{twistd}: two services, "web" with two named backends
checked by ping and "echo" with an echo backend.  An admin sees both
services and their backends, watches the bytes move while a client streams
through echo, puts a backend in maintenance with its button (then traffic
avoids it) and sets a weight; a basic account sees no button; without an
account the page is not shown.  No page logs a console error.

With C{BALANCER_SCREENSHOT=path} the admin test saves the page under load
there (how C{docs/dashboard.png} is made).
"""

from __future__ import annotations

import os
import re
from collections.abc import Generator
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase

from tests.support import browser
from tests.support.clients import Echo, Named, answers, port_number, serve
from tests.support.processes import spawn_balancer
from tests.support.transports import ITCPStream

CONFIG = """
[api]
enabled = true
bind = "127.0.0.1:0"
[[api.users]]
login = "admin"
password = "admin-secret"
[[api.users]]
login = "viewer"
password = "viewer-secret"
account = "basic"

[defaults]
shutdown_grace = "1s"

[servers.web]
bind = "127.0.0.1:0"
balance = "roundrobin"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:{first}", "127.0.0.1:{second}"]
[servers.web.healthcheck]
kind = "ping"
interval = "1s"
timeout = "1s"

[servers.echo]
bind = "127.0.0.1:0"
balance = "leastconn"
[servers.echo.discovery]
kind = "static"
static_list = ["127.0.0.1:{echo}"]
"""

ADMIN = ("admin", "admin-secret")
VIEWER = ("viewer", "viewer-secret")

#: How long the page may take to show what a test waits for, in milliseconds (it polls every second).
SHOWN_MS = 15_000


class Streamer(Protocol):
    """A client that keeps sending: a chunk every 50 ms, of a size that cycles so the chart has a shape."""

    transport: ITCPStream

    def connectionMade(self) -> None:
        self.sent = 0
        self.loop = LoopingCall(self.send)
        self.loop.start(0.05)

    def send(self) -> None:
        self.sent += 1
        self.transport.write(b"x" * (4096 * (1 + self.sent % 40)))

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        if self.loop.running:
            self.loop.stop()


def answer_patch_with_204(route: Any) -> None:
    """
    (A Playwright route handler) let a PATCH through and answer the page
    204 No Content, as MaxScale does without C{Prefer: return=representation}:
    the page must work with either answer.
    """
    if route.request.method != "PATCH":
        route.continue_()
        return
    answered = route.fetch()
    assert answered.status in (200, 204), answered.status
    route.fulfill(status=204, headers={"ETag": answered.headers.get("etag", "")}, body=b"")


def answer_412(route: Any) -> None:
    """(A Playwright route handler) answer as /v1 does when C{If-Match} names an older version."""
    route.fulfill(status=412, content_type="application/json",
                  body=b'{"errors": [{"detail": "the resource has changed: its ETag is not the one given"}]}')


def row(server: str, service: str) -> str:
    """The CSS selector of backend C{server}'s row in service C{service}'s card."""
    return f'section[data-service="{service}"] tr[data-server="{server}"]'


class DashboardTests(TestCase):
    """The page as an admin and as a basic account sees it."""

    timeout = 120

    @inlineCallbacks
    def setUp(self) -> Any:
        browser.require()
        first = self.first_port = yield serve(self, Named, name=b"first")
        second = yield serve(self, Named, name=b"second")
        echo = yield serve(self, Echo)
        self.first = f"127.0.0.1:{port_number(first)}"
        self.second = f"127.0.0.1:{port_number(second)}"
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as config:
            config.write(CONFIG.format(first=port_number(first), second=port_number(second), echo=port_number(echo)))
        process = spawn_balancer(self, path)
        yield process.seen
        self.api = yield process.listening_port("api")
        self.web = yield process.listening_port("web")
        self.echo = yield process.listening_port("echo")
        self.browser = browser.Browser()
        yield self.browser.start(self)

    def open(self, credentials: tuple[str, str] | None, viewport: tuple[int, int] = (1280, 900),
             color_scheme: str = "light") -> Deferred[Any]:
        """Fires with (page, status) of C{/ui} opened with C{credentials} (see L{browser.Browser.open})."""
        return self.browser.open(f"http://127.0.0.1:{self.api}/ui", credentials, viewport, color_scheme)

    @inlineCallbacks
    def stream(self) -> Generator[Deferred[Any], Any, Streamer]:
        """Fires with a client streaming through service echo; it is disconnected when the test ends."""
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.echo, timeout=10)
        streamer = yield connectProtocol(endpoint, Streamer())
        self.addCleanup(streamer.transport.loseConnection)
        return streamer

    def both_services_shown(self, page: Any) -> None:
        """(In the browser's thread) wait until both cards and every backend's row show."""
        from playwright.sync_api import expect

        for selector in (row(self.first, "web"), row(self.second, "web"), 'section[data-service="echo"] tbody tr'):
            expect(page.locator(selector)).to_be_visible(timeout=SHOWN_MS)
        expect(page.locator(f"{row(self.first, 'web')} .state")).to_have_text("Running", timeout=SHOWN_MS)
        expect(page.locator(f"{row(self.first, 'web')} td").nth(2)).to_contain_text("passed", timeout=SHOWN_MS)

    @inlineCallbacks
    def test_adminSeesActsAndTrafficFollows(self) -> Generator[Deferred[Any], Any, None]:
        """Both services, bytes moving under load, maintenance avoiding a backend, a new weight."""
        from playwright.sync_api import expect

        page, status = yield self.open(ADMIN)
        self.assertEqual(status, 200)
        writes: list[dict[str, str]] = []

        def sent(request: Any) -> None:
            if request.method != "GET":
                writes.append(request.headers)

        yield self.browser.call(page.on, "request", sent)
        yield self.browser.call(self.both_services_shown, page)
        bytes_moved = page.locator('section[data-service="echo"] [data-figure="bytes"] .value')
        before = yield self.browser.call(bytes_moved.text_content)
        yield self.stream()
        yield self.browser.call(lambda: expect(bytes_moved).not_to_have_text(before or "", timeout=SHOWN_MS))
        names = yield answers(self.web, 4)
        self.assertEqual(sorted(names), [b"first", b"first", b"second", b"second"])

        second = page.locator(row(self.second, "web"))
        yield self.browser.call(lambda: second.get_by_role("button", name="Maintenance").click())
        yield self.browser.call(lambda: expect(second.locator(".state")).to_have_text("Maintenance", timeout=SHOWN_MS))
        names = yield answers(self.web, 4)
        self.assertEqual(names, [b"first"] * 4)

        first = page.locator(row(self.first, "web"))
        yield self.browser.call(lambda: first.locator("input").fill("7"))
        yield self.browser.call(lambda: first.get_by_role("button", name="Set weight").click())
        yield self.browser.call(lambda: expect(first.locator("td").nth(5)).to_have_text("7", timeout=SHOWN_MS))
        yield self.browser.call(lambda: expect(page.locator("#message")).to_have_text(f"{self.first}: weight 7"))
        yield self.browser.call(page.route, "**/v1/servers/*", answer_patch_with_204)
        yield self.browser.call(lambda: first.locator("input").fill("5"))
        yield self.browser.call(lambda: first.get_by_role("button", name="Set weight").click())
        yield self.browser.call(lambda: expect(first.locator("td").nth(5)).to_have_text("5", timeout=SHOWN_MS))
        yield self.browser.call(lambda: expect(page.locator("#message")).to_have_text(f"{self.first}: weight 5"))
        yield self.browser.call(page.unroute, "**/v1/servers/*")

        yield self.browser.call(lambda: second.get_by_role("button", name="Clear").click())
        yield self.browser.call(lambda: expect(second.locator(".state")).to_have_text("Running", timeout=SHOWN_MS))
        names = yield answers(self.web, 8)
        self.assertIn(b"second", names)

        screenshot = os.environ.get("BALANCER_SCREENSHOT")
        if screenshot:
            yield self.browser.call(lambda: second.get_by_role("button", name="Drain").click())
            yield self.browser.call(lambda: expect(second.locator(".state")).to_have_text("Draining", timeout=SHOWN_MS))
            polyline = page.locator('section[data-service="echo"] polyline.rx')
            yield self.browser.call(lambda: expect(polyline).to_have_attribute(
                "points", re.compile(r"^(\S+ ){59}"), timeout=90_000))
            yield self.browser.call(lambda: page.screenshot(path=screenshot, full_page=True))
        self.assertEqual([(w.get("if-match", "")[:1], w.get("origin")) for w in writes],
                         [('"', f"http://127.0.0.1:{self.api}")] * len(writes))
        self.assertEqual(len(writes), 5 if screenshot else 4)
        self.assertEqual(self.browser.errors, [])

    @inlineCallbacks
    def test_staleReadIsSaid(self) -> Generator[Deferred[Any], Any, None]:
        """A change refused with 412 (the server changed since the page read it) is said, and nothing breaks."""
        from playwright.sync_api import expect

        page, _ = yield self.open(ADMIN)
        yield self.browser.call(self.both_services_shown, page)
        yield self.browser.call(page.route, "**/v1/servers/*/set*", answer_412)
        second = page.locator(row(self.second, "web"))
        yield self.browser.call(lambda: second.get_by_role("button", name="Maintenance").click())
        yield self.browser.call(lambda: expect(page.locator("#message")).to_have_text(
            f"{self.second} changed since it was read (another operator?): nothing done; check it and try again"))
        yield self.browser.call(lambda: expect(second.locator(".state")).to_have_text("Running"))
        self.assertEqual([e for e in self.browser.errors if "status of 412" not in e], [])

    @inlineCallbacks
    def test_backendGoingDownIsShown(self) -> Generator[Deferred[Any], Any, None]:
        """A backend that stops listening: its checks fail, it shows Down, and when that changed."""
        from playwright.sync_api import expect

        page, _ = yield self.open(VIEWER)
        yield self.browser.call(self.both_services_shown, page)
        yield self.first_port.stopListening()
        first = page.locator(row(self.first, "web"))
        yield self.browser.call(lambda: expect(first.locator(".state")).to_have_text("Down", timeout=SHOWN_MS))
        yield self.browser.call(lambda: expect(first.locator("td").nth(2)).to_contain_text("failed"))
        yield self.browser.call(lambda: expect(first.locator("td").nth(3)).to_have_text(re.compile(r"^\d+ s ago$")))
        yield self.browser.call(lambda: expect(page.locator(f"{row(self.second, 'web')} td").nth(3)).to_have_text("—"))
        self.assertEqual(self.browser.errors, [])

    @inlineCallbacks
    def test_basicAccountSeesNoButton(self) -> Generator[Deferred[Any], Any, None]:
        """A basic account sees every service and backend, and no button; on a phone's screen, in dark mode."""
        page, status = yield self.open(VIEWER, viewport=(390, 844), color_scheme="dark")
        self.assertEqual(status, 200)
        yield self.browser.call(self.both_services_shown, page)
        buttons = yield self.browser.call(page.locator("button").count)
        self.assertEqual(buttons, 0)
        account = yield self.browser.call(page.locator("#account").text_content)
        self.assertEqual(account, "read-only account")
        colors = yield self.browser.call(page.locator("body").evaluate,
                                         "body => [getComputedStyle(body).backgroundColor, getComputedStyle(body).color]")
        self.assertEqual(colors, ["rgb(21, 23, 26)", "rgb(230, 232, 235)"])
        dark = os.environ.get("BALANCER_SCREENSHOT_DARK")
        if dark:
            yield self.browser.call(lambda: page.screenshot(path=dark, full_page=True))
        self.assertEqual(self.browser.errors, [])

    @inlineCallbacks
    def test_noPageWithoutAnAccount(self) -> Generator[Deferred[Any], Any, None]:
        """Without credentials Chromium gets the API's 401 challenge, which it cannot answer: no page."""
        from playwright.sync_api import Error

        refused = yield self.assertFailure(self.open(None), Error)
        self.assertIn("ERR_INVALID_AUTH_CREDENTIALS", str(refused))
