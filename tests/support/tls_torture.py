"""
A torture run for TLS termination: a seeded random mix of connection
shapes, played by TLS clients in a process of their own
(L{tests.support.tls_client_peer}) through a C{protocol = "tls"} server of
a real balancer, in front of one plain TCP backend (L{TortureBackend}) that
acts by the header line each client sends once its handshake is done
(C{shape id size extra}).

The shapes (C{size} and C{extra} in bytes):
  - C{echo}: the client sends C{size} bytes a piece at a time, reading each
    back, then sends C{close_notify} and reads to the end (with none, on
    Twisted's transports, the C{close_notify} may come before the backend
    is connected: the header must still reach it);
  - C{answer}: the backend writes C{size} bytes and closes at once;
  - C{slow}: the same, a few MB to a client with a tiny receive buffer,
    reading 1 KB at a time (the balancer's writes to it wait, often);
  - C{upload}: the client sends C{size} bytes, the backend answers their
    sha256 (hex) and closes;
  - C{half_close}: the client sends C{size} bytes and its C{close_notify},
    and keeps reading: the backend, once its input ended, answers the
    sha256 and C{extra} bytes and closes (the relay engine only: on
    Twisted's transports a C{close_notify} ends the connection);
  - C{half_close_fin}: the same with the end of the client's TCP stream
    (a half-close without C{close_notify}) for its end of input;
  - C{late_close_notify}, C{late_fin}: a C{slow} answer whose client ends
    its input (C{close_notify}, or a TCP half-close without one) once it
    has read C{extra} bytes, often while the balancer is closing it with
    bytes still to send: it must still get them all (the relay engine only);
  - C{slow_upload}: an C{upload} to a backend that pauses its reading
    after each read (the balancer's reading of the client waits for it);
  - C{slow_upload_half}: the same with a C{half_close} (the relay engine only);
  - C{backend_half}: the backend writes C{size} bytes and shuts its write
    side, then reads to the end: the client gets them and C{close_notify}
    (TLS has no half-close here), then sends C{extra} bytes and its own
    C{close_notify}, which the backend must all get before its end;
  - C{backend_reset}: the backend sends up to C{size} bytes and resets;
  - C{client_reset}: an echo the client resets once C{extra} bytes came
    back, with more in flight;
  - C{handshake_leave}: the client leaves during its handshake (before its
    ClientHello, within it, or after reading a piece of the answer);
  - C{garbage}: plain text instead of a ClientHello.

L{check} says what each connection must have seen at both ends.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ProcessProtocol, Protocol, ServerFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from tests.support.torture import reset

#: Shapes and their weights in the mix, on every path.
SHAPES = {
    "echo": 4,
    "answer": 3,
    "slow": 1,
    "upload": 2,
    "backend_half": 2,
    "slow_upload": 1,
    "backend_reset": 2,
    "client_reset": 2,
    "handshake_leave": 2,
    "garbage": 1,
}
#: Shapes only the relay engine plays (TLS half-close).
ENGINE_SHAPES = {"half_close": 2, "half_close_fin": 2, "slow_upload_half": 1, "late_close_notify": 1, "late_fin": 1}
#: Seconds the backend of a C{slow_upload} pauses its reading after each read.
SLOW_READ_PAUSE = 0.002
#: Shapes whose client sends bytes (after its header) that the backend must get, all of them.
_CLIENT_SENDS = frozenset({"echo", "upload", "slow_upload", "slow_upload_half", "half_close", "half_close_fin"})
#: Shapes whose connections never reach the backend.
NO_BACKEND = frozenset({"handshake_leave", "garbage"})


def client_bytes(conn_id: int, size: int) -> bytes:
    """What the client of connection C{conn_id} sends."""
    return random.Random(conn_id * 2).randbytes(size)


def answer_bytes(conn_id: int, size: int) -> bytes:
    """What the backend of connection C{conn_id} sends."""
    return random.Random(conn_id * 2 + 1).randbytes(size)


def sha(data: bytes) -> str:
    """The sha256 of C{data}, in hex."""
    return hashlib.sha256(data).hexdigest()


@attrs.frozen
class Connection:
    """One connection of the plan."""

    id: int
    shape: str
    size: int = 0
    extra: int = 0
    tls: str = "1.3"

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def _draw(conn_id: int, shape: str, rng: random.Random) -> Connection:
    tls = rng.choice(["1.2", "1.3"])
    small = rng.choice([0, rng.randint(1, 2000), rng.randint(2000, 300_000)])
    if shape in ("echo", "answer"):
        return Connection(conn_id, shape, small, tls=tls)
    if shape == "slow":
        return Connection(conn_id, shape, rng.randint(2_000_000, 4_000_000), tls=tls)
    if shape in ("late_close_notify", "late_fin"):
        size = rng.randint(500_000, 3_000_000)
        return Connection(conn_id, shape, size, size - rng.randint(0, 400_000), tls=tls)
    if shape == "upload":
        return Connection(conn_id, shape, rng.choice([small, rng.randint(300_000, 2_000_000)]), tls=tls)
    if shape in ("slow_upload", "slow_upload_half"):
        return Connection(conn_id, shape, rng.randint(300_000, 2_000_000), tls=tls)
    if shape == "backend_half":
        return Connection(conn_id, shape, small, rng.choice([0, rng.randint(1, 500_000)]), tls=tls)
    if shape in ("half_close", "half_close_fin"):
        return Connection(conn_id, shape, small, rng.choice([0, rng.randint(1, 500_000)]), tls=tls)
    if shape == "backend_reset":
        return Connection(conn_id, shape, rng.randint(1, 200_000), tls=tls)
    if shape == "client_reset":
        size = rng.randint(40_000, 300_000)
        return Connection(conn_id, shape, size, rng.randint(1, size - 20_000), tls=tls)
    if shape == "handshake_leave":
        # 0: before the ClientHello; 1-100: within it; 100000: all of it, and a piece of the answer read.
        return Connection(conn_id, shape, extra=rng.choice([0, rng.randint(1, 100), 100_000]), tls=tls)
    return Connection(conn_id, shape, tls=tls)


def plan(seed: int, count: int, engine: bool) -> list[Connection]:
    """C{count} connections drawn from C{seed} (with the engine's own shapes if C{engine})."""
    rng = random.Random(seed)
    weights = dict(SHAPES, **(ENGINE_SHAPES if engine else {}))
    names = [name for name, weight in weights.items() for _ in range(weight)]
    return [_draw(i, rng.choice(names), rng) for i in range(count)]


@attrs.define
class BackendSeen:
    """What the backend saw of one connection."""

    shape: str
    received: int = 0
    digest: Any = attrs.field(factory=hashlib.sha256)
    input_ended: bool = False
    end: str = ""  # "clean", "reset", or "" while open


@implementer(IHalfCloseableProtocol)
class TortureBackend(Protocol):
    """Acts by the client's header line (see the module's docstring); records what it saw in C{factory.seen}."""

    factory: BackendFactory
    transport: Any

    def __init__(self) -> None:
        self.header = b""
        self.seen: BackendSeen | None = None
        self.conn: Connection | None = None

    def connectionMade(self) -> None:
        self.factory.connections += 1

    def dataReceived(self, data: bytes) -> None:
        if self.conn is None:
            self.header += data
            if b"\n" not in self.header:
                return
            line, data = self.header.split(b"\n", 1)
            shape, conn_id, size, extra = line.decode().split()
            self.conn = Connection(int(conn_id), shape, int(size), int(extra))
            self.seen = self.factory.seen[self.conn.id] = BackendSeen(shape)
            self.start()
            if not data:
                return
        assert self.seen is not None and self.conn is not None
        self.seen.received += len(data)
        self.seen.digest.update(data)
        shape = self.conn.shape
        if shape in ("echo", "client_reset"):
            self.transport.write(data)
        if shape in ("slow_upload", "slow_upload_half"):
            # A slow reader: the balancer's reading of the client stops while this one's is paused.
            self.transport.pauseProducing()
            reactor.callLater(SLOW_READ_PAUSE, self.transport.resumeProducing)
        if shape in ("upload", "slow_upload") and self.seen.received >= self.conn.size:
            self.transport.write(self.seen.digest.hexdigest().encode())
            self.transport.loseConnection()

    def start(self) -> None:
        conn = self.conn
        assert conn is not None
        if conn.shape in ("answer", "slow", "late_close_notify", "late_fin"):
            self.transport.write(answer_bytes(conn.id, conn.size))
            self.transport.loseConnection()
        elif conn.shape in ("upload", "slow_upload") and conn.size == 0:
            self.transport.write(sha(b"").encode())
            self.transport.loseConnection()
        elif conn.shape == "backend_half":
            self.transport.write(answer_bytes(conn.id, conn.size))
            self.transport.loseWriteConnection()
        elif conn.shape == "backend_reset":
            # Straight to the socket: a transport's write waits for the next turn, which the reset would discard.
            try:
                self.transport.getHandle().send(answer_bytes(conn.id, conn.size))
            except OSError:
                pass
            reset(self.transport)

    def readConnectionLost(self) -> None:
        if self.seen is None or self.conn is None:
            self.transport.loseConnection()  # no header came: counted in anonymous at the end
            return
        self.seen.input_ended = True
        if self.conn.shape in ("half_close", "half_close_fin", "slow_upload_half"):
            self.transport.write(self.seen.digest.hexdigest().encode() + answer_bytes(self.conn.id, self.conn.extra))
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if self.seen is None:
            self.factory.anonymous.append(reason.getErrorMessage())
            return
        self.seen.end = "clean" if reason.check(ConnectionDone) else "reset"


class BackendFactory(ServerFactory[TortureBackend]):
    """The torture backend: C{seen} by connection id, C{anonymous} connections that sent no header."""

    protocol = TortureBackend
    noisy = False

    def __init__(self) -> None:
        self.seen: dict[int, BackendSeen] = {}
        self.anonymous: list[str] = []
        self.connections = 0


def expected_answer(conn: Connection) -> bytes:
    """What the client of C{conn} must read, in all (for the shapes that read it all)."""
    data = client_bytes(conn.id, conn.size)
    if conn.shape == "echo":
        return data
    if conn.shape in ("answer", "slow", "backend_reset", "backend_half", "late_close_notify", "late_fin"):
        return answer_bytes(conn.id, conn.size)
    if conn.shape in ("upload", "slow_upload"):
        return sha(data).encode()
    if conn.shape in ("half_close", "half_close_fin", "slow_upload_half"):
        return sha(data).encode() + answer_bytes(conn.id, conn.extra)
    return b""


def check(conn: Connection, outcome: dict[str, Any] | None, seen: BackendSeen | None) -> list[str]:
    """What went wrong with C{conn}: its client's C{outcome} and what its backend saw."""
    if outcome is None:
        return ["the client process said nothing of it"]
    problems = []
    if outcome["error"]:
        problems.append(f"client error: {outcome['error']}")
    end = outcome["end"]
    if end == "timeout":
        problems.append(f"client hung after {outcome['received']} bytes")
    shape = conn.shape
    if shape in NO_BACKEND:
        if seen is not None:
            problems.append("reached the backend")
        if shape == "garbage" and end not in ("eof", "reset"):
            problems.append(f"garbage: the client's input ended by {end!r}")
        return problems
    if seen is None:
        return problems + ["never reached the backend"]
    client_data = client_bytes(conn.id, conn.size)
    if shape == "backend_reset":
        expected = answer_bytes(conn.id, conn.size)
        if end not in ("eof", "reset"):
            problems.append(f"backend reset: the client's input ended by {end!r}, not an error")
        if not expected.startswith(bytes.fromhex(outcome["kept"])):
            problems.append(f"backend reset: the client's {outcome['received']} bytes are not a prefix of the answer")
        return problems
    if shape == "client_reset":
        if not client_data.startswith(bytes.fromhex(outcome["kept"])):
            problems.append(f"client reset: its {outcome['received']} bytes are not a prefix of its echo")
        if seen.end != "reset":
            problems.append(f"client reset: the backend's connection ended {seen.end or 'never'}, not by a reset")
        return problems
    expected = expected_answer(conn)
    if outcome["received"] != len(expected) or outcome["digest"] != sha(expected):
        problems.append(f"the client read {outcome['received']} bytes, expected {len(expected)} (digest {'ok' if outcome['digest'] == sha(expected) else 'wrong'})")
    if end != "close_notify":
        problems.append(f"the client's input ended by {end!r}, not close_notify")
    backend_expected = client_data if shape in _CLIENT_SENDS else b""
    if shape == "backend_half":
        backend_expected = client_bytes(conn.id, conn.extra)
    if seen.received != len(backend_expected) or seen.digest.hexdigest() != sha(backend_expected):
        problems.append(f"the backend read {seen.received} bytes, expected {len(backend_expected)}")
    if seen.end != "clean":
        problems.append(f"the backend's connection ended {seen.end or 'never'}, not cleanly")
    if shape in ("half_close", "half_close_fin", "slow_upload_half") and not seen.input_ended:
        problems.append("half close: the backend's input did not end before its close")
    return problems


class PeerProcess(ProcessProtocol):
    """The client process: its outcomes by connection id, C{ended} once it exits."""

    def __init__(self) -> None:
        self.outcomes: dict[int, dict[str, Any]] = {}
        self.finished = False
        self.errors = b""
        self._buffer = b""
        self.ended: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            outcome = json.loads(line)
            if outcome.get("done"):
                self.finished = True
            else:
                self.outcomes[outcome["id"]] = outcome

    def errReceived(self, data: bytes) -> None:
        self.errors += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)
