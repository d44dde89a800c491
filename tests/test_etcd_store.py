"""
The key-value store the cluster uses (L{balancer.cluster.store}): one set
of contract tests run against the in-memory fake (tests/support/fake_etcd.py)
and against a real etcd through L{EtcdGateway}, so the fake stays true to
etcd; then what only the real one has (endpoints, authentication, TLS,
L{read_prefix_now}), and unit tests of the gateway's watch stream.
"""

from __future__ import annotations

import json
from typing import Any, Callable, TypeVar

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancer.cluster.etcd import EtcdGateway, WatchStreamParser, b64, prefix_end, read_prefix_now
from balancer.cluster.store import (
    Committed,
    Delete,
    Entry,
    Event,
    IKeyValueStore,
    IWatch,
    NotChangedSince,
    Put,
    Snapshot,
    StoreRefused,
    StoreUnavailable,
    WatchCompacted,
)
from balancer.tlsfiles import TLSError
from tests.support.etcd import started_etcd
from tests.support.fake_etcd import FakeEtcd
from tests.support.ports import refusing_port
from tests.support.waiting import polled

T = TypeVar("T")

#: The gateway's timeout in these tests, in seconds.
TIMEOUT = 2.0


class Received:
    """A watch's receiver that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, list[Event]]] = []

    def __call__(self, revision: int, events: Any) -> None:
        self.calls.append((revision, list(events)))

    def events(self) -> list[tuple[str, str, bytes, int]]:
        """(kind, key, value, mod_revision) of every event, in order."""
        return [(e.kind, e.entry.key, e.entry.value, e.entry.mod_revision) for _, events in self.calls for e in events]


class StoreContract:
    """
    What every L{IKeyValueStore} does; a subclass provides the store, a way
    to compact it, to take it away and bring it back, and to wait.
    """

    store: IKeyValueStore

    # What the subclasses provide.
    assertEqual: Callable[..., None]
    assertTrue: Callable[..., None]
    assertIsInstance: Callable[..., None]

    def compact(self, revision: int) -> Deferred[None]:
        raise NotImplementedError()

    def take_away(self) -> Deferred[None]:
        raise NotImplementedError()

    def bring_back(self) -> Deferred[None]:
        raise NotImplementedError()

    def eventually(self, fetch: Callable[[], Deferred[T]], done: Callable[[T], bool], what: str) -> Deferred[T]:
        raise NotImplementedError()

    async def failure_of(self, deferred: Deferred[Any], kind: type[BaseException]) -> BaseException:
        """What C{deferred} fails with, which must be a C{kind}."""
        try:
            result = await deferred
        except kind as e:
            return e
        raise AssertionError(f"expected {kind.__name__}, got the result {result!r}")

    def events_seen(self, received: Received, count: int) -> Deferred[list[tuple[str, str, bytes, int]]]:
        """Fires with the events once C{received} has C{count} of them."""
        return self.eventually(lambda: succeed(received.events()), lambda e: len(e) >= count, f"{count} events")

    # -- reads and transactions --

    async def test_emptyPrefix(self) -> None:
        """An empty prefix reads as no entry, at the store's revision (1 before any write)."""
        snapshot = await self.store.get_prefix("/nothing/")
        self.assertEqual(snapshot.entries, ())
        self.assertTrue(snapshot.revision >= 1)

    async def test_prefixReadSorted(self) -> None:
        """A prefix read gives its keys sorted, with their revisions, and nothing outside the prefix."""
        first = await self.store.commit([], [Put("/b/z", b"1"), Put("/b/a", b"2")])
        second = await self.store.commit([], [Put("/b/a", b"3"), Put("/b0", b"outside"), Put("/a", b"outside")])
        self.assertTrue(first.succeeded and second.succeeded)
        self.assertEqual(second.revision, first.revision + 1)
        snapshot = await self.store.get_prefix("/b/")
        self.assertEqual(snapshot.revision, second.revision)
        self.assertEqual(
            snapshot.entries,
            (
                Entry("/b/a", b"3", mod_revision=second.revision, create_revision=first.revision),
                Entry("/b/z", b"1", mod_revision=first.revision, create_revision=first.revision),
            ),
        )

    async def test_conditionsMet(self) -> None:
        """A transaction whose keys did not change after their revisions (or do not exist) is applied."""
        written = await self.store.commit([], [Put("/c/a", b"1")])
        committed = await self.store.commit(
            [NotChangedSince("/c/a", written.revision), NotChangedSince("/c/new", 0)], [Put("/c/a", b"2")]
        )
        self.assertEqual(committed.succeeded, True)
        snapshot = await self.store.get_prefix("/c/")
        self.assertEqual([(e.key, e.value, e.mod_revision) for e in snapshot.entries], [("/c/a", b"2", committed.revision)])

    async def test_conditionNotMet(self) -> None:
        """A key written after the condition's revision: nothing of the transaction is written."""
        first = await self.store.commit([], [Put("/d/a", b"1")])
        await self.store.commit([], [Put("/d/a", b"2")])
        committed = await self.store.commit(
            [NotChangedSince("/d/a", first.revision)], [Put("/d/a", b"lost"), Put("/d/b", b"lost")]
        )
        self.assertEqual(committed, type(committed)(False, first.revision + 1))
        snapshot = await self.store.get_prefix("/d/")
        self.assertEqual([(e.key, e.value) for e in snapshot.entries], [("/d/a", b"2")])
        self.assertEqual(snapshot.revision, first.revision + 1)

    async def test_putAndDelete(self) -> None:
        """A put and a delete in one transaction share one revision; deleting a missing key is nothing."""
        await self.store.commit([], [Put("/e/old", b"1")])
        committed = await self.store.commit([], [Put("/e/new", b"2"), Delete("/e/old"), Delete("/e/never")])
        snapshot = await self.store.get_prefix("/e/")
        self.assertEqual([(e.key, e.mod_revision) for e in snapshot.entries], [("/e/new", committed.revision)])
        self.assertEqual(snapshot.revision, committed.revision)

    async def test_unknownLeaseRefused(self) -> None:
        """A put attached to a lease that does not exist is refused."""
        await self.failure_of(self.store.commit([], [Put("/f/a", b"1", lease=1234)]), StoreRefused)

    # -- watches --

    async def test_watchPutsAndDeletes(self) -> None:
        """A watch sees puts and deletes under its prefix, in order, with their revisions."""
        start = (await self.store.get_prefix("/w/")).revision + 1
        received = Received()
        watch = self.store.watch_prefix("/w/", start, received)
        put = await self.store.commit([], [Put("/w/a", b"1"), Put("/outside", b"x")])
        deleted = await self.store.commit([], [Delete("/w/a"), Put("/w/b", b"2")])
        events = await self.events_seen(received, 3)
        self.assertEqual(
            events,
            [
                ("put", "/w/a", b"1", put.revision),
                ("delete", "/w/a", b"", deleted.revision),
                ("put", "/w/b", b"2", deleted.revision),
            ],
        )
        self.assertEqual([revision for revision, _ in received.calls][-1], deleted.revision)
        watch.stop()
        self.assertEqual(await watch.ended, None)

    async def test_watchReplays(self) -> None:
        """A watch started at an old revision gets every change since, then new ones."""
        first = await self.store.commit([], [Put("/r/a", b"1")])
        await self.store.commit([], [Put("/r/a", b"2")])
        received = Received()
        watch = self.store.watch_prefix("/r/", first.revision, received)
        third = await self.store.commit([], [Put("/r/a", b"3")])
        events = await self.events_seen(received, 3)
        self.assertEqual([value for _, _, value, _ in events], [b"1", b"2", b"3"])
        self.assertEqual(events[-1][3], third.revision)
        watch.stop()

    async def test_watchStoppedDeliversNothing(self) -> None:
        """After stop(), nothing more is delivered."""
        received = Received()
        start = (await self.store.get_prefix("/s/")).revision + 1
        watch = self.store.watch_prefix("/s/", start, received)
        await self.store.commit([], [Put("/s/a", b"1")])
        await self.events_seen(received, 1)
        watch.stop()
        await self.store.commit([], [Put("/s/a", b"2")])
        marker = Received()
        probe = self.store.watch_prefix("/s/", start, marker)
        await self.events_seen(marker, 2)
        probe.stop()
        self.assertEqual(len(received.events()), 1)

    async def test_watchCompacted(self) -> None:
        """A watch from a revision compacted away ends with WatchCompacted naming the oldest revision kept."""
        first = await self.store.commit([], [Put("/k/a", b"1")])
        second = await self.store.commit([], [Put("/k/a", b"2")])
        await self.compact(second.revision)
        watch = self.store.watch_prefix("/k/", first.revision, Received())
        compacted = await self.failure_of(watch.ended, WatchCompacted)
        assert isinstance(compacted, WatchCompacted)
        self.assertEqual(compacted.compact_revision, second.revision)
        received = Received()
        kept = self.store.watch_prefix("/k/", second.revision, received)
        self.assertEqual(await self.events_seen(received, 1), [("put", "/k/a", b"2", second.revision)])
        kept.stop()

    async def test_receiverError(self) -> None:
        """An exception raised by the receiver ends the watch with it."""

        def broken(revision: int, events: Any) -> None:
            raise ZeroDivisionError("receiver bug")

        start = (await self.store.get_prefix("/z/")).revision + 1
        watch = self.store.watch_prefix("/z/", start, broken)
        await self.store.commit([], [Put("/z/a", b"1")])
        await self.eventually(lambda: succeed(watch.ended.called), bool, "the watch to end")
        await self.failure_of(watch.ended, ZeroDivisionError)

    # -- leases --

    async def test_leaseRevoked(self) -> None:
        """Revoking a lease deletes its keys (a watch sees the deletes); revoking it again is no error."""
        lease = await self.store.grant_lease(30)
        written = await self.store.commit([], [Put("/l/a", b"1", lease), Put("/l/b", b"2")])
        self.assertEqual([e.lease for e in (await self.store.get_prefix("/l/")).entries], [lease, 0])
        received = Received()
        watch = self.store.watch_prefix("/l/", written.revision + 1, received)
        await self.store.revoke_lease(lease)
        self.assertEqual([e.key for e in (await self.store.get_prefix("/l/")).entries], ["/l/b"])
        self.assertEqual([(kind, key) for kind, key, _, _ in await self.events_seen(received, 1)], [("delete", "/l/a")])
        await self.store.revoke_lease(lease)
        self.assertEqual(await self.store.keep_alive(lease), 0)
        watch.stop()

    async def test_leaseKeptAlive(self) -> None:
        """keep_alive answers the lease's TTL while it lives."""
        lease = await self.store.grant_lease(30)
        self.assertEqual(await self.store.keep_alive(lease), 30)
        await self.store.revoke_lease(lease)

    async def test_leaseExpires(self) -> None:
        """Without keep-alive, a lease's keys vanish after its TTL; keep_alive then answers 0."""
        lease = await self.store.grant_lease(2)
        await self.store.commit([], [Put("/x/a", b"1", lease)])
        await self.eventually(lambda: self.store.get_prefix("/x/"), lambda s: not s.entries, "the key to vanish")
        self.assertEqual(await self.store.keep_alive(lease), 0)

    # -- the store away --

    async def test_unavailable(self) -> None:
        """With the store away, reads, transactions and watches fail with StoreUnavailable; back, it works."""
        received = Received()
        watch = self.store.watch_prefix("/u/", 1, received)
        await self.store.commit([], [Put("/u/a", b"1")])
        await self.events_seen(received, 1)
        await self.take_away()
        await self.failure_of(watch.ended, StoreUnavailable)
        await self.failure_of(self.store.get_prefix("/u/"), StoreUnavailable)
        await self.failure_of(self.store.commit([], [Put("/u/a", b"2")]), StoreUnavailable)
        await self.failure_of(self.store.grant_lease(10), StoreUnavailable)
        failed = self.store.watch_prefix("/u/", 1, Received())
        await self.failure_of(failed.ended, StoreUnavailable)
        await self.bring_back()
        written = await self.store.commit([], [Put("/u/a", b"2")])
        self.assertTrue(written.succeeded)
        self.assertEqual([e.value for e in (await self.store.get_prefix("/u/")).entries], [b"2"])


class FakeContract(StoreContract):
    """The contract's waits, taking the store away and compacting, on the fake."""

    clock: Clock
    fake: FakeEtcd
    timeout = 30

    def compact(self, revision: int) -> Deferred[None]:
        return self.fake.compact(revision)

    def take_away(self) -> Deferred[None]:
        self.fake.make_unavailable()
        return succeed(None)

    def bring_back(self) -> Deferred[None]:
        self.fake.make_available()
        return succeed(None)

    def eventually(self, fetch: Callable[[], Deferred[T]], done: Callable[[T], bool], what: str) -> Deferred[T]:
        """Fetch, advancing the fake's clock 0.1 s between fetches, for at most 30 s of it."""

        async def poll() -> T:
            for _ in range(300):
                value = await fetch()
                if done(value):
                    return value
                self.clock.advance(0.1)
            raise AssertionError(f"not within 30 s of the fake clock: {what} (last: {value!r})")

        return Deferred.fromCoroutine(poll())


class FakeStoreTests(FakeContract, TestCase):
    """The contract, on the in-memory fake (events delivered during the commit)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.fake = FakeEtcd(self.clock)
        self.store = self.fake


class DelayedFakeStoreTests(FakeContract, TestCase):
    """The contract, on the fake delivering each revision's events a little after its commit."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.fake = FakeEtcd(self.clock, delay=0.1)
        self.store = self.fake


class RealStoreTests(StoreContract, TestCase):
    """The contract, on a real etcd through L{EtcdGateway}."""

    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.etcd = await started_etcd(self)
        self.gateway = EtcdGateway(reactor, [self.etcd.endpoint], timeout=TIMEOUT)
        self.addCleanup(self.gateway.close)
        self.store = self.gateway

    def compact(self, revision: int) -> Deferred[None]:
        body = {"revision": str(revision), "physical": True}
        return Deferred.fromCoroutine(self.gateway.call("/v3/kv/compaction", body)).addCallback(lambda _: None)

    async def take_away(self) -> None:  # type: ignore[override]
        await self.etcd.stop()

    async def bring_back(self) -> None:  # type: ignore[override]
        await self.etcd.start()

    def eventually(self, fetch: Callable[[], Deferred[T]], done: Callable[[T], bool], what: str) -> Deferred[T]:
        return polled(fetch, done, timeout=15, what=what, step=0.05)

    async def test_unavailableQuickly(self) -> None:
        """With etcd stopped, a read and a transaction fail within the timeout, naming the endpoint."""
        await self.etcd.stop()
        started = reactor.seconds()
        read = await self.failure_of(self.gateway.get_prefix("/q/"), StoreUnavailable)
        await self.failure_of(self.gateway.commit([], [Put("/q/a", b"1")]), StoreUnavailable)
        self.assertTrue(reactor.seconds() - started < TIMEOUT)
        self.assertIn(self.etcd.endpoint, str(read))
        self.assertIn("refused", str(read))


class SilentPeer(Protocol):
    """Takes connections and never answers."""


class EndpointTests(TestCase):
    """Several endpoints: the next after one that fails, the one that answered first next time."""

    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.etcd = await started_etcd(self)
        self.dead = f"http://127.0.0.1:{refusing_port(self)}"

    def gateway(self, *endpoints: str, timeout: float = TIMEOUT) -> EtcdGateway:
        gateway = EtcdGateway(reactor, endpoints, timeout=timeout)
        self.addCleanup(gateway.close)
        return gateway

    def silent_endpoint(self) -> str:
        """An endpoint that takes connections and never answers."""
        port = reactor.listenTCP(0, Factory.forProtocol(SilentPeer), interface="127.0.0.1")  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        return f"http://127.0.0.1:{port.getHost().port}"

    async def test_firstDead(self) -> None:
        """The first endpoint refusing, the second answers; it is tried first from then on."""
        gateway = self.gateway(self.dead, self.etcd.endpoint)
        committed = await gateway.commit([], [Put("/e/a", b"1")])
        self.assertTrue(committed.succeeded)
        self.assertEqual(gateway.endpoints, [self.etcd.endpoint, self.dead])
        received = Received()
        watch = gateway.watch_prefix("/e/", committed.revision, received)
        await polled(lambda: succeed(received.events()), bool, timeout=10, what="the event")
        watch.stop()

    async def test_watchOnSecond(self) -> None:
        """A watch opens on the second endpoint when the first refuses."""
        gateway = self.gateway(self.dead, self.etcd.endpoint)
        received = Received()
        watch = gateway.watch_prefix("/e/", 1, received)
        await self.etcd.put_now("/e/b", b"2")
        await polled(lambda: succeed(received.events()), bool, timeout=10, what="the event")
        watch.stop()
        self.assertEqual(await watch.ended, None)

    async def test_allDead(self) -> None:
        """No endpoint answering: StoreUnavailable names each with its cause."""
        other = f"http://127.0.0.1:{refusing_port(self)}"
        gateway = self.gateway(self.dead, other)
        try:
            await gateway.get_prefix("/")
        except StoreUnavailable as e:
            self.assertIn(f"{self.dead}: Connection was refused", str(e))
            self.assertIn(f"{other}: Connection was refused", str(e))
        else:
            self.fail("no StoreUnavailable")

    async def test_silentEndpoint(self) -> None:
        """
        An endpoint that never answers: a read moves on to the next after
        the timeout; a transaction does not (it may have been applied) and
        says so.
        """
        gateway = self.gateway(self.silent_endpoint(), self.etcd.endpoint, timeout=0.5)
        started = reactor.seconds()
        snapshot = await gateway.get_prefix("/s/")
        self.assertTrue(0.5 <= reactor.seconds() - started < 5)
        self.assertEqual(snapshot.entries, ())
        silent = self.gateway(self.silent_endpoint(), self.etcd.endpoint, timeout=0.5)
        try:
            await silent.commit([], [Put("/s/a", b"1")])
        except StoreUnavailable as e:
            self.assertIn("may or may not have applied it", str(e))
        else:
            self.fail("no StoreUnavailable")

    async def test_watchEndsWhenEtcdStops(self) -> None:
        """A running watch ends with StoreUnavailable when etcd stops; one opened after it is back works."""
        gateway = self.gateway(self.etcd.endpoint)
        watch = gateway.watch_prefix("/w/", 1, Received())
        await self.etcd.put_now("/w/a", b"1")
        await self.etcd.stop()
        try:
            await watch.ended
        except StoreUnavailable as e:
            self.assertIn(self.etcd.endpoint, str(e))
        else:
            self.fail("the watch did not end with StoreUnavailable")
        await self.etcd.start()
        received = Received()
        again = gateway.watch_prefix("/w/", 1, received)
        await polled(lambda: succeed(received.events()), bool, timeout=10, what="the replayed event")
        again.stop()

    async def test_readPrefixNow(self) -> None:
        """read_prefix_now (blocking, for start-up) reads what the gateway reads; a dead first endpoint is skipped."""
        gateway = self.gateway(self.etcd.endpoint)
        await gateway.commit([], [Put("/n/a", b"1"), Put("/n/b", b"2")])
        expected = await gateway.get_prefix("/n/")
        now = await deferToThread(read_prefix_now, [self.dead, self.etcd.endpoint], "/n/", timeout=TIMEOUT)
        self.assertEqual(now, expected)

    async def test_readPrefixNowSilent(self) -> None:
        """read_prefix_now moves on from an endpoint that does not answer within the timeout."""
        silent = self.silent_endpoint()
        now = await deferToThread(read_prefix_now, [silent, self.etcd.endpoint], "/n/", timeout=0.5)
        self.assertEqual(now.entries, ())

    async def test_readPrefixNowUnavailable(self) -> None:
        """read_prefix_now with no endpoint answering: StoreUnavailable naming it."""
        try:
            await deferToThread(read_prefix_now, [self.dead], "/n/", timeout=TIMEOUT)
        except StoreUnavailable as e:
            self.assertIn(self.dead, str(e))
        else:
            self.fail("no StoreUnavailable")


class AuthenticationTests(TestCase):
    """etcd with authentication on: the gateway authenticates, and again when its token is no longer accepted."""

    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.etcd = await started_etcd(self, password="secret")

    def gateway(self, password: str) -> EtcdGateway:
        gateway = EtcdGateway(reactor, [self.etcd.endpoint], user="root", password=password, timeout=TIMEOUT)
        self.addCleanup(gateway.close)
        return gateway

    async def test_authenticated(self) -> None:
        """With the right password, reads, transactions, leases and watches work."""
        gateway = self.gateway("secret")
        received = Received()
        watch = gateway.watch_prefix("/a/", 1, received)
        lease = await gateway.grant_lease(30)
        self.assertEqual(await gateway.keep_alive(lease), 30)
        await gateway.commit([], [Put("/a/x", b"1", lease)])
        await polled(lambda: succeed(received.events()), bool, timeout=10, what="the event")
        watch.stop()
        self.assertEqual([e.key for e in (await gateway.get_prefix("/a/")).entries], ["/a/x"])

    async def test_tokenAfterRestart(self) -> None:
        """
        etcd's simple tokens do not survive a restart: the gateway
        authenticates again, for a watch as for a request, and a lease
        kept alive with the old token is not mistaken for an expired one.
        """
        gateway = self.gateway("secret")
        lease = await gateway.grant_lease(30)
        await gateway.commit([], [Put("/a/x", b"1", lease)])
        await self.etcd.stop()
        await self.etcd.start()
        received = Received()
        watch = gateway.watch_prefix("/a/", 1, received)
        await polled(lambda: succeed(received.events()), bool, timeout=10, what="the replayed event")
        watch.stop()
        await self.etcd.stop()
        await self.etcd.start()
        self.assertEqual(await gateway.keep_alive(lease), 30)
        await self.etcd.stop()
        await self.etcd.start()
        self.assertEqual([e.key for e in (await gateway.get_prefix("/a/")).entries], ["/a/x"])

    async def test_wrongPassword(self) -> None:
        """A wrong password: StoreRefused with etcd's message and the user."""
        try:
            await self.gateway("wrong").get_prefix("/a/")
        except StoreRefused as e:
            self.assertIn("authentication failed", str(e))
            self.assertIn("'root'", str(e))
        else:
            self.fail("no StoreRefused")

    async def test_noCredentials(self) -> None:
        """No user where etcd wants one: StoreRefused with etcd's message."""
        gateway = EtcdGateway(reactor, [self.etcd.endpoint], timeout=TIMEOUT)
        self.addCleanup(gateway.close)
        try:
            await gateway.get_prefix("/a/")
        except StoreRefused as e:
            self.assertIn("user name is empty", str(e))
        else:
            self.fail("no StoreRefused")

    async def test_readPrefixNow(self) -> None:
        """read_prefix_now authenticates too; a wrong password is StoreRefused."""
        await self.gateway("secret").commit([], [Put("/a/z", b"1")])
        now = await deferToThread(read_prefix_now, [self.etcd.endpoint], "/a/", user="root", password="secret")
        self.assertEqual([e.key for e in now.entries], ["/a/z"])
        try:
            await deferToThread(read_prefix_now, [self.etcd.endpoint], "/a/", user="root", password="wrong")
        except StoreRefused as e:
            self.assertIn("authentication failed", str(e))
        else:
            self.fail("no StoreRefused")


class TLSTests(TestCase):
    """etcd over HTTPS with client certificates."""

    timeout = 120

    async def setUp(self) -> None:  # type: ignore[override]
        self.etcd = await started_etcd(self, tls=True, client_certificates=True)
        assert self.etcd.ca_path is not None and self.etcd.client_pair is not None
        self.ca = self.etcd.ca_path
        self.cert = self.etcd.client_pair.cert_path
        self.key = self.etcd.client_pair.key_path

    async def test_clientCertificate(self) -> None:
        """With the CA and a client certificate, the gateway and read_prefix_now work."""
        gateway = EtcdGateway(reactor, [self.etcd.endpoint], ca=self.ca, cert=self.cert, key=self.key)
        self.addCleanup(gateway.close)
        await gateway.commit([], [Put("/t/a", b"1")])
        received = Received()
        watch = gateway.watch_prefix("/t/", 1, received)
        await polled(lambda: succeed(received.events()), bool, timeout=10, what="the event")
        watch.stop()
        now = await deferToThread(read_prefix_now, [self.etcd.endpoint], "/t/", ca=self.ca, cert=self.cert, key=self.key)
        self.assertEqual([e.key for e in now.entries], ["/t/a"])

    async def test_noClientCertificate(self) -> None:
        """Without a client certificate etcd does not complete the handshake: StoreUnavailable."""
        gateway = EtcdGateway(reactor, [self.etcd.endpoint], ca=self.ca, timeout=TIMEOUT)
        self.addCleanup(gateway.close)
        await self.failure_of(gateway.get_prefix("/t/"))

    async def failure_of(self, deferred: Deferred[Any]) -> None:
        try:
            await deferred
        except StoreUnavailable:
            return
        self.fail("no StoreUnavailable")

    def test_badFiles(self) -> None:
        """A TLS file that cannot be used is named with its configuration key."""
        with self.assertRaises(TLSError) as raised:
            EtcdGateway(reactor, [self.etcd.endpoint], ca="/nonexistent/ca.pem")
        self.assertIn("cluster.etcd_ca", str(raised.exception))
        with self.assertRaises(ValueError):
            EtcdGateway(reactor, [self.etcd.endpoint], cert=self.cert)


class ArgumentTests(SynchronousTestCase):
    """Bad arguments are named."""

    def test_badEndpoints(self) -> None:
        """An endpoint that is not an http(s) URL, a string for a list, no endpoint: ValueError naming it."""
        for endpoints, named in [(["127.0.0.1:2379"], "127.0.0.1:2379"), ("http://a:1", "http://a:1"), ([], "[]")]:
            with self.assertRaises(ValueError) as raised:
                EtcdGateway(Clock(), endpoints)
            self.assertIn(named, str(raised.exception))

    def test_userWithoutPassword(self) -> None:
        """A user needs a password."""
        with self.assertRaises(ValueError):
            EtcdGateway(Clock(), ["http://127.0.0.1:2379"], user="root")

    def test_prefixEnd(self) -> None:
        """The range end of a prefix: its last byte below 0xff plus one."""
        self.assertEqual(prefix_end("/b/"), b"/b0")
        self.assertEqual(prefix_end(""), b"\0")
        self.assertEqual(prefix_end("a\xff"), "a\xff".encode()[:-1] + b"\xc0")


# -- the watch stream, with a fake HTTP client --

CREATED = b'{"result":{"header":{"revision":"5"},"created":true}}\n'
EVENTS = (
    b'{"result":{"header":{"revision":"7"},"events":['
    b'{"kv":{"key":"' + b64("/p/a").encode() + b'","create_revision":"6","mod_revision":"6","version":"1","value":"'
    + b64("1").encode() + b'"}},'
    b'{"type":"DELETE","kv":{"key":"' + b64("/p/b").encode() + b'","mod_revision":"7"}}]}}\n'
)
PROGRESS = b'{"result":{"header":{"revision":"9"}}}\n'


class StreamedResponse:
    """A treq-like response whose body the test feeds in chunks."""

    code = 200

    def __init__(self) -> None:
        self.transport = StringTransport()
        self.protocol: Any = None

    def deliverBody(self, protocol: Any) -> None:
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def feed(self, data: bytes) -> None:
        self.protocol.dataReceived(data)


class FakeHTTP:
    """A treq-like client whose posts wait for the test to answer them."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any], Deferred[Any]]] = []

    def post(self, url: str, data: bytes, headers: Any) -> Deferred[Any]:
        answer: Deferred[Any] = Deferred()
        self.requests.append((url, json.loads(data), answer))
        return answer


class WatchStreamTests(SynchronousTestCase):
    """The gateway's watch reads its stream as it arrives, whatever the chunks."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.http = FakeHTTP()
        self.gateway = EtcdGateway(self.clock, ["http://etcd:2379"], timeout=TIMEOUT, http=self.http)
        self.received = Received()

    def open(self) -> tuple[IWatch, StreamedResponse]:
        watch = self.gateway.watch_prefix("/p/", 6, self.received)
        url, body, answer = self.http.requests[0]
        self.assertEqual(url, "http://etcd:2379/v3/watch")
        self.assertEqual(
            body["create_request"],
            {"key": b64("/p/"), "range_end": b64("/p0"), "start_revision": "6", "progress_notify": True},
        )
        response = StreamedResponse()
        answer.callback(response)
        return watch, response

    def test_parserAnySplit(self) -> None:
        """Split anywhere, the stream gives the same objects."""
        stream = CREATED + EVENTS + PROGRESS
        whole = WatchStreamParser().feed(stream)
        self.assertEqual(len(whole), 3)
        for cut in range(1, len(stream)):
            parser = WatchStreamParser()
            self.assertEqual(parser.feed(stream[:cut]) + parser.feed(stream[cut:]), whole)
        parser = WatchStreamParser()
        self.assertEqual([o for i in range(len(stream)) for o in parser.feed(stream[i : i + 1])], whole)

    def test_eventsAsTheyArrive(self) -> None:
        """Events are delivered as soon as their line is complete, not when the stream ends."""
        watch, response = self.open()
        stream = CREATED + EVENTS
        for byte in range(len(stream) - 1):
            response.feed(stream[byte : byte + 1])
        self.assertEqual(self.received.calls, [])
        response.feed(stream[-1:])
        self.assertEqual(
            self.received.calls,
            [(7, [Event("put", Entry("/p/a", b"1", 6, 6)), Event("delete", Entry("/p/b", b"", 7, 0))])],
        )
        response.feed(PROGRESS)
        self.assertEqual(len(self.received.calls), 1)
        self.assertFalse(watch.ended.called)
        watch.stop()
        self.assertEqual(self.successResultOf(watch.ended), None)
        self.assertEqual(response.transport.producerState, "stopped")

    def test_compacted(self) -> None:
        """etcd cancelling the watch with a compact_revision: WatchCompacted."""
        watch, response = self.open()
        response.feed(CREATED + b'{"result":{"header":{},"canceled":true,"compact_revision":"8"}}\n')
        failure = self.failureResultOf(watch.ended, WatchCompacted)
        self.assertEqual(failure.value.compact_revision, 8)

    def test_errorObject(self) -> None:
        """An error object in the stream: StoreUnavailable for gRPC's Unavailable (14), else StoreRefused."""
        watch, response = self.open()
        response.feed(CREATED + b'{"error":{"grpc_code":14,"http_code":503,"message":"transport is closing"}}')
        response.feed(b"\n")
        self.assertIn("transport is closing", str(self.failureResultOf(watch.ended, StoreUnavailable).value))
        other, response = self.reopen()
        response.feed(b'{"error":"bad","message":"etcdserver: bad request","code":3}\n')
        self.assertIn("etcdserver: bad request", str(self.failureResultOf(other.ended, StoreRefused).value))

    def reopen(self) -> tuple[IWatch, StreamedResponse]:
        self.http.requests.clear()
        return self.open()

    def test_connectionLost(self) -> None:
        """The stream's connection ends: StoreUnavailable."""
        watch, response = self.open()
        response.feed(CREATED)
        response.protocol.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(watch.ended, StoreUnavailable)

    def test_notCreatedInTime(self) -> None:
        """A stream that does not confirm the watch within the timeout: StoreUnavailable."""
        watch, response = self.open()
        self.clock.advance(TIMEOUT)
        self.failureResultOf(watch.ended, StoreUnavailable)
        self.assertEqual(response.transport.producerState, "stopped")

    def test_noAnswer(self) -> None:
        """No answer to the request within the timeout: StoreUnavailable."""
        watch = self.gateway.watch_prefix("/p/", 1, self.received)
        self.clock.advance(TIMEOUT)
        self.assertIn("no answer in time", str(self.failureResultOf(watch.ended, StoreUnavailable).value))

    def test_stopWhileOpening(self) -> None:
        """stop() before the answer: ended fires with None and the request is cancelled."""
        watch = self.gateway.watch_prefix("/p/", 1, self.received)
        watch.stop()
        self.assertEqual(self.successResultOf(watch.ended), None)
        self.assertTrue(self.http.requests[0][2].called)

    def test_silentConnection(self) -> None:
        """A created watch whose endpoint stops answering the probe ends with StoreUnavailable."""
        watch, response = self.open()
        response.feed(CREATED)
        self.clock.advance(2 * TIMEOUT)
        url, body, probe = self.http.requests[-1]
        self.assertEqual(url, "http://etcd:2379/v3/maintenance/status")
        self.assertFalse(watch.ended.called)
        self.clock.advance(TIMEOUT)
        self.failureResultOf(watch.ended, StoreUnavailable)


class Answer:
    """A treq-like response with its whole body."""

    def __init__(self, code: int, body: bytes) -> None:
        self.code = code
        self.body = body

    def content(self) -> Deferred[bytes]:
        return succeed(self.body)


class ScriptedHTTP:
    """A treq-like client answering each post with the next of its answers."""

    def __init__(self, *answers: tuple[int, bytes]) -> None:
        self.answers = list(answers)
        self.requests: list[tuple[str, dict[str, Any], dict[bytes, list[bytes]]]] = []

    def post(self, url: str, data: bytes, headers: dict[bytes, list[bytes]]) -> Deferred[Answer]:
        self.requests.append((url, json.loads(data), headers))
        return succeed(Answer(*self.answers.pop(0)))


RANGE = b'{"header":{"revision":"3"},"kvs":[{"key":"' + b64("/p/a").encode() + b'","mod_revision":"3","create_revision":"2"}]}'
REJECTED = b'{"error":"etcdserver: invalid auth token","message":"etcdserver: invalid auth token","code":16}'


def token(name: str) -> tuple[int, bytes]:
    """The answer of /v3/auth/authenticate giving C{name}."""
    return 200, json.dumps({"header": {}, "token": name}).encode()


class RequestTests(SynchronousTestCase):
    """The gateway's requests and how it reads etcd's answers, with a scripted HTTP client."""

    def gateway(self, http: ScriptedHTTP, *endpoints: str, user: str | None = None) -> EtcdGateway:
        return EtcdGateway(
            Clock(), endpoints or ["http://etcd:2379"], user=user, password="pw" if user else None, http=http
        )

    def test_tokenRejected(self) -> None:
        """A token etcd rejects is replaced once, and the request sent again with the new one."""
        http = ScriptedHTTP(token("old"), (401, REJECTED), token("new"), (200, RANGE))
        snapshot = self.successResultOf(self.gateway(http, user="root").get_prefix("/p/"))
        self.assertEqual(snapshot, Snapshot(3, (Entry("/p/a", b"", 3, 2),)))
        self.assertEqual([url.rsplit("/v3/", 1)[1] for url, _, _ in http.requests], ["auth/authenticate", "kv/range"] * 2)
        self.assertEqual(http.requests[0][1], {"name": "root", "password": "pw"})
        self.assertEqual(http.requests[3][2][b"Authorization"], [b"new"])

    def test_tokenRejectedAgain(self) -> None:
        """A new token rejected too: StoreRefused with etcd's message."""
        http = ScriptedHTTP(token("a"), (401, REJECTED), token("b"), (401, REJECTED))
        failure = self.failureResultOf(self.gateway(http, user="root").get_prefix("/p/"), StoreRefused)
        self.assertIn("invalid auth token", str(failure.value))

    def test_errorBody(self) -> None:
        """An error answer: StoreRefused with etcd's message; a body that is not etcd's: its status and start."""
        compacted = b'{"error":"x","message":"etcdserver: mvcc: required revision has been compacted","code":11}'
        failure = self.failureResultOf(self.gateway(ScriptedHTTP((400, compacted))).get_prefix("/p/"), StoreRefused)
        self.assertEqual(str(failure.value), "etcd refused /v3/kv/range: etcdserver: mvcc: required revision has been compacted")
        failure = self.failureResultOf(self.gateway(ScriptedHTTP((404, b"Not Found\n"))).get_prefix("/p/"), StoreRefused)
        self.assertEqual(str(failure.value), "etcd refused /v3/kv/range: HTTP 404: Not Found")
        failure = self.failureResultOf(self.gateway(ScriptedHTTP((200, b"<html>"))).get_prefix("/p/"), StoreRefused)
        self.assertIn("not JSON", str(failure.value))

    def test_unavailableMovesOn(self) -> None:
        """An endpoint answering 503 (no leader, stopping) counts as down: the next answers and is tried first next time."""
        http = ScriptedHTTP((503, b'{"error":"x","message":"etcdserver: no leader","code":14}'), (200, RANGE))
        gateway = self.gateway(http, "http://a:2379", "http://b:2379")
        self.successResultOf(gateway.get_prefix("/p/"))
        self.assertEqual(gateway.endpoints, ["http://b:2379", "http://a:2379"])

    def test_unavailableTransaction(self) -> None:
        """A transaction answered 503: StoreUnavailable at once (it may have been applied), not sent to the next."""
        http = ScriptedHTTP((503, b'{"error":"x","message":"etcdserver: request timed out","code":14}'), (200, b"{}"))
        gateway = self.gateway(http, "http://a:2379", "http://b:2379")
        failure = self.failureResultOf(gateway.commit([], [Put("/p/a", b"1")]), StoreUnavailable)
        self.assertIn("request timed out", str(failure.value))
        self.assertEqual(len(http.requests), 1)

    def test_transactionBody(self) -> None:
        """A transaction compares MOD < revision + 1 for each condition; a failed one reads as not succeeded."""
        http = ScriptedHTTP((200, b'{"header":{"revision":"9"}}'))
        committed = self.successResultOf(
            self.gateway(http).commit([NotChangedSince("/p/a", 4)], [Put("/p/a", b"v", lease=12), Delete("/p/b")])
        )
        self.assertEqual(committed, Committed(False, 9))
        self.assertEqual(
            http.requests[0][1],
            {
                "compare": [{"key": b64("/p/a"), "target": "MOD", "result": "LESS", "mod_revision": "5"}],
                "success": [
                    {"request_put": {"key": b64("/p/a"), "value": b64("v"), "lease": "12"}},
                    {"request_delete_range": {"key": b64("/p/b")}},
                ],
            },
        )

    def test_keepAliveAnswers(self) -> None:
        """keep_alive reads the streamed {"result": ...} line: the TTL, or 0 when etcd leaves it out (expired)."""
        alive = b'{"result":{"header":{"revision":"3"},"ID":"7","TTL":"10"}}\n'
        expired = b'{"result":{"header":{"revision":"3"},"ID":"7"}}\n'
        self.assertEqual(self.successResultOf(self.gateway(ScriptedHTTP((200, alive))).keep_alive(7)), 10)
        self.assertEqual(self.successResultOf(self.gateway(ScriptedHTTP((200, expired))).keep_alive(7)), 0)

    def test_revokeUnknown(self) -> None:
        """Revoking a lease etcd does not know (expired) is no error."""
        unknown = b'{"error":"x","message":"etcdserver: requested lease not found","code":5}'
        self.assertEqual(self.successResultOf(self.gateway(ScriptedHTTP((404, unknown))).revoke_lease(7)), None)
