"""
The health-check attributes of /v1 servers (L{admin.v1.health}): the
latest check over the services that use a backend, and when the checks
last turned it; neither moves the server's ETag.
"""

from __future__ import annotations

import attrs
from twisted.trial.unittest import SynchronousTestCase

from admin.v1.health import health_attributes
from balancer.config.addresses import BackendSpec
from balancer.control.views import BackendView, PoolEntry
from balancer.health.results import CheckResult
from tests.support.v1_api import header, make_v1


def entry(service: str, check: CheckResult | None) -> PoolEntry:
    """An entry of backend 127.0.0.1:9001 in C{service}'s pool, with C{check}."""
    return PoolEntry(service=service, key="127.0.0.1:9001", spec=BackendSpec(host="127.0.0.1", port=9001),
                     live=True, discovered=True, admin_state="active", statistics={}, check=check)


def backend(*entries: PoolEntry) -> BackendView:
    """Backend 127.0.0.1:9001 used by C{entries}."""
    return BackendView(id="127.0.0.1:9001", origin="discovery", parameters={}, admin_state="active", entries=entries)


class HealthAttributesTests(SynchronousTestCase):
    """What C{last_check} and C{state_changed_at} say."""

    def test_nullBeforeAnyCheck(self) -> None:
        """Without checks (or before the first ended), both are null."""
        self.assertEqual(health_attributes(backend(entry("web", None))),
                         {"last_check": None, "state_changed_at": None})

    def test_latestCheckOverTheServicesAndLatestTurn(self) -> None:
        """The latest check of any service that uses the backend; the latest turn of any of them."""
        older = CheckResult("passed", 10.0, 0.25, 4, 1, changed_at=5.0)
        newer = CheckResult("timeout", 12.5, 2.0, 3, 3, changed_at=None)
        self.assertEqual(health_attributes(backend(entry("web", older), entry("db", newer))), {
            "last_check": {"outcome": "timeout", "at": "1970-01-01T00:00:12.5Z", "duration": 2.0,
                           "checks": 3, "failures": 3},
            "state_changed_at": "1970-01-01T00:00:05Z",
        })


class ServerDocumentTests(SynchronousTestCase):
    """The attributes in /v1/servers documents."""

    def test_attributesShownAndOutOfTheETag(self) -> None:
        """A server shows both attributes; a new check result leaves its ETag as it was."""
        v1 = make_v1(self)
        response, body = v1.json(self, "GET", "/v1/servers/127.0.0.1:9001")
        attributes = body["data"]["attributes"]
        self.assertEqual((attributes["last_check"], attributes["state_changed_at"]), (None, None))
        before = header(response, "ETag")
        server = v1.balancer.server("web")
        assert server.health is not None
        original = server.health.result

        def checked(key: str) -> CheckResult:
            return attrs.evolve(CheckResult("failed", 7.0, 0.5, 1, 1), changed_at=7.0)

        server.health.result = checked  # type: ignore[method-assign]
        self.addCleanup(setattr, server.health, "result", original)
        response, body = v1.json(self, "GET", "/v1/servers/127.0.0.1:9001")
        attributes = body["data"]["attributes"]
        self.assertEqual((attributes["last_check"]["outcome"], attributes["state_changed_at"]),
                         ("failed", "1970-01-01T00:00:07Z"))
        self.assertEqual(header(response, "ETag"), before)
