"""
The relay engine (L{balancer.proxy.engine}) on real sockets, driven by
hand: its outer reactor is a L{MemoryReactorClock} (which records whether
the engine is one of its readers, and runs its calls when advanced), and
each test calls L{Engine.doRead} itself, as the reactor would when the
epoll set has events.
"""

from __future__ import annotations

import gc
import os
import select
import socket
from typing import Any, Callable

from twisted.internet import reactor as global_reactor
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from balancer.proxy.engine import engine as engine_module
from balancer.proxy.engine import splice
from balancer.proxy.engine.engine import Engine, make_engine
from tests.support.loops import use_loop
from tests.support.skips import NO_ENGINE

skip = NO_ENGINE


def fill(sock: socket.socket) -> None:
    """Send on the non-blocking C{sock} until its buffers are full."""
    chunk = b"x" * 65536
    while True:
        try:
            sock.send(chunk)
        except BlockingIOError:
            return


class Descriptor:
    """
    A reader and writer of one socket that records its calls: it reads
    C{size} bytes once per call (a short read), or, with C{size=None},
    until the socket is empty.  C{then} is called after each C{doRead}.
    """

    def __init__(self, sock: socket.socket, size: int | None = None, then: Callable[[], None] | None = None) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.size = size
        self.then = then
        self.reads = 0
        self.writes = 0
        self.data = b""
        self.eof = False
        self.lost: list[Failure] = []

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return f"test descriptor {self.fd}"

    def doRead(self) -> None:
        self.reads += 1
        while True:
            try:
                chunk = self.sock.recv(self.size or 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.eof = True
                break
            self.data += chunk
            if self.size is not None:
                break
        if self.then is not None:
            self.then()

    def doWrite(self) -> None:
        self.writes += 1

    def connectionLost(self, reason: Failure) -> None:
        self.lost.append(reason)


class Listener(Descriptor):
    """A listening socket's reader that only counts its calls (it accepts no one)."""

    def doRead(self) -> None:
        self.reads += 1


class Raiser(Descriptor):
    """A descriptor whose calls raise."""

    def doRead(self) -> None:
        self.reads += 1
        raise ValueError("reading went wrong")

    def doWrite(self) -> None:
        self.writes += 1
        raise ValueError("writing went wrong")


class Interrupter(Descriptor):
    """A reader interrupted (C{KeyboardInterrupt}) when it reads."""

    def doRead(self) -> None:
        raise KeyboardInterrupt()


class BadLoser(Raiser):
    """A descriptor whose calls raise, and so does C{connectionLost}."""

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        raise KeyError("closing went wrong")


class Owner:
    """A deadline's owner that counts its calls."""

    passed = 0

    def deadline_passed(self) -> None:
        self.passed += 1


class EngineTests(SynchronousTestCase):
    """L{Engine} on socket pairs, with a memory reactor outside, its dispatch loop in Python."""

    compiled = False

    def setUp(self) -> None:
        use_loop(self, self.compiled)
        self.reactor = MemoryReactorClock()
        self.engine = Engine(self.reactor)
        self.addCleanup(self.engine.close)

    def pair(self) -> tuple[socket.socket, socket.socket]:
        """A connected, non-blocking pair of stream sockets, closed after the test."""
        a, b = socket.socketpair()
        for sock in (a, b):
            sock.setblocking(False)
            self.addCleanup(sock.close)
        return a, b

    def nested(self) -> bool:
        """Whether the engine is one of the outer reactor's readers."""
        return self.engine in self.reactor.getReaders()

    def test_nestsWhileWatchingAndLeavesWithTheLast(self) -> None:
        """The engine is one reader of the reactor from its first socket to the last one forgotten."""
        (a, _), (c, _) = self.pair(), self.pair()
        self.assertEqual(self.reactor.getReaders(), [])
        self.engine.addReader(Descriptor(a))
        self.assertEqual(self.reactor.getReaders(), [self.engine])
        self.engine.addWriter(Descriptor(c))
        self.engine.addReader(Descriptor(c))
        self.assertEqual(self.reactor.getReaders(), [self.engine])
        self.assertEqual(self.engine.watched, 2)
        self.engine.forget(a.fileno())
        a.close()
        self.assertTrue(self.nested())
        self.engine.forget(c.fileno())
        c.close()
        self.assertEqual((self.reactor.getReaders(), self.engine.watched), ([], 0))
        self.engine.forget(c.fileno())  # again: nothing
        (e, _) = self.pair()
        self.engine.addWriter(Descriptor(e))
        self.assertTrue(self.nested())

    def test_leavingTheReactorStopsTheIdleDeadlines(self) -> None:
        """Forgetting the last socket cancels the reactor call of deadlines no longer pending, and only then."""
        (a, _), (c, _) = self.pair(), self.pair()
        self.engine.addReader(Descriptor(a))
        self.engine.addReader(Descriptor(c))
        owner = Owner()
        self.engine.deadlines.remove(self.engine.deadlines.add(10.0, owner), owner)
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.engine.forget(a.fileno())
        a.close()
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.engine.forget(c.fileno())
        c.close()
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_pendingDeadlineOutlivesTheLastSocket(self) -> None:
        """A deadline still pending keeps its reactor call when the engine leaves the reactor."""
        (a, _) = self.pair()
        self.engine.addReader(Descriptor(a))
        owner = Owner()
        self.engine.deadlines.add(1.0, owner)
        self.engine.forget(a.fileno())
        a.close()
        self.assertFalse(self.nested())
        self.reactor.advance(1.1)
        self.assertEqual(owner.passed, 1)

    def test_readerCalledOncePerArrival(self) -> None:
        """A reader is called when bytes arrive, and not again until more do (edge-triggered)."""
        a, b = self.pair()
        reader = Descriptor(a)
        self.engine.addReader(reader)
        self.engine.doRead()
        self.assertEqual(reader.reads, 0)
        b.send(b"hello")
        self.engine.doRead()
        self.assertEqual((reader.reads, reader.data), (1, b"hello"))
        self.engine.doRead()
        self.assertEqual(reader.reads, 1)
        b.send(b" again")
        self.engine.doRead()
        self.assertEqual((reader.reads, reader.data), (2, b"hello again"))
        self.assertEqual(reader.writes, 0)

    def test_writerCalledWhenWritable(self) -> None:
        """A writer is called when its socket is writable: at first, then once a full socket drains."""
        a, b = self.pair()
        writer = Descriptor(a)
        self.engine.addWriter(writer)
        self.engine.doRead()
        self.assertEqual(writer.writes, 1)
        self.engine.doRead()
        self.assertEqual(writer.writes, 1)
        fill(a)
        self.engine.doRead()
        self.assertEqual(writer.writes, 1)
        drain = Descriptor(b)
        drain.doRead()
        self.engine.doRead()
        self.assertEqual((writer.writes, writer.reads), (2, 0))

    def test_missedEdgeReplayedSoonForALaterReader(self) -> None:
        """
        Bytes that arrived while nobody read the socket make no new edge: a
        reader added later (outside L{Engine.doRead}) is called on the next
        turn of the reactor, not in the caller's stack.
        """
        a, b = self.pair()
        self.engine.addWriter(Descriptor(a))
        b.send(b"early")
        self.engine.doRead()
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        reader = Descriptor(a)
        self.engine.addReader(reader)
        self.assertEqual(reader.reads, 0)
        self.assertEqual([call.getTime() for call in self.reactor.getDelayedCalls()], [0.0])
        self.reactor.advance(0)
        self.assertEqual((reader.reads, reader.data), (1, b"early"))
        self.engine.doRead()
        self.engine.addReader(reader)
        self.assertEqual(self.reactor.getDelayedCalls(), [], "the edge was taken: nothing left to replay")
        self.assertEqual(reader.reads, 1)

    def test_missedEdgeReplayedOnceByWhicheverComesFirst(self) -> None:
        """An engine's L{Engine.doRead} before the reactor call replays the edge; the call then finds nothing to do."""
        a, b = self.pair()
        self.engine.addWriter(Descriptor(a))
        b.send(b"early")
        self.engine.doRead()
        reader = Descriptor(a)
        self.engine.addReader(reader)
        self.engine.doRead()
        self.assertEqual((reader.reads, reader.data), (1, b"early"))
        self.reactor.advance(0)
        self.assertEqual(reader.reads, 1)

    def test_missedEdgeNotReplayedToAReaderRemovedSince(self) -> None:
        a, b = self.pair()
        self.engine.addWriter(Descriptor(a))
        b.send(b"early")
        self.engine.doRead()
        reader = Descriptor(a)
        self.engine.addReader(reader)
        self.engine.removeReader(reader)
        self.reactor.advance(0)
        self.assertEqual(reader.reads, 0)

    def test_missedEdgeReplayedInTheSameDoRead(self) -> None:
        """
        A reader added by another descriptor during L{Engine.doRead} is
        called before it returns, without a reactor call.
        """
        a, b = self.pair()
        c, d = self.pair()
        self.engine.addWriter(Descriptor(a))
        b.send(b"early")
        self.engine.doRead()
        late = Descriptor(a)
        self.engine.addReader(Descriptor(c, then=lambda: self.engine.addReader(late)))
        d.send(b"go")
        self.engine.doRead()
        self.assertEqual((late.reads, late.data), (1, b"early"))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_missedWritableEdgeReplayedForALaterWriter(self) -> None:
        a, _ = self.pair()
        self.engine.addReader(Descriptor(a))
        self.engine.doRead()
        writer = Descriptor(a)
        self.engine.addWriter(writer)
        self.assertEqual(writer.writes, 0)
        self.reactor.advance(0)
        self.assertEqual(writer.writes, 1)

    def test_aSocketOnlyReadBringsNoWritableEvents(self) -> None:
        """
        A socket with a reader and never a writer is not watched for
        writing: being writable wakes nothing (most clients' sockets are
        only read; their writable edges would each be an event to dispatch).
        """
        a, b = self.pair()
        reader = Descriptor(a)
        self.engine.addReader(reader)
        self.assertEqual(select.select([self.engine.fileno()], [], [], 0)[0], [])
        b.send(b"x")
        self.assertEqual(select.select([self.engine.fileno()], [], [], 0)[0], [self.engine.fileno()])
        self.engine.doRead()
        self.assertEqual((reader.data, reader.writes), (b"x", 0))

    def test_aWriterOfASocketOnlyReadUntilNowHearsOfItsNextEdge(self) -> None:
        """
        A writer added to a socket watched only for reading until then is
        called soon (whether it is writable is not known), and again when a
        full socket drains.
        """
        a, b = self.pair()
        self.engine.addReader(Descriptor(a))
        fill(a)
        writer = Descriptor(a)
        self.engine.addWriter(writer)
        self.reactor.advance(0)
        self.assertEqual(writer.writes, 1)
        self.engine.doRead()
        self.assertEqual(writer.writes, 1)
        Descriptor(b).doRead()
        self.engine.doRead()
        self.assertEqual(writer.writes, 2)

    def test_readerRemovedAndAddedAgainReadsAtOnce(self) -> None:
        """
        Bytes left unread by a reader that stopped reading bring no new
        edge: without the replay they would be stranded.
        """
        a, b = self.pair()
        reader = Descriptor(a, size=1)
        self.engine.addReader(reader)
        b.send(b"abc")
        self.engine.doRead()
        self.assertEqual(reader.data, b"a")
        self.engine.doRead()
        self.assertEqual(reader.data, b"a", "edge-triggered: the rest waits for a new edge")
        self.engine.removeReader(reader)
        self.engine.addReader(reader)
        self.reactor.advance(0)
        self.assertEqual(reader.data, b"ab")

    def test_writerRemovedAndAddedAgainIsCalled(self) -> None:
        a, _ = self.pair()
        writer = Descriptor(a)
        self.engine.addWriter(writer)
        self.engine.doRead()
        self.engine.removeWriter(writer)
        self.engine.addWriter(writer)
        self.reactor.advance(0)
        self.assertEqual(writer.writes, 2)

    def test_readAgainCallsTheReaderInALaterTurn(self) -> None:
        """
        A reader that stopped before its socket said C{EAGAIN} asks to be
        read again, with no new edge: it is called after the other events
        of the batch, and from then on in later turns of the reactor (the
        memory reactor runs them in one C{advance}), until it reads the end.
        """
        a, b = self.pair()
        reader = Descriptor(a, size=4)
        reader.then = lambda: None if reader.eof else self.engine.read_again(reader)
        self.engine.addReader(reader)
        b.send(b"last words")
        b.shutdown(socket.SHUT_WR)
        self.engine.doRead()
        self.assertEqual((reader.reads, reader.data), (2, b"last wor"))
        self.reactor.advance(0)
        self.assertEqual((reader.reads, reader.data, reader.eof), (4, b"last words", True))
        self.reactor.advance(0)
        self.assertEqual(reader.reads, 4)

    def test_readAgainForAReaderThatStoppedDoesNothing(self) -> None:
        """A reader removed before its turn comes is not called for it."""
        a, b = self.pair()
        reader = Descriptor(a, size=4)
        self.engine.addReader(reader)
        b.send(b"some words")
        self.engine.doRead()
        self.engine.read_again(reader)
        self.engine.removeReader(reader)
        self.reactor.advance(0)
        self.assertEqual(reader.reads, 1)

    def test_socketForgottenDuringABatchMissesTheRestOfIt(self) -> None:
        """
        Two sockets have bytes; whichever reader is called first forgets
        and closes the other and puts a new socket on its file descriptor
        number.  The closed socket's event, still in the batch, is not given
        to the new socket's reader; the new socket's own bytes come with the
        next call.
        """
        (a1, b1), (a2, b2) = self.pair(), self.pair()
        engine = self.engine
        seen: dict[str, Any] = {}
        fresh, fresh_peer = self.pair()
        newcomer: list[Descriptor] = []

        def kill(victim: Descriptor) -> None:
            if seen:
                return
            fd = victim.fd
            engine.forget(fd)
            victim.sock.close()
            seen["gone"] = fd in engine._gone
            seen["victim"] = victim
            os.dup2(fresh.fileno(), fd)
            reused = socket.socket(fileno=fd)
            self.addCleanup(reused.close)
            reader = Descriptor(reused)
            newcomer.append(reader)
            engine.addReader(reader)
            fresh_peer.send(b"new")

        first = Descriptor(a1, then=lambda: kill(second))
        second = Descriptor(a2, then=lambda: kill(first))
        engine.addReader(first)
        engine.addReader(second)
        b1.send(b"one")
        b2.send(b"two")
        engine.doRead()
        self.assertTrue(seen["gone"])
        victim = seen["victim"]
        self.assertEqual(victim.reads, 0)
        self.assertEqual(first.reads + second.reads, 1)
        (reader,) = newcomer
        self.assertEqual(reader.reads, 0, "the closed socket's event went to the new socket")
        self.assertEqual(engine._gone, set())
        engine.doRead()
        self.assertEqual((reader.reads, reader.data), (1, b"new"))
        self.assertEqual(victim.reads, 0)

    def test_failingReaderIsLoggedLosesItsConnectionAndIsForgotten(self) -> None:
        """A reader that raises is logged and told; the others of the batch are still served."""
        (a, b), (c, d) = self.pair(), self.pair()
        bad, good = Raiser(a), Descriptor(c)
        self.engine.addReader(bad)
        self.engine.addReader(good)
        b.send(b"x")
        d.send(b"y")
        self.engine.doRead()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        (reason,) = bad.lost
        self.assertIsInstance(reason.value, ValueError)
        self.assertEqual(good.data, b"y")
        self.assertEqual((self.engine.getReaders(), self.engine.watched), ([good], 1))
        b.send(b"more")
        self.engine.doRead()
        self.assertEqual(bad.reads, 1)

    def test_anExceptionNotAnErrorLeavesTheLoop(self) -> None:
        """
        A reader raising what is not an C{Exception} (C{KeyboardInterrupt})
        is not the engine's to handle: it leaves L{Engine.doRead}, and the
        reader is neither told nor forgotten.
        """
        a, b = self.pair()
        reader = Interrupter(a)
        self.engine.addReader(reader)
        b.send(b"x")
        self.assertRaises(KeyboardInterrupt, self.engine.doRead)
        self.assertEqual((reader.lost, self.engine.getReaders()), ([], [reader]))

    def test_failingConnectionLostStaysInTheEngine(self) -> None:
        """A descriptor failing again when told of its failure is logged too; the batch goes on."""
        (a, b), (c, d) = self.pair(), self.pair()
        bad, good = BadLoser(a), Descriptor(c)
        self.engine.addReader(bad)
        self.engine.addReader(good)
        b.send(b"x")
        d.send(b"y")
        self.engine.doRead()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)
        self.assertEqual((len(bad.lost), good.data), (1, b"y"))
        self.assertEqual(self.engine.getReaders(), [good])

    def test_failingWriterIsLoggedLosesItsConnectionAndIsForgotten(self) -> None:
        a, _ = self.pair()
        bad = Raiser(a)
        self.engine.addWriter(bad)
        self.engine.doRead()
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        (reason,) = bad.lost
        self.assertIsInstance(reason.value, ValueError)
        self.assertEqual((self.engine.getWriters(), self.engine.watched), ([], 0))
        self.assertFalse(self.nested())

    def test_failingReplayedReaderIsLoggedAndForgotten(self) -> None:
        """A reader called for a missed edge that raises is handled as in L{Engine.doRead}."""
        a, b = self.pair()
        self.engine.addWriter(Descriptor(a))
        b.send(b"x")
        self.engine.doRead()
        bad = Raiser(a)
        self.engine.addReader(bad)
        self.reactor.advance(0)
        self.assertEqual(bad.reads, 1)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(len(bad.lost), 1)
        self.assertEqual(self.engine.watched, 0)

    def test_listenerIsLevelTriggered(self) -> None:
        """A listener that leaves clients waiting is called again on each L{Engine.doRead}."""
        server = socket.socket()
        self.addCleanup(server.close)
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        server.setblocking(False)
        listener = Listener(server)
        self.engine.listen(listener)
        self.assertTrue(self.nested())
        self.assertEqual(self.engine.getReaders(), [listener])
        self.engine.doRead()
        self.assertEqual(listener.reads, 0)
        client = socket.create_connection(server.getsockname(), timeout=5)
        self.addCleanup(client.close)
        self.assertEqual(select.select([server], [], [], 5)[0], [server])
        self.engine.doRead()
        self.engine.doRead()
        self.assertEqual(listener.reads, 2)
        accepted, _ = server.accept()
        accepted.close()
        self.engine.doRead()
        self.assertEqual(listener.reads, 2)

    def test_streamSocketIsEdgeTriggeredUnlikeAListener(self) -> None:
        """Bytes left unread by a stream socket's reader do not call it again (the contrast with a listener)."""
        a, b = self.pair()
        reader = Descriptor(a, size=1)
        self.engine.addReader(reader)
        b.send(b"xyz")
        self.engine.doRead()
        self.engine.doRead()
        self.assertEqual(reader.reads, 1)

    def test_readersWritersAndWatched(self) -> None:
        (a, _), (c, _), (e, _) = self.pair(), self.pair(), self.pair()
        reader, writer, both = Descriptor(a), Descriptor(c), Descriptor(e)
        self.assertEqual((self.engine.getReaders(), self.engine.getWriters(), self.engine.watched), ([], [], 0))
        self.engine.addReader(reader)
        self.engine.addWriter(writer)
        self.engine.addReader(both)
        self.engine.addWriter(both)
        self.assertEqual(set(self.engine.getReaders()), {reader, both})
        self.assertEqual(set(self.engine.getWriters()), {writer, both})
        self.assertEqual(self.engine.watched, 3)
        self.engine.removeReader(reader)
        self.engine.removeWriter(both)
        self.assertEqual(self.engine.getReaders(), [both])
        self.assertEqual(self.engine.getWriters(), [writer])
        self.assertEqual(self.engine.watched, 3, "a socket no one reads is still watched")
        self.engine.removeReader(reader)  # again: nothing
        self.engine.forget(e.fileno())
        e.close()
        self.assertEqual((self.engine.getReaders(), self.engine.getWriters()), ([], [writer]))
        self.assertEqual(self.engine.watched, 2)

    def test_callLaterIsTheReactors(self) -> None:
        called: list[int] = []
        self.engine.callLater(1, called.append, 1)
        self.reactor.advance(1)
        self.assertEqual(called, [1])

    def test_reactorShuttingDownUnnests(self) -> None:
        """After C{connectionLost} from the reactor, the engine adds itself again when it next watches a socket."""
        (a, _), (c, _) = self.pair(), self.pair()
        self.engine.addReader(Descriptor(a))
        self.reactor.removeReader(self.engine)
        self.engine.connectionLost(Failure(Exception("shutting down")))
        self.engine.addReader(Descriptor(c))
        self.assertTrue(self.nested())


class CompiledEngineTests(EngineTests):
    """The same, on the compiled dispatch loop (C{balancer_cdispatch})."""

    compiled = True

    def test_wrongArgumentsAreTypeErrorsNamingThem(self) -> None:
        dispatch = engine_module.compiled_dispatch
        assert dispatch is not None
        error = self.assertRaises(TypeError, dispatch, self.engine)
        self.assertIn("takes 7 arguments", str(error))
        error = self.assertRaises(TypeError, dispatch, self.engine, self.engine.fileno(), [], {}, {}, set(), object)
        self.assertEqual(str(error), "dispatch() takes a descriptor, three dicts, a set and a type")
        for not_a_descriptor in (-1, 2**32 + self.engine.fileno()):
            error = self.assertRaises(
                TypeError, dispatch, self.engine, not_a_descriptor, {}, {}, {}, set(), splice.SplicedTransport)
            self.assertEqual(str(error), "dispatch() takes a descriptor, three dicts, a set and a type")
        self.assertRaises(OSError, dispatch, self.engine, 2**31 - 1, {}, {}, {}, set(), splice.SplicedTransport)
        error = self.assertRaises(TypeError, dispatch, self.engine, self.engine.fileno(), {}, {}, {}, set(), Descriptor)
        self.assertEqual(str(error), "Descriptor._peer is not a slot")
        unslotted = type("Unslotted", (), dict.fromkeys(["_peer", "_fd", "_closed"]))
        error = self.assertRaises(TypeError, dispatch, self.engine, self.engine.fileno(), {}, {}, {}, set(), unslotted)
        self.assertEqual(str(error), "Unslotted._peer is not a slot")
        self.engine.addReader(Descriptor(self.pair()[0]))
        dispatch(self.engine, self.engine.fileno(), {}, {}, {}, set(), splice.SplicedTransport)


class MakeEngineTests(SynchronousTestCase):
    """Which reactors can have an engine; each call makes a new one, owned by its caller."""

    def test_noneForAMemoryReactor(self) -> None:
        self.assertIsNone(make_engine(MemoryReactorClock()))

    def test_aNewEngineForThePollingReactor(self) -> None:
        engine = make_engine(global_reactor)
        self.assertIsInstance(engine, Engine)
        assert engine is not None
        self.addCleanup(engine.close)
        other = make_engine(global_reactor)
        assert other is not None
        self.addCleanup(other.close)
        self.assertIsNot(other, engine)
        self.assertIsNot(other.pipes, engine.pipes)
        self.assertIs(engine.reactor, global_reactor)

    def test_anEngineMakesTheCollectorRunLessOftenNeverMore(self) -> None:
        """
        The relays' objects are freed by the cyclic collector: with an
        engine its first threshold is at least GC_THRESHOLD; a higher one
        is kept, and the older generations' thresholds are left alone.
        """
        saved = gc.get_threshold()
        self.addCleanup(gc.set_threshold, *saved)
        higher = engine_module.GC_THRESHOLD * 3
        for before, after in (((700, 11, 12), (engine_module.GC_THRESHOLD, 11, 12)), ((higher, 11, 12), (higher, 11, 12))):
            gc.set_threshold(*before)
            engine = make_engine(global_reactor)
            assert engine is not None
            self.addCleanup(engine.close)
            self.assertEqual(gc.get_threshold(), after)

    def test_closeLeavesTheReactorAndClosesThePipesKept(self) -> None:
        engine = make_engine(global_reactor)
        assert engine is not None
        a, b = socket.socketpair()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        engine.addReader(Descriptor(a))
        engine.pipes.release(engine.pipes.acquire())
        self.assertIn(engine, global_reactor.getReaders())
        engine.close()
        self.assertNotIn(engine, global_reactor.getReaders())
        self.assertEqual((engine.pipes.free, engine.watched), (0, 0))
