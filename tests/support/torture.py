"""
A torture run for the TCP relay: a seeded random mix of connection shapes
through a real balancer, with scripted clients and backends on real
sockets (127.0.0.1, port 0), every connection checked from both ends.

Each shape is a pair of scripts, one for the client and one for its
backend: send bytes (fast, or slowly so that flow control engages),
half-close, close, reset (C{SO_LINGER} 0), pause, wait for bytes or for
the end of the input.  Every side checks each chunk it reads against the
bytes its peer's script sends, and notes when the end of its input came
and how (an end of stream, or a reset).  A shape's check then says what
must have reached each side, and within L{LAG} seconds of what.

Shapes whose backend speaks first are served by backends of their own
(one script per listening port); in the others the client's first bytes
are its connection's id, with which the backend finds its script.

The balancer runs in this process, on the reactor of the test, so that
afterwards the run can check the server's counters, the process's file
descriptors, the pipe pool and the relay engine.
"""

from __future__ import annotations

import json
import os
import random
import socket
import struct
import sys
from collections import Counter
from typing import AbstractSet, Any, Callable, Generator

import attrs
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IConsumer, IHalfCloseableProtocol, IPullProducer, IPushProducer, ITCPTransport
from twisted.internet.protocol import ClientFactory, ProcessProtocol, Protocol, ServerFactory
from twisted.python.failure import Failure
from zope.interface import implementer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: How long after a peer's end of stream (or reset) the other side must have seen it.
LAG = 1.0

#: How long one connection may take in all before it counts as hung.
HUNG = 15.0

_LINGER_RESET = struct.pack("ii", 1, 0)
_ID = struct.Struct("!Q")


def reset(transport: Any) -> None:
    """Reset a connection: close its socket with C{SO_LINGER} 0, so the peer gets an RST."""
    try:
        transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass  # already gone
    transport.abortConnection()


# The steps of a script


@attrs.frozen
class Send:
    """Send C{data}, C{chunk} bytes at a time, C{delay} seconds apart (0: as fast as the peer takes it)."""

    data: bytes
    chunk: int = 65536
    delay: float = 0.0


@attrs.frozen
class HalfClose:
    """Shut down the write side."""


@attrs.frozen
class Close:
    """Close the connection (after sending what is buffered)."""


@attrs.frozen
class Reset:
    """Reset the connection."""


@attrs.frozen
class Pause:
    """Do nothing for C{seconds}."""

    seconds: float


@attrs.frozen
class WaitBytes:
    """Wait until C{count} bytes have been read."""

    count: int


@attrs.frozen
class WaitEof:
    """Wait for the end of the input (an end of stream, or the connection lost)."""


Step = Send | HalfClose | Close | Reset | Pause | WaitBytes | WaitEof


def sent(script: list[Step]) -> bytes:
    """The bytes a script sends."""
    return b"".join(step.data for step in script if isinstance(step, Send))


@attrs.define
class Seen:
    """
    What one side of a connection saw and did.

    @ivar count: bytes read.
    @ivar mismatch: the offset of the first byte read that was not the
        expected one, if any.
    @ivar eof_at: when the end of stream came.
    @ivar lost_at: when the connection was lost; C{reset} says whether by a
        reset (or another error) rather than an orderly close.
    @ivar ended_at: when this side first sent an end (half-close, close or reset, or the
        close of a peer done with its script).
    @ivar why: why its connection ended, as Twisted says.
    @ivar reset_at: when this side reset the connection.
    @ivar last_read_at: when it read its last bytes.
    """

    expected: bytes = attrs.field(default=b"", repr=False)
    count: int = 0
    mismatch: int | None = None
    connected_at: float | None = None
    eof_at: float | None = None
    lost_at: float | None = None
    reset: bool = False
    why: str = ""
    ended_at: float | None = None
    reset_at: float | None = None
    last_read_at: float | None = None

    def read(self, data: bytes) -> None:
        """Check C{data} against what is expected next."""
        self.last_read_at = reactor.seconds()
        start = self.count
        self.count += len(data)
        if self.mismatch is None and self.expected[start : self.count] != data:
            self.mismatch = start

    @property
    def end_at(self) -> float | None:
        """When the input ended: its end of stream, or else the connection's loss."""
        return self.eof_at if self.eof_at is not None else self.lost_at


@implementer(IPullProducer)
class _Sender:
    """Writes one L{Send} step as its transport takes it, then goes on with the script."""

    def __init__(self, peer: ScriptedPeer, step: Send) -> None:
        self._peer = peer
        self._step = step
        self._offset = 0
        self._waiting = False

    def start(self) -> None:
        """Start writing (a transport calls a pull producer as soon as it is registered)."""
        self._peer.transport.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self._waiting or self._peer.gone:
            return
        step = self._step
        if self._offset >= len(step.data):
            self._peer.transport.unregisterProducer()
            self._peer.advance()
            return
        if step.delay and self._offset:
            self._waiting = True
            reactor.callLater(step.delay, self._write_next)
        else:
            self._write_next()

    def _write_next(self) -> None:
        self._waiting = False
        if self._peer.gone:
            return
        step = self._step
        data = step.data[self._offset : self._offset + step.chunk]
        self._offset += len(data)
        self._peer.transport.write(data)

    def stopProducing(self) -> None:
        self._offset = len(self._step.data)


class IPeerTransport(ITCPTransport, IConsumer, IPushProducer):
    """A peer's TCP transport, which also takes a producer and can be paused."""


@implementer(IHalfCloseableProtocol)
class ScriptedPeer(Protocol):
    """
    One side of a torture connection: runs its script, reads everything
    (slowly if C{slow_read}), and notes what it saw in C{seen}.  C{done}
    fires once the connection is lost.
    """

    transport: IPeerTransport

    #: Bytes per second this peer reads at most (0: as fast as they come).
    slow_read = 0.0

    def __init__(self, script: list[Step], expected: bytes = b"", slow_read: float = 0.0) -> None:
        self.script = list(script)
        self.seen = Seen(expected=expected)
        self.slow_read = slow_read
        self.done: Deferred[Seen] = Deferred()
        self.gone = False
        self._waiting_for: Step | None = None
        self._running = False

    def connectionMade(self) -> None:
        self.seen.connected_at = reactor.seconds()
        self.start()

    def start(self) -> None:
        """Run the script from its first step."""
        self._running = True
        self.advance()

    def advance(self) -> None:
        """Run steps until one waits."""
        while not self.gone:
            if not self.script:
                # A peer done with its script closes, as real ones do.
                if self.seen.ended_at is None:
                    self.seen.ended_at = reactor.seconds()
                self.transport.loseConnection()
                return
            step = self.script.pop(0)
            if isinstance(step, Send):
                _Sender(self, step).start()
                return
            if isinstance(step, (HalfClose, Close, Reset)):
                now = reactor.seconds()
                if self.seen.ended_at is None:
                    self.seen.ended_at = now
                if isinstance(step, HalfClose):
                    self.transport.loseWriteConnection()
                elif isinstance(step, Close):
                    self.transport.loseConnection()
                else:
                    self.seen.reset_at = now
                    reset(self.transport)
                continue
            if isinstance(step, Pause):
                reactor.callLater(step.seconds, self.advance)
                return
            if self._satisfied(step):
                continue
            self._waiting_for = step
            return

    def _satisfied(self, step: Step) -> bool:
        if isinstance(step, WaitBytes):
            return self.seen.count >= step.count or self.seen.end_at is not None
        return self.seen.end_at is not None

    def _check_wait(self) -> None:
        step = self._waiting_for
        if step is not None and self._satisfied(step):
            self._waiting_for = None
            self.advance()

    def dataReceived(self, data: bytes) -> None:
        self.seen.read(data)
        if self.slow_read and not self.gone:
            self.transport.pauseProducing()
            reactor.callLater(len(data) / self.slow_read, self._read_again)
        self._check_wait()

    def _read_again(self) -> None:
        if not self.gone:
            self.transport.resumeProducing()

    def readConnectionLost(self) -> None:
        self.seen.eof_at = reactor.seconds()
        self._check_wait()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.gone = True
        self.seen.lost_at = reactor.seconds()
        self.seen.reset = not reason.check(ConnectionDone)
        self.seen.why = reason.getErrorMessage()
        self.done.callback(self.seen)


class IdentifiedBackend(ScriptedPeer):
    """
    A backend whose first 8 bytes read are its connection's id: then it
    runs that connection's backend script.  A connection that ends before
    its id is noted in the factory's C{anonymous}.
    """

    factory: BackendFactory

    def __init__(self) -> None:
        super().__init__([])
        self._head = b""
        self.conn: Connection | None = None

    def connectionMade(self) -> None:
        self.seen.connected_at = reactor.seconds()

    def dataReceived(self, data: bytes) -> None:
        if self.conn is None:
            self._head += data
            if len(self._head) < _ID.size:
                return
            data, (conn_id,) = self._head[_ID.size :], _ID.unpack(self._head[: _ID.size])
            conn = self.conn = self.factory.connections[conn_id]
            conn.backend = self
            conn.identified.callback(None)
            self.script = list(conn.backend_script)
            self.seen.expected = sent(conn.client_script)[_ID.size :]
            self.slow_read = conn.backend_slow_read
            self.start()
            if not data:
                return
        super().dataReceived(data)

    def readConnectionLost(self) -> None:
        super().readConnectionLost()
        if self.conn is None:
            self.transport.loseConnection()  # the client left before its id: nothing to do

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        super().connectionLost(reason)
        if self.conn is None:
            self.factory.anonymous.append(self.seen)


class BackendFactory(ServerFactory[IdentifiedBackend]):
    """The L{IdentifiedBackend}s of one listening port, and what those that got no id saw (C{anonymous})."""

    noisy = False
    protocol = IdentifiedBackend

    def __init__(self, connections: dict[int, Connection]) -> None:
        self.connections = connections
        self.anonymous: list[Seen] = []


# Connections and shapes


@attrs.define(eq=False)
class Connection:
    """One client's planned and observed connection."""

    id: int
    shape: str
    server: str
    client_script: list[Step]
    backend_script: list[Step] = attrs.field(factory=list)
    client_slow_read: float = 0.0
    backend_slow_read: float = 0.0
    #: What the client must receive (by default what the backend script sends).
    client_expects: bytes | None = None
    client: ScriptedPeer | None = None
    backend: ScriptedPeer | None = None
    hung: bool = False
    #: Fires once the backend read the connection's id.
    identified: Deferred[None] = attrs.field(factory=Deferred)


#: The backends whose script is fixed per listening port (they speak first; run in a
#: process of their own, L{tests.support.speaking_backends}), by server name, with what
#: each must read.
GREETING = b"220 torture.test ESMTP ready\r\n"
BIG_GREETING = random.Random(7).randbytes(300_000)
BYE = b"QUIT\r\n"
FIXED_BACKENDS: dict[str, tuple[list[Step], bytes]] = {
    "greet": ([Send(GREETING), Close()], b""),
    "greet_big": ([Send(BIG_GREETING), Close()], b""),
    "greet_pause": ([Pause(0.02), Send(GREETING), WaitEof(), Close()], BYE),
    "greet_empty": ([Close()], b""),
    "rst": ([Reset()], b""),
}

#: Server options of the servers that need some (idle timeouts, connect timeouts).
IDLE = 0.3
CONNECT_TIMEOUT = 0.25
SERVER_OPTIONS: dict[str, dict[str, Any]] = {
    "silent": {"client_idle_timeout": IDLE},
    "blackhole": {"backend_connection_timeout": CONNECT_TIMEOUT},
}


#: How fast a slow reader reads, in bytes per second: slower than the relay
#: sends, so that flow control engages once the buffers between them are full.
SLOW_READ = 40e6


def _payload(rng: random.Random, low: int, high: int) -> bytes:
    return rng.randbytes(rng.randint(low, high))


def _id(conn_id: int) -> Send:
    return Send(_ID.pack(conn_id))


def _shape_greet_close(c: int, rng: random.Random) -> Connection:
    server = rng.choice(["greet", "greet", "greet_big"])
    return Connection(c, "greet_close", server, [WaitEof()], client_expects=sent(FIXED_BACKENDS[server][0]))


def _shape_greet_pause(c: int, rng: random.Random) -> Connection:
    return Connection(
        c, "greet_pause", "greet_pause", [WaitBytes(len(GREETING)), Send(BYE), HalfClose(), WaitEof()],
        client_expects=GREETING,
    )


def _shape_zero_backend(c: int, rng: random.Random) -> Connection:
    return Connection(c, "zero_backend", "greet_empty", [WaitEof()], client_expects=b"")


def _shape_zero_client(c: int, rng: random.Random) -> Connection:
    return Connection(c, "zero_client", "scripted", [Close()])


def _shape_client_close(c: int, rng: random.Random) -> Connection:
    return Connection(c, "client_close", "scripted", [_id(c), Send(_payload(rng, 0, 65536)), Close()], [WaitEof(), Close()])


def _shape_client_half(c: int, rng: random.Random) -> Connection:
    return Connection(
        c, "client_half", "scripted",
        [_id(c), Send(_payload(rng, 0, 20000)), HalfClose(), WaitEof()],
        [Send(_payload(rng, 1, 200_000), chunk=8192, delay=0.002), WaitEof(), Close()],
    )


def _shape_backend_half(c: int, rng: random.Random) -> Connection:
    return Connection(
        c, "backend_half", "scripted",
        [_id(c), Send(_payload(rng, 1, 200_000), chunk=8192, delay=0.002), HalfClose(), WaitEof()],
        [Send(_payload(rng, 0, 20000)), HalfClose(), WaitEof(), Close()],
    )


def _shape_bulk_both(c: int, rng: random.Random) -> Connection:
    return Connection(
        c, "bulk_both", "scripted",
        [_id(c), Send(_payload(rng, 1 << 20, 3 << 20)), HalfClose(), WaitEof()],
        [Send(_payload(rng, 1 << 20, 3 << 20)), WaitEof(), Close()],
    )


def _shape_slow_client_reader(c: int, rng: random.Random) -> Connection:
    return Connection(
        c, "slow_client_reader", "scripted", [_id(c), HalfClose(), WaitEof()],
        [Send(_payload(rng, 6 << 20, 10 << 20)), WaitEof(), Close()], client_slow_read=SLOW_READ,
    )


def _shape_slow_backend_reader(c: int, rng: random.Random) -> Connection:
    return Connection(
        c, "slow_backend_reader", "scripted", [_id(c), Send(_payload(rng, 6 << 20, 10 << 20)), HalfClose(), WaitEof()],
        [WaitEof(), Send(b"OK\r\n"), Close()], backend_slow_read=SLOW_READ,
    )


def _shape_client_reset_mid(c: int, rng: random.Random) -> Connection:
    return Connection(
        c, "client_reset_mid", "scripted", [_id(c), Send(_payload(rng, 0, 30000)), WaitBytes(rng.randint(1, 50000)), Reset()],
        [Send(_payload(rng, 60000, 400_000), chunk=8192, delay=0.002), WaitEof()],
    )


def _shape_client_reset_after_eof(c: int, rng: random.Random) -> Connection:
    return Connection(
        c, "client_reset_after_eof", "scripted",
        [_id(c), Send(_payload(rng, 0, 30000)), HalfClose(), WaitBytes(rng.randint(1, 50000)), Reset()],
        [Send(_payload(rng, 60000, 400_000), chunk=8192, delay=0.002), WaitEof()],
    )


def _shape_client_reset_early(c: int, rng: random.Random) -> Connection:
    return Connection(c, "client_reset_early", rng.choice(["blackhole", "scripted"]), [Pause(rng.random() * 0.05), Reset()])


def _shape_backend_reset_early(c: int, rng: random.Random) -> Connection:
    return Connection(c, "backend_reset_early", "rst", [WaitEof()], client_expects=b"")


def _shape_backend_reset_mid(c: int, rng: random.Random) -> Connection:
    return Connection(
        c, "backend_reset_mid", "scripted", [_id(c), WaitEof()],
        [Send(_payload(rng, 1, 100_000), chunk=4096, delay=0.001), Reset()],
    )


def _shape_backend_reset_after_eof(c: int, rng: random.Random) -> Connection:
    return Connection(
        c, "backend_reset_after_eof", "scripted", [_id(c), Send(_payload(rng, 0, 50000)), HalfClose(), WaitEof()],
        [WaitEof(), Reset()],
    )


def _shape_refused(c: int, rng: random.Random) -> Connection:
    return Connection(c, "refused", "refused", [WaitEof()], client_expects=b"")


def _shape_silent(c: int, rng: random.Random) -> Connection:
    return Connection(c, "silent", "silent", [_id(c), Send(_payload(rng, 1, 1000)), WaitEof()], [WaitEof()])


def _shape_connect_timeout(c: int, rng: random.Random) -> Connection:
    return Connection(c, "connect_timeout", "blackhole", [WaitEof()], client_expects=b"")


#: Shapes, each with its weight in the mix.
SHAPES: dict[str, tuple[Callable[[int, random.Random], Connection], int]] = {
    "greet_close": (_shape_greet_close, 20),
    "greet_pause": (_shape_greet_pause, 6),
    "zero_backend": (_shape_zero_backend, 4),
    "zero_client": (_shape_zero_client, 4),
    "client_close": (_shape_client_close, 10),
    "client_half": (_shape_client_half, 8),
    "backend_half": (_shape_backend_half, 8),
    "bulk_both": (_shape_bulk_both, 1),
    "slow_client_reader": (_shape_slow_client_reader, 1),
    "slow_backend_reader": (_shape_slow_backend_reader, 1),
    "client_reset_mid": (_shape_client_reset_mid, 5),
    "client_reset_after_eof": (_shape_client_reset_after_eof, 5),
    "client_reset_early": (_shape_client_reset_early, 4),
    "backend_reset_early": (_shape_backend_reset_early, 4),
    "backend_reset_mid": (_shape_backend_reset_mid, 5),
    "backend_reset_after_eof": (_shape_backend_reset_after_eof, 5),
    "refused": (_shape_refused, 3),
    "silent": (_shape_silent, 2),
    "connect_timeout": (_shape_connect_timeout, 2),
}

#: The shapes whose client sends its id, so that the backend must be found.
IDENTIFIED = frozenset(
    {
        "client_close", "client_half", "backend_half", "bulk_both", "slow_client_reader", "slow_backend_reader",
        "client_reset_mid", "client_reset_after_eof", "backend_reset_mid", "backend_reset_after_eof", "silent",
    }
)

#: The servers of a torture run, with the backend each one has.
SERVERS = ("greet", "greet_big", "greet_pause", "greet_empty", "rst", "scripted", "refused", "silent", "blackhole")


def plan(seed: int, count: int, shapes: dict[str, tuple[Callable[[int, random.Random], Connection], int]] = SHAPES) -> list[Connection]:
    """C{count} connections drawn from C{shapes} with the random generator seeded with C{seed}."""
    rng = random.Random(seed)
    names = list(shapes)
    weights = [shapes[n][1] for n in names]
    return [shapes[name][0](i + 1, rng) for i, name in enumerate(rng.choices(names, weights, k=count))]


# Checks


def _within(problems: list[str], what: str, at: float | None, since: float | None, lag: float = LAG, reader: Seen | None = None) -> None:
    """
    C{at} came, no later than C{lag} after C{since} or, for a C{reader}
    that was still reading then (flow control), after its last bytes.
    """
    if since is not None and reader is not None and reader.last_read_at is not None:
        since = max(since, reader.last_read_at)
    if at is None:
        problems.append(f"{what}: never came")
    elif since is not None and at - since > lag:
        problems.append(f"{what}: came {at - since:.3f} s after its cause (more than {lag} s)")


def check(conn: Connection) -> list[str]:
    """What went wrong with a finished connection (nothing: an empty list)."""
    problems: list[str] = []
    client, backend = conn.client, conn.backend
    assert client is not None
    c = client.seen
    shape = conn.shape
    peer_sends = conn.client_expects if conn.client_expects is not None else sent(conn.backend_script)
    b = backend.seen if backend is not None else None

    def exact(seen: Seen, expected: bytes, who: str) -> None:
        if seen.mismatch is not None:
            problems.append(f"{who} read a wrong byte at offset {seen.mismatch}")
        if seen.count != len(expected):
            problems.append(f"{who} read {seen.count} bytes, expected {len(expected)}")

    def prefix(seen: Seen, who: str) -> None:
        if seen.mismatch is not None:
            problems.append(f"{who} read a wrong byte at offset {seen.mismatch}")

    def needs_backend() -> Seen | None:
        if b is None:
            problems.append("the backend never got the connection's id")
        return b

    if shape in ("greet_close", "zero_backend", "refused"):
        exact(c, peer_sends, "client")
        if c.eof_at is None:
            problems.append("client: no end of stream" + (" (a reset)" if c.reset else ""))
        _within(problems, "client's end of stream", c.end_at, c.connected_at)
    elif shape == "connect_timeout":
        exact(c, b"", "client")
        _within(problems, "client's end of stream", c.eof_at, c.connected_at, CONNECT_TIMEOUT + LAG)
    elif shape == "greet_pause":
        exact(c, peer_sends, "client")
        _within(problems, "client's end of stream", c.eof_at, c.ended_at)
    elif shape == "backend_reset_early":
        # A reset that comes before the relay saw its connect succeed is a
        # failed connect (counted as refused): the client then gets an end of
        # stream, as for a refusing backend; a later one gets it a reset.
        exact(c, b"", "client")
        _within(problems, "client's end", c.end_at, c.connected_at)
    elif shape == "zero_client":
        pass  # the backend side is checked in the anonymous backends' list
    elif shape == "client_reset_early":
        pass  # the counters, descriptors and pipes after the run say whether the relay cleaned up
    elif shape in ("client_close", "client_half", "backend_half", "bulk_both", "slow_client_reader", "slow_backend_reader"):
        if (bs := needs_backend()) is not None:
            exact(bs, sent(conn.client_script)[_ID.size :], "backend")
            _within(problems, "backend's end of stream", bs.eof_at, c.ended_at, reader=bs)
            if shape != "client_close":
                exact(c, peer_sends, "client")
                _within(problems, "client's end of stream", c.eof_at, bs.ended_at, reader=c)
            for seen, who in ((c, "client"), (bs, "backend")):
                if seen.reset:
                    problems.append(f"{who}: its connection was reset")
    elif shape in ("client_reset_mid", "client_reset_after_eof"):
        if (bs := needs_backend()) is not None:
            prefix(bs, "backend")
            prefix(c, "client")
            # After the client's end of stream, a backend done sending closes by itself. Under load
            # it can do so before the client's reset reaches it: its connection then ends as it
            # closed it, in order.  A backend still open must get the reset.
            if bs.ended_at is None or (c.reset_at is not None and bs.ended_at > c.reset_at + LAG):
                if not bs.reset:
                    problems.append(f"backend: the client's reset came as an orderly close ({bs})")
                _within(problems, "backend's reset", bs.lost_at, c.reset_at)
            if shape == "client_reset_after_eof":
                exact(bs, sent(conn.client_script)[_ID.size :], "backend")
                if bs.eof_at is None:
                    problems.append("backend: no end of stream before the reset")
    elif shape in ("backend_reset_mid", "backend_reset_after_eof"):
        if (bs := needs_backend()) is not None:
            prefix(c, "client")
            if not c.reset or (shape == "backend_reset_mid" and c.eof_at is not None):
                problems.append("client: the backend's reset came as an end of stream")
            _within(problems, "client's reset", c.lost_at, bs.reset_at)
            if shape == "backend_reset_after_eof":
                exact(bs, sent(conn.client_script)[_ID.size :], "backend")
    elif shape == "silent":
        if (bs := needs_backend()) is not None:
            exact(bs, sent(conn.client_script)[_ID.size :], "backend")
            exact(c, b"", "client")
            _within(problems, "client's end", c.end_at, c.connected_at, IDLE + LAG)
            _within(problems, "backend's end", bs.end_at, c.end_at)
    else:
        problems.append(f"no check for shape {shape}")
    return problems


# The run


@attrs.define
class Report:
    """The outcome of a run: connections per shape and per server, and the failures (C{conn id, shape, what})."""

    seed: int
    shapes: Counter[str] = attrs.field(factory=Counter)
    servers: Counter[str] = attrs.field(factory=Counter)
    failures: list[str] = attrs.field(factory=list)
    hung: int = 0

    def summary(self) -> str:
        """One paragraph for a test's output or a failure message."""
        shapes = ", ".join(f"{name} {n}" for name, n in sorted(self.shapes.items()))
        head = f"seed {self.seed}: {sum(self.shapes.values())} connections ({shapes}); {len(self.failures)} failed, {self.hung} hung"
        return "\n".join([head, *self.failures[:40]])


class _ClientFactory(ClientFactory):
    noisy = False

    def __init__(self, protocol: ScriptedPeer) -> None:
        self._protocol = protocol
        self.failed: Deferred[None] = Deferred()

    def buildProtocol(self, addr: Any) -> ScriptedPeer:
        return self._protocol

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failed.errback(reason)


class _Lines(ProcessProtocol):
    """Standard output of a peer process, a JSON document per line, handed to whoever waits next."""

    def __init__(self) -> None:
        self._buffer = b""
        self._waiting: list[Deferred[Any]] = []
        self.ended: Deferred[None] = Deferred()

    def next_line(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._waiting.append(d)
        return d

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer and self._waiting:
            line, self._buffer = self._buffer.split(b"\n", 1)
            self._waiting.pop(0).callback(json.loads(line))

    def processEnded(self, reason: Failure) -> None:
        for d in self._waiting:
            d.errback(reason)
        self.ended.callback(None)


class Backends:
    """The backends of a torture run, each on 127.0.0.1 port 0; C{ports} by server name."""

    def __init__(self) -> None:
        self.connections: dict[int, Connection] = {}
        self.factories: dict[str, BackendFactory] = {}
        self.ports: dict[str, int] = {}
        self._listening: list[Any] = []
        self._sockets: list[socket.socket] = []
        self._speaking = _Lines()
        self._process: Any = None

    @inlineCallbacks
    def start(self) -> Generator[Deferred[Any], Any, None]:
        """
        Listen: the backends that speak first in a process of their own, a
        backend per other server here, a refusing port for C{refused}, a full
        backlog for C{blackhole}.
        """
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        ports = self._speaking.next_line()
        self._process = reactor.spawnProcess(
            self._speaking, sys.executable, [sys.executable, "-m", "tests.support.speaking_backends"], env=env, path=ROOT
        )
        self.ports.update((yield ports))
        for name in ("scripted", "silent"):
            factory = self.factories[name] = BackendFactory(self.connections)
            port = yield TCP4ServerEndpoint(reactor, 0, backlog=256, interface="127.0.0.1").listen(factory)
            self._listening.append(port)
            address = port.getHost()
            assert isinstance(address, IPv4Address)
            self.ports[name] = address.port
        self.ports["refused"] = self._refusing()
        self.ports["blackhole"] = self._blackhole()

    def speaking_counts(self) -> Deferred[dict[str, int]]:
        """Fires with the counts of the backends that speak first (see L{tests.support.speaking_backends})."""
        counts = self._speaking.next_line()
        self._process.write(b"report\n")
        return counts

    def _refusing(self) -> int:
        """
        A port that refuses every connection: a socket bound to it and not
        listening, held until L{stop}, so that no other process (another
        trial worker's balancer) can listen on it meanwhile, as it could on
        a port closed again.
        """
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        self._sockets.append(held)
        return int(held.getsockname()[1])

    def _blackhole(self) -> int:
        """A port whose listener never accepts, its queue full: connects to it stay pending."""
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        self._sockets.append(listener)
        port = listener.getsockname()[1]
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            self._sockets.append(filler)
        return port

    def stop(self) -> Deferred[Any]:
        """Close every listener and socket of the backends, and end their process."""
        for sock in self._sockets:
            sock.close()
        self._process.closeStdin()
        return gatherResults([port.stopListening() for port in self._listening] + [self._speaking.ended])


def open_descriptors() -> dict[int, str]:
    """The file descriptors this process has open, with what each is."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass  # the one listdir itself had open
    return found


def pooled_pipes(pool: Any) -> set[int]:
    """
    The descriptors of the empty pipes C{pool} (a
    L{PipePool<balancer.proxy.engine.pipes.PipePool>}) keeps: each is
    taken out and given back, in the same order.
    """
    taken = [pool.acquire() for _ in range(pool.free)]
    for pipe in reversed(taken):
        pool.release(pipe)
    return {fd for pipe in taken for fd in pipe}


def leaked_descriptors(before: dict[int, str], after: dict[int, str], kept: AbstractSet[int] = frozenset()) -> dict[int, str]:
    """
    The descriptors open C{after} a run that were not open C{before} it
    (a number now naming something else counts as new), except those in
    C{kept} (the pipes the relay engine's pool keeps for later relays).

    Only new descriptors count: one that was open before and closed during
    the run (left by an earlier test, say) is no leak of the run's.
    """
    return {fd: what for fd, what in after.items() if before.get(fd) != what and fd not in kept}


@inlineCallbacks
def run(
    seed: int,
    count: int,
    concurrency: int,
    backends: Backends,
    address_of: Callable[[str], tuple[str, int]],
    shapes: dict[str, tuple[Callable[[int, random.Random], Connection], int]] = SHAPES,
) -> Generator[Deferred[Any], Any, Report]:
    """
    Run C{count} planned connections, C{concurrency} at a time, each to the
    balancer's address for its server (C{address_of}); fires with a
    L{Report}.
    """
    report = Report(seed)
    connections = plan(seed, count, shapes)
    backends.connections.update({conn.id: conn for conn in connections})
    limit = DeferredSemaphore(concurrency)

    def one(conn: Connection) -> Deferred[None]:
        return limit.run(_connect_and_check, conn, address_of(conn.server), report)

    yield gatherResults([one(conn) for conn in connections])
    report.shapes.update(conn.shape for conn in connections)
    report.servers.update(conn.server for conn in connections)
    return report


@inlineCallbacks
def _connect_and_check(conn: Connection, address: tuple[str, int], report: Report) -> Generator[Deferred[Any], Any, None]:
    client = conn.client = ScriptedPeer(conn.client_script, conn.client_expects if conn.client_expects is not None else sent(conn.backend_script), conn.client_slow_read)
    factory = _ClientFactory(client)
    connector = reactor.connectTCP(address[0], address[1], factory, timeout=5)
    hung = reactor.callLater(HUNG, _give_up, conn, connector)
    ended: Deferred[Any] = Deferred()
    client.done.chainDeferred(ended)
    factory.failed.addErrback(lambda f: ended.errback(f) if not ended.called else None)
    try:
        yield ended
    except Exception as e:
        if not conn.hung:
            report.failures.append(f"conn {conn.id} ({conn.shape}): the client could not connect: {e}")
            return
    finally:
        if hung.active():
            hung.cancel()
    if conn.hung:
        report.hung += 1
        report.failures.append(f"conn {conn.id} ({conn.shape}): hung (client saw {client.seen})")
        return
    if conn.shape in IDENTIFIED:
        wait = reactor.callLater(HUNG, _give_up_backend, conn)
        yield conn.identified
        yield conn.backend.done  # type: ignore[union-attr]
        if wait.active():
            wait.cancel()
        else:
            report.hung += 1
            report.failures.append(f"conn {conn.id} ({conn.shape}): the backend's connection hung ({conn.backend})")
            return
    for problem in check(conn):
        report.failures.append(f"conn {conn.id} ({conn.shape}): {problem}")


def _give_up(conn: Connection, connector: Any) -> None:
    conn.hung = True
    connector.disconnect()
    if conn.client is not None and conn.client.transport is not None:
        conn.client.transport.abortConnection()


def _give_up_backend(conn: Connection) -> None:
    backend = conn.backend
    if backend is None:
        # Set before the callback: the waiting check reads conn.backend as soon as it fires.
        backend = conn.backend = ScriptedPeer([])
        conn.identified.callback(None)
    if backend.transport is not None:
        backend.transport.abortConnection()
    elif not backend.done.called:
        backend.done.callback(backend.seen)


@inlineCallbacks
def check_backends(backends: Backends, report: Report) -> Generator[Deferred[Any], Any, list[str]]:
    """
    Fires with what went wrong at the backends no connection could be
    matched with: those of the shapes where the backend speaks first, and
    those that ended before a client's id came.
    """
    problems: list[str] = []
    counts = yield backends.speaking_counts()
    pausing = report.shapes["greet_pause"]
    if counts.get("greet_pause.expected", 0) != pausing:
        problems.append(f"{counts.get('greet_pause.expected', 0)} greet_pause backends read {BYE!r} and an end of stream, of {pausing}")
    anonymous = backends.factories["scripted"].anonymous
    for seen in anonymous:
        if seen.count:
            problems.append(f"a backend read {seen.count} bytes without an id")
    clean = sum(1 for seen in anonymous if seen.eof_at is not None and not seen.reset)
    if clean != report.shapes["zero_client"]:
        problems.append(f"{clean} backends saw a client leave without a byte, for {report.shapes['zero_client']} zero_client connections")
    return problems
