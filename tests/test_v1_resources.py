"""
/v1 resources and their changes, through C{StubTreq}: documents and
relationships, servers created and linked, admin states gating the pool,
sessions closed, statistics summed over worker processes, and one control
interface under both APIs, persisted the same way in the state file (read
back after a restart).
"""

from __future__ import annotations

import os
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from balancer.config.load import parse_config
from balancer.proxy.tcp import Relay
from balancer.state import StateFile
from balancer.stats import BackendCounters, ServerCounters, server_report
from tests.support.paths import scratch_directory
from tests.support.reactors import ListeningReactor
from tests.support.relays import FakeTransport
from tests.support.v1_api import CONFIG, NEW_SERVER, REPRESENTATION, V1, assert_errors, make_v1

LINK_MINE = {"data": [{"id": "mine", "type": "servers"}, {"id": "127.0.0.1:9001", "type": "servers"},
                      {"id": "127.0.0.1:9002", "type": "servers"}]}


def ids(body: dict[str, Any], relationship: str | None = None) -> list[str]:
    """The ids of a collection, or of one relationship of a member."""
    if relationship is None:
        return [r["id"] for r in body["data"]]
    return [r["id"] for r in body["data"]["relationships"][relationship]["data"]]


class DocumentTests(SynchronousTestCase):
    """What each resource shows."""

    def setUp(self) -> None:
        self.v1 = make_v1(self)

    def test_servicesWithRelationshipsAndSelfLinks(self) -> None:
        _, body = self.v1.json(self, "GET", "/v1/services/web")
        data = body["data"]
        self.assertEqual((data["attributes"]["router"], data["attributes"]["state"]), ("roundrobin", "Started"))
        self.assertEqual(data["links"]["self"], "/v1/services/web")
        self.assertEqual(ids(body, "servers"), ["127.0.0.1:9001", "127.0.0.1:9002"])
        self.assertEqual(data["relationships"]["servers"]["links"],
                         {"self": "/v1/services/web/relationships/servers", "related": "/v1/servers"})
        for name in ("filters", "monitors", "listeners"):
            self.assertEqual(ids(body, name), ["web"])
        _, related = self.v1.json(self, "GET", "/v1/services/web/relationships/servers")
        self.assertEqual(related, data["relationships"]["servers"])

    def test_serversListenersMonitorsFiltersBalancer(self) -> None:
        _, body = self.v1.json(self, "GET", "/v1/servers")
        self.assertEqual(ids(body), ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:5432"])
        server = body["data"][0]["attributes"]
        self.assertEqual((server["state"], server["origin"], server["parameters"]["weight"]), ("Running", "discovery", 2))
        self.assertEqual(set(server["statistics"]), {"connections", "total_connections", "refused", "rx", "tx",
                                                     "rx_second", "tx_second"})
        _, body = self.v1.json(self, "GET", "/v1/listeners/db")
        self.assertEqual(body["data"]["attributes"]["parameters"], {"bind": "127.0.0.1:3001", "protocol": "tcp"})
        _, body = self.v1.json(self, "GET", "/v1/monitors/web")
        self.assertEqual((body["data"]["attributes"]["module"], ids(body, "servers")),
                         ("none", ["127.0.0.1:9001", "127.0.0.1:9002"]))
        _, body = self.v1.json(self, "GET", "/v1/filters/web")
        self.assertEqual(body["data"]["attributes"]["parameters"], {"default": "allow", "rules": []})
        _, body = self.v1.json(self, "GET", "/v1/balancer")
        self.assertEqual(set(body["data"]["attributes"]), {"version", "pid", "started_at", "uptime", "config_path",
                                                           "revision", "cluster"})
        self.assertIsNone(body["data"]["attributes"]["cluster"])
        response, body = self.v1.json(self, "GET", "/v1/cluster")
        self.assertEqual((response.code, body["errors"][0]["detail"]), (
            404, "this balancer is not in a cluster: its configuration has no [cluster] section"))


class ChangeTests(SynchronousTestCase):
    """Writes, and what they do to the running balancer."""

    def setUp(self) -> None:
        self.v1 = make_v1(self)

    def test_linkedServerJoinsThePoolAndUnlinkedLeavesIt(self) -> None:
        self.v1.json(self, "POST", "/v1/servers", NEW_SERVER)
        response, _ = self.v1.json(self, "PATCH", "/v1/services/web/relationships/servers", LINK_MINE)
        self.assertEqual(response.code, 204)
        pool = self.v1.balancer.server("web").pool
        self.assertEqual([b.key for b in pool], ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9100"])
        _, body = self.v1.json(self, "GET", "/v1/servers/mine")
        self.assertEqual((ids(body, "services"), body["data"]["attributes"]["state"]), (["web"], "Running"))
        unlink = {"data": {"relationships": {"services": {"data": []}}}}
        response, body = self.v1.json(self, "PATCH", "/v1/servers/mine", unlink, headers=REPRESENTATION)
        self.assertEqual((response.code, ids(body, "services")), (200, []))
        self.assertEqual([b.key for b in pool], ["127.0.0.1:9001", "127.0.0.1:9002"])

    def test_postWithRelationshipAndParameterChangeFollows(self) -> None:
        document = {"data": {**NEW_SERVER["data"], "relationships": {"services": {"data": [{"id": "db", "type": "services"}]}}}}
        response, body = self.v1.json(self, "POST", "/v1/servers", document, headers=REPRESENTATION)
        self.assertEqual((response.code, ids(body, "services")), (201, ["db"]))
        self.v1.json(self, "PATCH", "/v1/servers/mine", {"data": {"attributes": {"parameters": {"weight": 5}}}})
        self.assertIn("127.0.0.1:9100 weight=5 priority=1", self.v1.control.server_definition("db")["discovery"]["static_list"])

    def test_discoveredServersCannotBeUnlinkedHere(self) -> None:
        response, body = self.v1.json(self, "PATCH", "/v1/services/web/relationships/servers",
                                      {"data": [{"id": "127.0.0.1:9001", "type": "servers"}]})
        assert_errors(self, response, body, 409, "127.0.0.1:9002", "come from discovery")

    def test_maintenanceAndDrainGateThePool(self) -> None:
        pool = self.v1.balancer.server("web").pool
        self.v1.call(self, "PUT", "/v1/servers/127.0.0.1:9001/set?state=maintenance")
        self.assertEqual([b.key for b in pool.candidates()], ["127.0.0.1:9002"])
        self.v1.call(self, "PUT", "/v1/servers/127.0.0.1:9002/set?state=drain")
        self.assertEqual(pool.candidates(), [])
        _, body = self.v1.json(self, "GET", "/v1/servers/127.0.0.1:9002")
        self.assertEqual(body["data"]["attributes"]["state"], "Draining")
        self.v1.call(self, "PUT", "/v1/servers/127.0.0.1:9001/clear?state=drain")
        self.assertEqual(pool.get("127.0.0.1:9001").admin_state, "maintenance")
        self.v1.call(self, "PUT", "/v1/servers/127.0.0.1:9001/clear")
        self.v1.call(self, "PUT", "/v1/servers/127.0.0.1:9002/clear?state=drain")
        self.assertEqual([b.key for b in pool.candidates()], ["127.0.0.1:9001", "127.0.0.1:9002"])
        response, body = self.v1.json(self, "PUT", "/v1/servers/127.0.0.1:9001/set")
        assert_errors(self, response, body, 400, "state is required")

    def test_listenerPatchRebinds(self) -> None:
        response, body = self.v1.json(self, "PATCH", "/v1/listeners/web",
                                      {"data": {"attributes": {"parameters": {"bind": "127.0.0.1:3500"}}}}, headers=REPRESENTATION)
        self.assertEqual(response.code, 200, body)
        self.assertIn(3500, self.v1.reactor.listening())
        self.assertNotIn(3000, self.v1.reactor.listening())
        response, body = self.v1.json(self, "PATCH", "/v1/listeners/web",
                                      {"data": {"attributes": {"parameters": {"balance": "weight"}}}})
        errors = assert_errors(self, response, body, 422, "not a listener parameter")
        self.assertEqual(errors[0]["source"]["pointer"], "/data/attributes/parameters/balance")

    def test_sessionsListedAndClosed(self) -> None:
        server = self.v1.balancer.server("web")
        relay = Relay(server)
        client = FakeTransport("198.51.100.7")
        relay.client.makeConnection(client)
        _, body = self.v1.json(self, "GET", "/v1/sessions")
        self.assertEqual(ids(body), [str(relay.id)])
        attributes = body["data"][0]["attributes"]
        self.assertEqual((attributes["service"], attributes["client"]["address"]), ("web", "198.51.100.7"))
        self.assertEqual(ids({"data": body["data"][0]}, "services"), ["web"])
        response, _ = self.v1.call(self, "DELETE", f"/v1/sessions/{relay.id}")
        self.assertEqual(response.code, 204)
        self.assertTrue(client.aborted)

    def test_serviceCreatedAndDeleted(self) -> None:
        service = {"data": {"id": "api", "type": "services", "attributes": {"parameters": {
            "bind": "127.0.0.1:4100", "discovery": {"kind": "static", "static_list": ["127.0.0.1:9500"]}}}}}
        response, _ = self.v1.json(self, "POST", "/v1/services", service, headers=REPRESENTATION)
        self.assertEqual(response.code, 201)
        self.assertIn(4100, self.v1.reactor.listening())
        response, _ = self.v1.call(self, "DELETE", "/v1/services/api")
        self.assertEqual(response.code, 204)
        self.assertNotIn("api", self.v1.control.server_names())


class WorkerStatisticsTests(SynchronousTestCase):
    """
    With C{[defaults] workers}, /v1 statistics add the other processes'
    latest reports to worker 0's own; sessions and health stay worker 0's.
    """

    def setUp(self) -> None:
        """Two workers, each reporting what worker 0 has: every sum is three times worker 0's figure."""
        self.v1 = make_v1(self)
        balancer = self.v1.balancer
        self.v1.control.peers.add_source(lambda name: [server_report(balancer.server(name))] * 2)

    def set_counters(self, counters: ServerCounters | BackendCounters, **figures: int) -> None:
        """Set C{figures} on C{counters}, those of traffic on its C{traffic}."""
        for name, value in figures.items():
            setattr(counters.traffic if name in ("rx", "tx", "rx_second", "tx_second") else counters, name, value)

    def test_serviceStatisticsAreSummedButSessions(self) -> None:
        server = self.v1.balancer.server("web")
        Relay(server).client.makeConnection(FakeTransport("198.51.100.7"))
        self.set_counters(server.counters, active_connections=1, total_connections=5, over_limit=2, no_backend=3,
                          denied=4, rx=100, tx=10, rx_second=7, tx_second=1)
        _, body = self.v1.json(self, "GET", "/v1/services/web")
        self.assertEqual(body["data"]["attributes"]["statistics"],
                         {"connections": 3, "total_connections": 15, "rx": 300, "tx": 30, "rx_second": 21,
                          "tx_second": 3, "over_limit": 6, "no_backend": 9, "denied": 12, "sessions": 1})

    def test_serverStatisticsAreSummedOverServicesAndWorkers(self) -> None:
        self.v1.json(self, "POST", "/v1/servers", NEW_SERVER)
        self.v1.json(self, "PATCH", "/v1/services/web/relationships/servers", LINK_MINE)
        self.v1.json(self, "PATCH", "/v1/services/db/relationships/servers",
                     {"data": [{"id": "mine", "type": "servers"}, {"id": "127.0.0.1:5432", "type": "servers"}]})
        for service, base in (("web", 1), ("db", 10)):
            backend = self.v1.balancer.server(service).pool.get("127.0.0.1:9100")
            assert backend is not None
            self.set_counters(backend.counters, active_connections=base, total_connections=2 * base,
                              refused_connections=3 * base, rx=4 * base, tx=5 * base, rx_second=6 * base,
                              tx_second=7 * base)
        _, body = self.v1.json(self, "GET", "/v1/servers/mine")
        self.assertEqual(body["data"]["attributes"]["statistics"],
                         {"connections": 33, "total_connections": 66, "refused": 99, "rx": 132, "tx": 165,
                          "rx_second": 198, "tx_second": 231})
        _, body = self.v1.json(self, "GET", "/v1/servers/127.0.0.1:9002")
        self.assertEqual(body["data"]["attributes"]["statistics"]["total_connections"], 0)


class OneControlTests(SynchronousTestCase):
    """Both APIs make the same changes, persisted the same way, and a restart reads them back."""

    def setUp(self) -> None:
        directory = scratch_directory(self)
        self.state = os.path.join(directory, "state.toml")
        self.config = parse_config(CONFIG.format(api="", extra=f'[state]\npath = "{self.state}"').encode(), "t.toml")
        self.v1 = V1(self.config, ListeningReactor())

    def test_changesThroughEitherApiAreTheSame(self) -> None:
        self.v1.json(self, "PATCH", "/v1/services/web", {"data": {"attributes": {"parameters": {"balance": "leastconn"}}}})
        _, root = self.v1.json(self, "GET", "/servers/web")
        self.assertEqual(root["balance"], "leastconn")
        self.v1.json(self, "POST", "/servers/added", {"bind": "127.0.0.1:4200",
                                                       "discovery": {"kind": "static", "static_list": ["127.0.0.1:1"]}})
        _, body = self.v1.json(self, "GET", "/v1/services")
        self.assertIn("added", ids(body))
        self.assertEqual(StateFile(self.state).load().servers["web"]["balance"], "leastconn")

    def test_createdServersLinksAndStatesSurviveRestart(self) -> None:
        self.v1.json(self, "POST", "/v1/servers", NEW_SERVER)
        self.v1.json(self, "PATCH", "/v1/services/web/relationships/servers", LINK_MINE)
        self.v1.call(self, "PUT", "/v1/servers/mine/set?state=maintenance")
        self.v1.call(self, "PUT", "/v1/servers/127.0.0.1:5432/set?state=drain")
        saved = StateFile(self.state).load()
        self.assertEqual(saved.backends["mine"]["services"], ["web"])
        self.assertEqual(saved.backend_states, {"mine": "maintenance", "127.0.0.1:5432": "drain"})
        restarted = V1(self.config, ListeningReactor())
        _, body = restarted.json(self, "GET", "/v1/servers/mine")
        self.assertEqual((body["data"]["attributes"]["state"], ids(body, "services")), ("Maintenance", ["web"]))
        self.assertEqual(restarted.balancer.server("web").pool.get("127.0.0.1:9100").admin_state, "maintenance")
        self.assertEqual(restarted.balancer.server("db").pool.get("127.0.0.1:5432").admin_state, "drain")

    def test_stateFilesWithoutBackendsStillLoad(self) -> None:
        with open(self.state, "w", encoding="utf-8") as f:
            f.write('deleted = ["db"]\n[servers]\n')
        changes = StateFile(self.state).load()
        self.assertEqual((changes.deleted, changes.backends, changes.backend_states), ({"db"}, {}, {}))


