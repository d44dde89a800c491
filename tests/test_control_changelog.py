"""The change log: a change counts once persisted; revision, times of change, subscribers."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from balancer.control.changelog import ChangeLog
from balancer.control.writers import IStateWriter
from balancer.state import RuntimeChanges


@implementer(IStateWriter)
class HeldWriter:
    """A writer whose writes end when the test says, and which keeps what it was given."""

    def __init__(self) -> None:
        self.written: list[RuntimeChanges] = []
        self.pending: list[Deferred[None]] = []

    def write(self, changes: RuntimeChanges) -> Deferred[None]:
        self.written.append(changes)
        self.pending.append(Deferred())
        return self.pending[-1]

    def flush(self) -> Deferred[None]:
        return succeed(None)


@implementer(IStateWriter)
class BrokenWriter:
    """A writer that cannot write."""

    def write(self, changes: RuntimeChanges) -> Deferred[None]:
        return fail(OSError(28, "No space left on device"))

    def flush(self) -> Deferred[None]:
        return succeed(None)


class RecordTests(SynchronousTestCase):
    """record: applied to a copy, persisted, then counted."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.writer = HeldWriter()
        self.log = ChangeLog(RuntimeChanges(), self.writer, self.clock, started_at=100.0)

    def test_countsOnlyOncePersisted(self) -> None:
        recorded = self.log.record(lambda changes: changes.created("web", {"bind": "127.0.0.1:0"}))
        self.assertEqual(self.writer.written[0].servers, {"web": {"bind": "127.0.0.1:0"}})
        self.assertEqual((self.log.changes.servers, self.log.revision), ({}, 1))
        self.clock.advance(5)
        self.writer.pending[0].callback(None)
        self.successResultOf(recorded)
        self.assertEqual((self.log.changes.servers, self.log.revision), ({"web": {"bind": "127.0.0.1:0"}}, 2))
        self.assertEqual(self.log.changed_at("server", "web"), 105.0)
        self.assertEqual(self.log.changed_at("balancer", ""), 105.0)

    def test_failedWriteChangesNothing(self) -> None:
        log = ChangeLog(RuntimeChanges(), BrokenWriter(), self.clock, started_at=100.0)
        self.clock.advance(5)
        self.failureResultOf(log.record(lambda changes: changes.removed("web", configured=True)), OSError)
        self.assertEqual((log.changes.deleted, log.revision, log.changed_at("server", "web")), (set(), 1, 100.0))

    def test_withoutStateTheChangeCountsAtOnce(self) -> None:
        log = ChangeLog(RuntimeChanges(), None, self.clock, started_at=100.0)
        self.successResultOf(log.record(lambda changes: changes.backend_states.update({"a:1": "drain"})))
        self.assertEqual((log.changes.backend_states, log.revision), ({"a:1": "drain"}, 2))
        self.assertEqual(log.changed_at("backend", "a:1"), 100.0)

    def test_onlyWhatDiffersGetsANewTime(self) -> None:
        log = ChangeLog(RuntimeChanges(servers={"db": {"bind": "x"}}), None, self.clock, started_at=100.0)
        self.clock.advance(1)
        self.successResultOf(log.record(lambda changes: changes.created("web", {"bind": "y"})))
        self.assertEqual((log.changed_at("server", "web"), log.changed_at("server", "db")), (101.0, 100.0))

    def test_theLoadedChangesAreNotAlteredInPlace(self) -> None:
        loaded = RuntimeChanges(backends={"mine": {"address": "h", "services": []}})
        log = ChangeLog(loaded, None, self.clock, started_at=100.0)
        self.successResultOf(log.record(lambda changes: changes.backends["mine"].update(address="other")))
        self.assertEqual(loaded.backends["mine"]["address"], "h")
        self.assertEqual(log.changes.backends["mine"]["address"], "other")


class SubscriberTests(SynchronousTestCase):
    """subscribe: observers hear announcements until they unsubscribe."""

    def test_announcedToEachUntilUnsubscribed(self) -> None:
        log = ChangeLog(RuntimeChanges(), None, Clock(), started_at=0.0)
        heard: list[str] = []
        stop_a = log.subscribe(lambda: heard.append("a"))
        log.subscribe(lambda: heard.append("b"))
        log.announce()
        stop_a()
        log.announce()
        self.assertEqual(heard, ["a", "b", "b"])
