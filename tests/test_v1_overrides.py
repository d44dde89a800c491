"""
Runtime overrides and closing a backend's sessions through the APIs:
C{PATCH /v1/servers/<host:port>} (weight, priority, max_connections;
address and port read-only; C{null} clears; C{If-Match}), what both APIs
and C{/dump} show of them, C{DELETE /v1/servers/<id>/sessions}, and the live
connection count of C{GET /v1/servers/<id>} summed over worker processes.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from balancer.stats import server_report
from tests.support.sessions import Address, FakeRelay
from tests.support.v1_api import NEW_SERVER, REPRESENTATION, assert_errors, header, make_v1

DISCOVERED = "/v1/servers/127.0.0.1:9001"


def parameters(**values: Any) -> dict[str, Any]:
    """A PATCH document setting C{values} as parameters."""
    return {"data": {"attributes": {"parameters": values}}}


class OverrideTests(SynchronousTestCase):
    """C{PATCH} on a server found by discovery."""

    def setUp(self) -> None:
        self.v1 = make_v1(self)

    def pool_weight(self, key: str = "127.0.0.1:9001") -> int:
        backend = self.v1.balancer.server("web").pool.get(key)
        assert backend is not None
        return backend.spec.weight

    def test_patchSetsAnOverrideBothApisShow(self) -> None:
        response, body = self.v1.json(self, "PATCH", DISCOVERED, parameters(weight=7, max_connections=20), headers=REPRESENTATION)
        self.assertEqual(response.code, 200, body)
        attributes = body["data"]["attributes"]
        self.assertEqual(attributes["overrides"], {"weight": 7, "max_connections": 20})
        self.assertEqual((attributes["parameters"]["weight"], attributes["parameters"]["max_connections"]), (7, 20))
        self.assertEqual(self.pool_weight(), 7)
        _, stats = self.v1.json(self, "GET", "/servers/web/stats")
        self.assertEqual([(b["port"], b["weight"], b["priority"]) for b in stats["backends"]],
                         [("9001", 7, 1), ("9002", 1, 1)])
        _, other = self.v1.json(self, "GET", "/v1/servers/127.0.0.1:9002")
        self.assertEqual(other["data"]["attributes"]["overrides"], {})

    def test_nullClearsAndAnUnchangedValueChangesNothing(self) -> None:
        self.v1.json(self, "PATCH", DISCOVERED, parameters(weight=7, priority=2), headers=REPRESENTATION)
        response, body = self.v1.json(self, "PATCH", DISCOVERED, parameters(weight=None, priority=2), headers=REPRESENTATION)
        self.assertEqual(response.code, 200, body)
        self.assertEqual(body["data"]["attributes"]["overrides"], {"priority": 2})
        self.assertEqual(self.pool_weight(), 2)

    def test_jsonPatchReplacesAParameter(self) -> None:
        patch = [{"op": "replace", "path": "/data/attributes/parameters/priority", "value": 3}]
        response, body = self.v1.json(self, "PATCH", DISCOVERED, patch, content_type="application/json-patch+json", headers=REPRESENTATION)
        self.assertEqual((response.code, body["data"]["attributes"]["overrides"]), (200, {"priority": 3}))

    def test_addressAndPortAreReadOnly(self) -> None:
        response, body = self.v1.json(self, "PATCH", DISCOVERED, parameters(address="127.0.0.2", port=1, weight=3))
        errors = assert_errors(self, response, body, 422, "parameters.address is read-only", "parameters.port is read-only")
        self.assertEqual([e["source"]["pointer"] for e in errors],
                         ["/data/attributes/parameters/address", "/data/attributes/parameters/port"])
        self.assertEqual(self.pool_weight(), 2)
        response, body = self.v1.json(self, "PATCH", DISCOVERED, parameters(address="127.0.0.1", port=9001, weight=3), headers=REPRESENTATION)
        self.assertEqual((response.code, body["data"]["attributes"]["overrides"]), (200, {"weight": 3}))

    def test_badValuesNameTheFieldAndTheRange(self) -> None:
        response, body = self.v1.json(self, "PATCH", DISCOVERED, parameters(weight=-1, max_connections="many"))
        errors = assert_errors(self, response, body, 422, "weight: expected an integer from 0 to 1000000000, got -1",
                               'max_connections: expected an integer, got string "many"')
        self.assertEqual(sorted(e["source"]["pointer"] for e in errors),
                         ["/data/attributes/parameters/max_connections", "/data/attributes/parameters/weight"])
        self.assertEqual(self.pool_weight(), 2)

    def test_ifMatchAndTheETagFollowTheOverride(self) -> None:
        response, _ = self.v1.json(self, "GET", DISCOVERED)
        tag = header(response, "ETag")
        assert tag is not None
        response, _ = self.v1.json(self, "PATCH", DISCOVERED, parameters(weight=4), headers={**REPRESENTATION, "If-Match": tag})
        self.assertEqual(response.code, 200)
        self.assertNotEqual(header(response, "ETag"), tag)
        response, body = self.v1.json(self, "PATCH", DISCOVERED, parameters(weight=5), headers={"If-Match": tag})
        assert_errors(self, response, body, 412)
        self.assertEqual(self.pool_weight(), 4)

    def test_linksStayTheirDiscoverysAndCreatedServersChangeAsBefore(self) -> None:
        unlink: dict[str, Any] = {"data": {"relationships": {"services": {"data": []}}}}
        response, body = self.v1.json(self, "PATCH", DISCOVERED, unlink)
        assert_errors(self, response, body, 409, "comes from the discovery")
        self.v1.json(self, "POST", "/v1/servers", NEW_SERVER, headers=REPRESENTATION)
        response, body = self.v1.json(self, "PATCH", "/v1/servers/mine", parameters(weight=5), headers=REPRESENTATION)
        self.assertEqual((response.code, body["data"]["attributes"]["parameters"]["weight"]), (200, 5))
        self.assertEqual(body["data"]["attributes"]["overrides"], {})

    def test_dumpHasTheOverridesSection(self) -> None:
        self.v1.json(self, "PATCH", DISCOVERED, parameters(priority=9), headers=REPRESENTATION)
        response, raw = self.v1.call(self, "GET", "/dump")
        self.assertEqual(response.code, 200)
        self.assertIn(b'[overrides."127.0.0.1:9001"]\npriority = 9\n', raw)


class SessionsTests(SynchronousTestCase):
    """C{DELETE /v1/servers/<id>/sessions}, and the live count it is watched with."""

    def setUp(self) -> None:
        self.v1 = make_v1(self)
        self.told: list[dict[str, list[str]]] = []
        self.v1.control.on_sessions_closed(self.told.append)

    def relay(self, number: int, service: str, key: str) -> FakeRelay:
        server = self.v1.balancer.server(service)
        relay = FakeRelay(number, Address("10.0.0.1", 5000 + number), server.pool.get(key))
        server.relays[number] = relay  # type: ignore[assignment]
        return relay

    def test_closesEveryRelayOfThatServer(self) -> None:
        mine, other = self.relay(1, "web", "127.0.0.1:9001"), self.relay(2, "web", "127.0.0.1:9002")
        response, raw = self.v1.call(self, "DELETE", DISCOVERED + "/sessions")
        self.assertEqual((response.code, raw), (204, b""))
        self.assertEqual((mine.closed, other.closed), (True, False))
        self.assertEqual(self.told, [{"web": ["127.0.0.1:9001"]}])

    def test_unknownServerMethodsAndPreconditions(self) -> None:
        response, body = self.v1.json(self, "DELETE", "/v1/servers/127.0.0.1:1/sessions")
        assert_errors(self, response, body, 404, "127.0.0.1:1")
        response, body = self.v1.json(self, "GET", DISCOVERED + "/sessions")
        assert_errors(self, response, body, 405)
        self.assertEqual(header(response, "Allow"), "DELETE")
        response, body = self.v1.json(self, "DELETE", DISCOVERED + "/sessions", headers={"If-Match": '"stale"'})
        assert_errors(self, response, body, 412)
        self.assertEqual(self.told, [])

    def test_liveConnectionsAreSummedOverWorkers(self) -> None:
        """C{statistics.connections}: worker 0's live connections plus each other worker's latest report."""
        balancer = self.v1.balancer
        self.v1.control.peers.add_source(lambda name: [server_report(balancer.server(name))] * 2)
        backend = balancer.server("web").pool.get("127.0.0.1:9001")
        assert backend is not None
        backend.counters.active_connections = 4
        _, body = self.v1.json(self, "GET", DISCOVERED)
        self.assertEqual(body["data"]["attributes"]["statistics"]["connections"], 12)
        backend.counters.active_connections = 0
        _, body = self.v1.json(self, "GET", DISCOVERED)
        self.assertEqual(body["data"]["attributes"]["statistics"]["connections"], 0)
