"""
/v1 collections are read once per request: each view is built once per
member, not once per member per member (counted, not timed).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.trial.unittest import SynchronousTestCase

from balancer.control import controller, running
from tests.support.sessions import Address, FakeRelay
from tests.support.v1_api import make_v1

#: How many members each collection gets.
MEMBERS = 200

BIG = """
[servers.big]
bind = "127.0.0.1:3009"
[servers.big.discovery]
kind = "static"
static_list = [{backends}]
"""


class CollectionCostTests(SynchronousTestCase):
    """A collection GET with 200 members builds each view a bounded number of times."""

    def counted(self, module: Any, name: str) -> list[None]:
        """Count the calls of C{module.name} from now on."""
        calls: list[None] = []
        original: Callable[..., Any] = getattr(module, name)

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(None)
            return original(*args, **kwargs)

        self.patch(module, name, counting)
        return calls

    def test_sessionsBuildEachSessionViewOncePerRead(self) -> None:
        v1 = make_v1(self)
        server = v1.balancer.server("web")
        for id in range(1, MEMBERS + 1):
            server.relays[id] = FakeRelay(id, Address("192.0.2.1", 1000 + id))  # type: ignore[assignment]
        built = self.counted(running, "session_view")
        response, body = v1.json(self, "GET", "/v1/sessions")
        self.assertEqual((response.code, len(body["data"])), (200, MEMBERS))
        # the members once, and once more for the collection's Last-Modified: linear, where a
        # collection built member by member would build MEMBERS * MEMBERS views
        self.assertEqual(len(built), 2 * MEMBERS)

    def test_serversReadTheBackendIndexOnce(self) -> None:
        backends = ", ".join(f'"10.0.{n // 250}.{n % 250 + 1}:80"' for n in range(MEMBERS - 3))
        v1 = make_v1(self, extra=BIG.format(backends=backends))
        indexes = self.counted(controller, "backend_views")
        services = self.counted(running, "server_report")
        response, body = v1.json(self, "GET", "/v1/servers")
        self.assertEqual((response.code, len(body["data"])), (200, MEMBERS))
        self.assertEqual((len(indexes), len(services)), (1, len(v1.control.server_names())))

    def test_monitorsReadTheBackendIndexOnce(self) -> None:
        v1 = make_v1(self)
        indexes = self.counted(controller, "backend_views")
        response, body = v1.json(self, "GET", "/v1/monitors")
        self.assertEqual((response.code, len(body["data"])), (200, len(v1.control.server_names())))
        self.assertEqual(len(indexes), 1)
