"""
Cluster members on memory reactors sharing an in-memory etcd
(L{tests.support.fake_etcd}): changes committed with compare-and-swap,
applied elsewhere through the control layer, refused by the local policy
or the local host, etcd away and back, compaction, membership leases.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import generate_latest
from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from balancer.cluster import records
from balancer.cluster.members import Membership
from balancer.cluster.shared import SharedState
from balancer.cluster.store import Put
from balancer.cluster.sync import RETRY_LONGEST, ClusterSync
from balancer.config.load import read_config_file
from balancer.metrics import metrics_registry
from balancer.control.controller import Controller
from balancer.control.errors import ChangeConflict, ClusterUnavailable
from balancer.root_service import BalancerService
from tests.support.fake_etcd import FakeEtcd
from tests.support.paths import scratch_directory
from tests.support.reactors import ListeningReactor

CONFIG = """
[api]
allow_exec = {allow_exec}

[cluster]
etcd_endpoints = ["http://127.0.0.1:2379"]
cluster_name = "test"
instance = "{name}"

[servers.web]
bind = "127.0.0.1:3000"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:9001", "127.0.0.1:9002"]
"""

NEW_SERVER = {"bind": "127.0.0.1:4000", "discovery": {"kind": "static", "static_list": ["127.0.0.1:9100"]}}


class Member:
    """One balancer of the cluster on its own memory reactor, sharing C{store}."""

    def __init__(self, test: TestCase, store: FakeEtcd, name: str, *, allow_exec: bool = False,
                 taken: tuple[int, ...] = ()) -> None:
        self.reactor = ListeningReactor(taken)
        self.path = os.path.join(scratch_directory(test), f"{name}.toml")
        with open(self.path, "w") as f:
            f.write(CONFIG.format(name=name, allow_exec=str(allow_exec).lower()))
        config = read_config_file(self.path)
        assert config.cluster is not None
        self.shared = SharedState(store, config.cluster.key_prefix(), name, config.cluster.etcd_endpoints,
                                  "test", self.reactor)
        self.balancer = BalancerService(config, self.reactor)
        self.balancer.privilegedStartService()
        self.balancer.startService()
        self.control = Controller(self.balancer, config, self.path, self.reactor, configured=config, shared=self.shared)
        self.sync = ClusterSync(store, self.shared, self.control.apply_shared, self.reactor)
        self.sync.startService()
        test.addCleanup(self.sync.stopService)

    def servers(self) -> list[str]:
        return self.control.server_names()


class SharingTests(TestCase):
    """A change made on one member is committed once and applied by the others."""

    def setUp(self) -> None:
        self.store = FakeEtcd()
        self.a = Member(self, self.store, "a")
        self.b = Member(self, self.store, "b")

    def test_aServerAddedOnOneRunsOnTheOther(self) -> None:
        self.successResultOf(self.a.control.add_server("new", NEW_SERVER))
        self.assertEqual(self.b.servers(), ["web", "new"])
        self.assertEqual(self.b.control.server_definition("new")["bind"], "127.0.0.1:4000")
        self.assertEqual(self.b.reactor.listening(), [3000, 4000])
        version = self.a.control.shared_version("server", "new")
        self.assertIsNotNone(version)
        self.assertEqual(self.b.control.shared_version("server", "new"), version)
        self.assertEqual(self.b.control.changed_at("server", "new"), self.a.control.changed_at("server", "new"))

    def test_aRemovalLeavesATombstoneAndRemovesEverywhere(self) -> None:
        self.successResultOf(self.a.control.remove_server("web"))
        self.assertEqual(self.b.servers(), [])
        self.assertEqual(self.b.reactor.listening(), [])
        snapshot = self.successResultOf(self.store.get_prefix("/balancer/test/servers/"))
        self.assertEqual([records.decode(e.value, 0).fields for e in snapshot.entries], [{"deleted": True}])

    def test_statesAndOverridesAreShared(self) -> None:
        self.successResultOf(self.a.control.set_backend_state("127.0.0.1:9001", "drain"))
        self.successResultOf(self.b.control.set_override("127.0.0.1:9002", {"weight": 5}))
        for member in (self.a, self.b):
            self.assertEqual(member.control.backend("127.0.0.1:9001").admin_state, "drain")
            self.assertEqual(member.control.backend("127.0.0.1:9002").overrides, {"weight": 5})

    def test_aStaleBasisLosesAndChangesNothing(self) -> None:
        store = FakeEtcd(delay=1.0)
        a, b = Member(self, store, "a"), Member(self, store, "b")
        self.successResultOf(a.control.set_override("127.0.0.1:9001", {"weight": 3}))
        failure = self.failureResultOf(b.control.set_override("127.0.0.1:9001", {"weight": 4}), ChangeConflict)
        self.assertIn("another balancer of cluster test changed /v1 server '127.0.0.1:9001'", str(failure.value))
        self.assertEqual(b.control.backend("127.0.0.1:9001").overrides, {})
        store.clock.advance(1.0)  # type: ignore[attr-defined]
        self.assertEqual(b.control.backend("127.0.0.1:9001").overrides, {"weight": 3})
        self.successResultOf(b.control.set_override("127.0.0.1:9001", {"weight": 4}))

    def test_changesToOtherResourcesDoNotConflict(self) -> None:
        store = FakeEtcd(delay=1.0)
        a, b = Member(self, store, "a"), Member(self, store, "b")
        self.successResultOf(a.control.set_override("127.0.0.1:9001", {"weight": 3}))
        self.successResultOf(b.control.set_override("127.0.0.1:9002", {"weight": 4}))
        store.clock.advance(1.0)  # type: ignore[attr-defined]
        for member in (a, b):
            self.assertEqual(member.control.backend("127.0.0.1:9001").overrides, {"weight": 3})
            self.assertEqual(member.control.backend("127.0.0.1:9002").overrides, {"weight": 4})

    def test_aServerAddedThatCannotCommitIsUndone(self) -> None:
        store = FakeEtcd(delay=1.0)
        a, b = Member(self, store, "a"), Member(self, store, "b")
        self.successResultOf(a.control.add_server("new", NEW_SERVER))
        self.failureResultOf(b.control.add_server("new", {**NEW_SERVER, "bind": "127.0.0.1:4001"}), ChangeConflict)
        self.assertEqual(b.servers(), ["web"])
        self.assertEqual(b.reactor.listening(), [3000])


class PausedCommits:
    """A store whose commits wait until the test lets them through (the rest is C{store}'s)."""

    def __init__(self, store: FakeEtcd) -> None:
        self._store = store
        self.paused: list[tuple[Deferred[Any], Any, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def commit(self, conditions: Any, operations: Any) -> Deferred[Any]:
        waiting: Deferred[Any] = Deferred()
        self.paused.append((waiting, conditions, operations))
        return waiting

    def release(self) -> None:
        for waiting, conditions, operations in self.paused:
            self._store.commit(conditions, operations).chainDeferred(waiting)
        self.paused = []


class OrderingTests(TestCase):
    """Changes from elsewhere and this member's own, in flight at the same time."""

    def test_aChangeFromElsewhereDoesNotUndoOneBeingCommitted(self) -> None:
        store = FakeEtcd()
        paused = PausedCommits(store)
        a = Member(self, paused, "a")  # type: ignore[arg-type]
        b = Member(self, store, "b")
        adding = a.control.add_server("new", NEW_SERVER)
        self.successResultOf(b.control.set_backend_state("127.0.0.1:9001", "drain"))
        paused.release()
        self.successResultOf(adding)
        self.assertEqual(a.servers(), ["web", "new"])
        self.assertEqual(a.control.backend("127.0.0.1:9001").admin_state, "drain")
        self.assertNotIn(4000, a.reactor.closed)


class LocalRefusalTests(TestCase):
    """A shared change this member cannot or may not apply: reported, the rest applied, serving goes on."""

    def test_policyRefusesAnExecHealthCheckFromTheCluster(self) -> None:
        store = FakeEtcd()
        lenient = Member(self, store, "lenient", allow_exec=True)
        strict = Member(self, store, "strict")
        definition = {**NEW_SERVER, "healthcheck": {"kind": "exec", "exec_command": "/bin/true", "interval": "1s"}}
        self.successResultOf(lenient.control.add_server("checked", definition))
        self.assertEqual(lenient.servers(), ["web", "checked"])
        self.assertEqual(strict.servers(), ["web"])
        errors = strict.control.cluster().errors  # type: ignore[union-attr]
        self.assertEqual(len(errors), 1)
        self.assertIn('server checked: server "checked": healthcheck kind "exec"', errors[0])
        self.flushLoggedErrors()

    def test_aBindTakenOnThisHostIsReported(self) -> None:
        store = FakeEtcd()
        a = Member(self, store, "a")
        b = Member(self, store, "b", taken=(4000,))
        self.successResultOf(a.control.add_server("new", NEW_SERVER))
        self.assertEqual(b.servers(), ["web"])
        errors = b.control.cluster().errors  # type: ignore[union-attr]
        self.assertEqual(len(errors), 1)
        self.assertIn("server new:", errors[0])
        self.assertIn("4000", errors[0])
        self.successResultOf(a.control.set_backend_state("127.0.0.1:9001", "maintenance"))
        self.assertEqual(b.control.backend("127.0.0.1:9001").admin_state, "maintenance")

    def test_aReloadKeepsTheClusterOnTopAndSkipsWhatIsRefused(self) -> None:
        store = FakeEtcd()
        lenient = Member(self, store, "lenient", allow_exec=True)
        strict = Member(self, store, "strict")
        definition = {**NEW_SERVER, "healthcheck": {"kind": "exec", "exec_command": "/bin/true", "interval": "1s"}}
        self.successResultOf(lenient.control.add_server("checked", definition))
        self.successResultOf(lenient.control.add_server("new", {**NEW_SERVER, "bind": "127.0.0.1:4001"}))
        with open(strict.path, "a") as f:
            f.write('[servers.more]\nbind = "127.0.0.1:5000"\n[servers.more.discovery]\nkind = "static"\n'
                    'static_list = ["127.0.0.1:9200"]\n')
        report = self.successResultOf(strict.control.reload())
        self.assertEqual(report.added, ["more"])
        self.assertEqual(strict.servers(), ["web", "new", "more"])
        self.flushLoggedErrors()

    def test_aKeyThatIsNotARecordIsIgnored(self) -> None:
        store = FakeEtcd()
        a = Member(self, store, "a")
        self.successResultOf(store.commit([], [Put("/balancer/test/backends/x", b"not json")]))
        self.assertEqual(a.servers(), ["web"])
        self.assertEqual(len(self.flushLoggedErrors()), 0)


class OutageTests(TestCase):
    """etcd away: writes answer ClusterUnavailable at once and change nothing; back: resync."""

    def setUp(self) -> None:
        self.store = FakeEtcd()
        self.a = Member(self, self.store, "a")
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self, text: str) -> int:
        return sum(1 for e in self.events if text in (e.get("log_format") or ""))

    def test_writesFailAtOnceWhileAway(self) -> None:
        self.store.make_unavailable()
        self.assertFalse(self.a.shared.available)
        failure = self.failureResultOf(self.a.control.add_server("new", NEW_SERVER), ClusterUnavailable)
        self.assertIn("etcd is unreachable", str(failure.value))
        self.assertEqual(self.a.servers(), ["web"])
        self.assertEqual(self.a.reactor.listening(), [3000])
        self.flushLoggedErrors()

    def test_unreachableIsLoggedOncePerTransition(self) -> None:
        self.store.make_unavailable()
        for _ in range(20):
            self.a.reactor.advance(RETRY_LONGEST)
        self.assertEqual(self.lines("etcd unreachable"), 1)
        self.store.make_available()
        self.a.reactor.advance(RETRY_LONGEST)
        self.assertTrue(self.a.shared.available)
        self.assertEqual(self.lines("etcd answers"), 1)
        self.flushLoggedErrors()

    def test_changesMadeMeanwhileAreAppliedOnReturn(self) -> None:
        other = Member(self, self.store, "b")
        self.a.sync.lost("the test took it away")
        self.successResultOf(other.control.add_server("new", NEW_SERVER))
        self.assertEqual(self.a.servers(), ["web"])
        self.a.reactor.advance(RETRY_LONGEST)
        self.assertEqual(self.a.servers(), ["web", "new"])
        self.flushLoggedErrors()

    def test_aWatchBehindCompactionReadsEverythingAgain(self) -> None:
        other = Member(self, self.store, "b")
        self.a.sync.lost("paused")
        self.successResultOf(other.control.add_server("new", NEW_SERVER))
        self.successResultOf(other.control.remove_server("web"))
        self.successResultOf(self.store.compact(self.store.revision))
        self.a.reactor.advance(RETRY_LONGEST)
        self.assertEqual(self.a.servers(), ["new"])
        self.flushLoggedErrors()


class MetricsTests(TestCase):
    """The cluster's gauges in /metrics."""

    def test_availabilityRevisionMembersAndErrors(self) -> None:
        store = FakeEtcd()
        a = Member(self, store, "a")
        b = Member(self, store, "b", taken=(4000,))
        self.successResultOf(a.control.add_server("new", NEW_SERVER))
        text = generate_latest(metrics_registry(b.control)).decode()
        labels = '{cluster="test",instance="b"}'
        self.assertIn(f"balancer_cluster_available{labels} 1.0", text)
        self.assertIn(f"balancer_cluster_applied_revision{labels} {float(store.revision)}", text)
        self.assertIn(f"balancer_cluster_unapplied_changes{labels} 1.0", text)
        self.assertIn(f"balancer_cluster_members{labels} 0.0", text)
        store.make_unavailable()
        self.assertIn(f"balancer_cluster_available{labels} 0.0", generate_latest(metrics_registry(b.control)).decode())
        self.flushLoggedErrors()


class MembershipTests(TestCase):
    """A member registered under a lease, kept alive, revoked when it stops."""

    def test_registeredKeptAliveAndRevoked(self) -> None:
        store = FakeEtcd()
        a = Member(self, store, "a")
        membership = Membership(store, a.shared, lambda: "127.0.0.1:8888", a.reactor, 3.0, 100.0)
        membership.startService()
        self.assertEqual([m.instance for m in a.shared.view().members], ["a"])
        member = a.shared.view().members[0]
        self.assertEqual((member.address, member.started_at), ("127.0.0.1:8888", 100.0))
        for _ in range(10):
            a.reactor.advance(1.0)
            store.clock.advance(1.0)  # type: ignore[attr-defined]
        self.assertEqual([m.instance for m in a.shared.view().members], ["a"])
        self.successResultOf(membership.stopService())
        self.assertEqual(a.shared.view().members, ())
        self.assertEqual(store.leases(), [])

    def test_anExpiredLeaseIsReplaced(self) -> None:
        store = FakeEtcd()
        a = Member(self, store, "a")
        membership = Membership(store, a.shared, str, a.reactor, 3.0, 100.0)
        membership.startService()
        self.addCleanup(membership.stopService)
        first = store.leases()
        store.clock.advance(10.0)  # type: ignore[attr-defined]
        self.assertEqual(a.shared.view().members, ())
        a.reactor.advance(1.0)
        self.assertEqual([m.instance for m in a.shared.view().members], ["a"])
        self.assertNotEqual(store.leases(), first)
