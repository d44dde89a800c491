"""
Three balancers (C{twistd -n balancer}) of one cluster on a real etcd, on
one host: what binds nothing is shared (backends created through /v1,
admin states, weight overrides), writes race through compare-and-swap,
etcd going away stops writes and nothing else, and a restarted member
comes back with the shared state.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.protocol import ServerFactory
from twisted.trial.unittest import TestCase

from tests.support.clients import Named, exchange, port_number
from tests.support.cluster import PASSWORD, Member, Members, members_of, until_member
from tests.support.ctl import run_ctl
from tests.support.etcd import Etcd, started_etcd


def backend(test: TestCase, name: bytes) -> int:
    """A backend on 127.0.0.1 that answers every connection with C{name} and closes; its port."""
    factory = ServerFactory()
    factory.protocol = Named
    factory.name = name  # type: ignore[attr-defined]
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    test.addCleanup(port.stopListening)
    return port_number(port)


def attributes(document: Any) -> Any:
    return document["data"]["attributes"]


class ClusterTestCase(TestCase):
    """An etcd, two backends ("one", "two") and the cluster's members started by each test."""

    timeout = 120

    async def setUpCluster(self, *, both: bool = False) -> None:
        """Start etcd and the backends; server "web" has backend "one" (and "two" when C{both})."""
        self.etcd: Etcd = await started_etcd(self)
        self.one = backend(self, b"one")
        self.two = backend(self, b"two")
        backends = [f"127.0.0.1:{self.one}"] + ([f"127.0.0.1:{self.two}"] if both else [])
        self.members = Members(self, self.etcd, backends)

    async def start_all(self, *names: str) -> list[Member]:
        started = []
        for name in names:
            started.append(await self.members.start(name))
        return started

    async def answers(self, member: Member, count: int) -> list[bytes]:
        """What C{count} connections through C{member}'s server "web" get."""
        port = await member.port_of("web")
        return [await exchange(port) for _ in range(count)]


class SharingTests(ClusterTestCase):
    """A change made on one member reaches the others, through their own apply path."""

    async def test_membersRegisterAndLeave(self) -> None:
        await self.setUpCluster()
        a, b, c = await self.start_all("a", "b", "c")
        cluster = await until_member(a, "/v1/cluster", lambda d: members_of(d) == ["a", "b", "c"], "three members")
        found = {m["instance"]: m for m in attributes(cluster)["members"]}
        self.assertEqual(found["b"]["address"], f"127.0.0.1:{b.api_port}")
        self.assertEqual(attributes(cluster)["available"], True)
        self.assertEqual(attributes(await a.get("/v1/balancer"))["cluster"], "test")
        shown = await run_ctl(a.api_port, "show", "cluster", auth=("admin", PASSWORD))
        self.assertEqual(shown.code, 0, shown)
        lines = shown.out.splitlines()
        for name, member in (("a", a), ("b", b), ("c", c)):
            self.assertTrue(any(f" {name} " in line and f"127.0.0.1:{member.api_port}" in line for line in lines),
                            shown.out)
        await c.stop()
        await until_member(a, "/v1/cluster", lambda d: members_of(d) == ["a", "b"], "c gone at once (lease revoked)")

    async def test_backendCreatedOnOneServesOnAll(self) -> None:
        await self.setUpCluster()
        a, b, c = await self.start_all("a", "b", "c")
        created = {"data": {"id": "extra", "type": "servers",
                            "attributes": {"parameters": {"address": "127.0.0.1", "port": self.two}},
                            "relationships": {"services": {"data": [{"id": "web", "type": "services"}]}}}}
        response, body = await a.call("POST", "/v1/servers", created)
        self.assertEqual(response.code, 204, body)
        started = reactor.seconds()  # type: ignore[attr-defined]
        for member in (b, c):
            await until_member(member, "/v1/servers/extra", lambda d: True, "the backend on every member", 1.0)
        self.assertLess(reactor.seconds() - started, 1.0)  # type: ignore[attr-defined]
        for member in (a, b, c):
            self.assertEqual(sorted(set(await self.answers(member, 4))), [b"one", b"two"], member.name)

    async def test_drainAndOverrideAreHonouredEverywhere(self) -> None:
        await self.setUpCluster(both=True)
        a, b, c = await self.start_all("a", "b", "c")
        for member in (a, b, c):
            self.assertEqual(sorted(set(await self.answers(member, 4))), [b"one", b"two"])
        one = f"127.0.0.1:{self.one}"
        response, body = await b.call("PUT", f"/v1/servers/{one}/set?state=drain")
        self.assertEqual(response.code, 204, body)
        for member in (a, c):
            await until_member(member, f"/v1/servers/{one}",
                               lambda d: attributes(d)["state"].startswith("Draining"), "drain", 1.0)
            self.assertEqual(await self.answers(member, 4), [b"two"] * 4)
        response, body = await c.call("PATCH", f"/v1/servers/{one}",
                                      {"data": {"attributes": {"parameters": {"weight": 7}}}})
        self.assertEqual(response.code, 204, body)
        for member in (a, b):
            await until_member(member, f"/v1/servers/{one}",
                               lambda d: attributes(d)["overrides"] == {"weight": 7}, "the override", 1.0)
        shared = [await member.get(f"/v1/servers/{one}") for member in (a, b, c)]
        tags = set()
        for member in (a, b, c):
            response, _ = await member.call("GET", f"/v1/servers/{one}")
            tags.add(response.headers.getRawHeaders(b"ETag")[0])
        self.assertEqual(len(tags), 1, tags)
        self.assertTrue(tags.pop().startswith(b'"r'))
        self.assertEqual(len({attributes(s)["state"] for s in shared}), 1)

    async def test_concurrentWritesWithOneIfMatchOneWins(self) -> None:
        await self.setUpCluster()
        a, b = await self.start_all("a", "b")
        one = f"127.0.0.1:{self.one}"
        await a.call("PATCH", f"/v1/servers/{one}", {"data": {"attributes": {"parameters": {"weight": 2}}}})
        await until_member(b, f"/v1/servers/{one}", lambda d: attributes(d)["overrides"] == {"weight": 2}, "weight 2")
        response, _ = await a.call("GET", f"/v1/servers/{one}")
        tag = response.headers.getRawHeaders(b"ETag")[0].decode()
        response, _ = await b.call("GET", f"/v1/servers/{one}")
        self.assertEqual(response.headers.getRawHeaders(b"ETag")[0].decode(), tag)
        both = await DeferredList([
            Deferred.fromCoroutine(member.call("PATCH", f"/v1/servers/{one}",
                                               {"data": {"attributes": {"parameters": {"weight": weight}}}},
                                               headers={"If-Match": tag}))
            for member, weight in ((a, 3), (b, 4))], consumeErrors=True)
        codes = sorted(result[1][0].code for result in both)
        self.assertEqual(codes, [204, 412], both)
        lost = [result[1][1] for result in both if result[1][0].code == 412][0]
        self.assertRegex(lost["errors"][0]["detail"], "changed .* meanwhile|If-Match: the resource's ETag is now")
        winner = 3 if both[0][1][0].code == 204 else 4
        for member in (a, b):
            await until_member(member, f"/v1/servers/{one}",
                               lambda d: attributes(d)["overrides"] == {"weight": winner}, "the winner's weight")


class SecuredEtcdTests(TestCase):
    """Members of a cluster whose etcd wants a user and a password."""

    timeout = 120

    async def test_changesFlowWithAuthenticationAndAreRefusedWithout(self) -> None:
        etcd = await started_etcd(self, password="etcd-secret")
        one = backend(self, b"one")
        members = Members(self, etcd, [f"127.0.0.1:{one}"],
                          cluster_extra='etcd_user = "root"\netcd_password = "etcd-secret"')
        a = await members.start("a")
        b = await members.start("b")
        response, body = await a.call("PUT", f"/v1/servers/127.0.0.1:{one}/set?state=drain")
        self.assertEqual(response.code, 204, body)
        await until_member(b, f"/v1/servers/127.0.0.1:{one}",
                           lambda d: attributes(d)["state"].startswith("Draining"), "drain on b")
        stranger = await Members(self, etcd, [f"127.0.0.1:{one}"]).start("stranger")
        cluster = await stranger.get("/v1/cluster")
        self.assertFalse(attributes(cluster)["available"])
        self.assertIn("etcd", attributes(cluster)["last_error"])
        response, body = await stranger.call("PUT", f"/v1/servers/127.0.0.1:{one}/set?state=maintenance")
        self.assertEqual(response.code, 503, body)


class OutageTests(ClusterTestCase):
    """etcd away: traffic goes on, writes get 503; etcd back: everyone resyncs."""

    async def test_etcdAwayAndBack(self) -> None:
        await self.setUpCluster()
        a, b, c = await self.start_all("a", "b", "c")
        await until_member(a, "/v1/cluster", lambda d: members_of(d) == ["a", "b", "c"], "three members")
        await self.etcd.stop()
        await until_member(a, "/v1/cluster", lambda d: not attributes(d)["available"], "a sees etcd gone")
        self.assertEqual(await self.answers(b, 2), [b"one", b"one"])
        response, body = await a.call("PUT", f"/v1/servers/127.0.0.1:{self.one}/set?state=drain")
        self.assertEqual(response.code, 503, body)
        self.assertIn("etcd", body["errors"][0]["detail"])
        self.assertEqual(response.headers.getRawHeaders(b"Retry-After"), [b"5"])
        _, server = await a.call("GET", f"/v1/servers/127.0.0.1:{self.one}")
        self.assertEqual(attributes(server)["state"].startswith("Draining"), False)
        await c.stop()
        await self.etcd.start()
        c = await self.members.start("c")
        for member in (a, b, c):
            await until_member(member, "/v1/cluster", lambda d: attributes(d)["available"], "etcd back", 15)
        self.assertEqual(a.process.output.count(b"etcd unreachable"), 1)
        self.assertEqual(a.process.output.count(b"etcd answers"), 2)
        response, body = await c.call("PATCH", f"/v1/servers/127.0.0.1:{self.one}",
                                      {"data": {"attributes": {"parameters": {"weight": 9}}}})
        self.assertEqual(response.code, 204, body)
        for member in (a, b):
            await until_member(member, f"/v1/servers/127.0.0.1:{self.one}",
                               lambda d: attributes(d)["overrides"] == {"weight": 9}, "the change after the outage")

    async def test_restartedMemberComesBackWithTheSharedState(self) -> None:
        await self.setUpCluster()
        a, b = await self.start_all("a", "b")
        await b.stop()
        created = {"data": {"id": "extra", "type": "servers",
                            "attributes": {"parameters": {"address": "127.0.0.1", "port": self.two}},
                            "relationships": {"services": {"data": [{"id": "web", "type": "services"}]}}}}
        response, body = await a.call("POST", "/v1/servers", created)
        self.assertEqual(response.code, 204, body)
        response, body = await a.call("PUT", f"/v1/servers/127.0.0.1:{self.one}/set?state=maintenance")
        self.assertEqual(response.code, 204, body)
        b = await self.members.start("b")
        self.assertEqual(await self.answers(b, 3), [b"two", b"two", b"two"])
        document = await b.get("/v1/servers/extra")
        self.assertEqual(attributes(document)["parameters"]["port"], self.two)
        cluster = await b.get("/v1/cluster")
        self.assertEqual(attributes(cluster)["errors"], [])

    async def test_startedWhileEtcdIsAwayServesItsCopyThenResyncs(self) -> None:
        await self.setUpCluster(both=True)
        a, b = await self.start_all("a", "b")
        response, body = await a.call("PUT", f"/v1/servers/127.0.0.1:{self.one}/set?state=maintenance")
        self.assertEqual(response.code, 204, body)
        await until_member(b, f"/v1/servers/127.0.0.1:{self.one}",
                           lambda d: attributes(d)["state"].startswith("Maintenance"), "maintenance on b")
        await b.stop()
        await self.etcd.stop()
        b = await self.members.start("b")
        self.assertIn(b"etcd could not be read at start", b.process.output)
        self.assertEqual(await self.answers(b, 3), [b"two"] * 3)
        self.assertFalse(attributes(await b.get("/v1/cluster"))["available"])
        await self.etcd.start()
        for member in (a, b):
            await until_member(member, "/v1/cluster", lambda d: attributes(d)["available"], "etcd back", 15)
        response, body = await a.call("PUT", f"/v1/servers/127.0.0.1:{self.one}/clear")
        self.assertEqual(response.code, 204, body)
        await until_member(b, f"/v1/servers/127.0.0.1:{self.one}",
                           lambda d: not attributes(d)["state"].startswith("Maintenance"), "cleared on b")
