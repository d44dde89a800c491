"""
The data plane's loops, compiled (C{balancer_cdispatch}) and in Python,
keep nothing per message, per datagram or per connection: a reference kept
by mistake (the C loops count references by hand) would grow the memory
Python holds with every one of them, and a transport or a session would
gain a reference per message.  Measured with C{tracemalloc} (which sees
the objects a C extension makes too) over thousands of messages after a
warm-up, on real sockets.
"""

from __future__ import annotations

import fcntl
import select
import socket
import struct
import sys
import termios
import tracemalloc
from collections.abc import Callable

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from balancer.proxy.engine import pipes, splice
from balancer.proxy.engine.engine import Engine
from balancer.proxy.udp_links import LinkPoller
from tests.support.loops import use_loop
from tests.support.skips import NO_ENGINE
from tests.test_splice import Ends, tcp_pair

ROUNDS = 2000
"""Messages (or datagrams) measured after the warm-up."""

GROWTH_ALLOWED = 16 * 1024
"""
Bytes Python may hold more after L{ROUNDS} than before: the allocator's
and the interpreter's own caches.  A reference kept per round keeps at
least an int over 256 (28 bytes) or a message (33 bytes and more) per round:
at least 56,000 bytes over L{ROUNDS}.
"""


def growth(case: SynchronousTestCase, rounds: Callable[[int], None]) -> int:
    """
    Bytes Python holds more after C{rounds(ROUNDS)} than before it, after
    a warm-up of C{rounds(ROUNDS // 10)}.
    """
    rounds(ROUNDS // 10)
    tracemalloc.start()
    case.addCleanup(tracemalloc.stop)
    before, _ = tracemalloc.get_traced_memory()
    rounds(ROUNDS)
    after, _ = tracemalloc.get_traced_memory()
    return after - before


def readable(sock: socket.socket) -> int:
    """The bytes waiting to be read on C{sock}."""
    return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]


def nonblocking_pair(case: SynchronousTestCase) -> tuple[socket.socket, socket.socket]:
    """
    Two connected non-blocking TCP sockets on 127.0.0.1 (without Nagle's
    wait: a test's small writes leave at once), closed after the test.
    """
    near, far = tcp_pair()
    for sock in (near, far):
        case.addCleanup(sock.close)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return near, far


def join(engine: Engine, client: socket.socket, backend: socket.socket) -> list[splice.SplicedTransport]:
    """A transport on C{engine} for each socket, the two joined as a relay's are."""
    transports = []
    for sock in (client, backend):
        transport = splice.SplicedTransport(engine, sock)
        transport.protocol = Ends()
        transport.protocol.makeConnection(transport)
        transports.append(transport)
    splice.splice(transports[0].protocol, transports[1].protocol, lambda size: None, lambda size: None)
    return transports


class RelayMemoryTests(SynchronousTestCase):
    """A relay's messages, both ways, on the engine's loop in Python."""

    skip = NO_ENGINE

    compiled = False

    def setUp(self) -> None:
        use_loop(self, self.compiled)
        self.engine = Engine(MemoryReactorClock(), pipes.PipePool())
        self.addCleanup(self.engine.close)

    def joined(
        self, backend_pair: tuple[socket.socket, socket.socket] | None = None
    ) -> tuple[socket.socket, socket.socket, list[splice.SplicedTransport], list[socket.socket]]:
        """
        Two joined transports: the client's far end, the backend's far end,
        the transports and their sockets.  The backend's pair of sockets is
        C{backend_pair} if given, else a TCP connection.
        """
        client_near, client_far = nonblocking_pair(self)
        backend, backend_far = backend_pair or nonblocking_pair(self)
        return client_far, backend_far, join(self.engine, client_near, backend), [client_near, backend]

    def test_messagesBothWaysHoldNothing(self) -> None:
        client_far, backend_far, transports, _ = self.joined()
        request, answer = b"q" * 300, b"a" * 700

        def exchange(count: int) -> None:
            for _ in range(count):
                client_far.send(request)
                self.engine.doRead()
                self.assertEqual(backend_far.recv(4096), request)
                backend_far.send(answer)
                self.engine.doRead()
                self.assertEqual(client_far.recv(4096), answer)

        exchange(10)
        references = [sys.getrefcount(t) for t in transports]
        self.assertLess(growth(self, exchange), GROWTH_ALLOWED)
        self.assertEqual([sys.getrefcount(t) for t in transports], references)

    def test_messagesAPeerCannotTakeAtOnceHoldNothing(self) -> None:
        """
        A backend that reads nothing for a while: the client's messages wait
        in the relay (written when the backend reads), and nothing stays
        once they are through.  The backend's end is a Unix stream socket
        with a small buffer: it is full after a few messages, at once (a
        TCP window opens again on its own timers).
        """
        backend, backend_far = socket.socketpair()
        for sock in (backend, backend_far):
            self.addCleanup(sock.close)
            sock.setblocking(False)
        backend.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client_far, backend_far, transports, _ = self.joined((backend, backend_far))
        message = bytes(range(256)) * 4
        waited = []

        def stalled(count: int) -> None:
            for _ in range(count // 20):
                sent = b""
                for _ in range(20):
                    client_far.send(message)
                    sent += message
                    self.engine.doRead()
                waited.append(readable(backend_far) < len(sent))
                received = b""
                while len(received) < len(sent):
                    try:
                        received += backend_far.recv(1 << 16)
                    except BlockingIOError:
                        pass
                    self.engine.doRead()
                self.assertEqual(received, sent)

        references = [sys.getrefcount(t) for t in transports]
        self.assertLess(growth(self, stalled), GROWTH_ALLOWED)
        self.assertEqual([sys.getrefcount(t) for t in transports], references)
        self.assertEqual(set(waited), {True})

    def test_connectionsEndedHoldNothing(self) -> None:
        """Connections joined, a message each way, both ends closed: none of them stays."""

        def connections(count: int) -> None:
            for _ in range(count // 10):
                (client, client_far), (backend, backend_far) = tcp_pair(), tcp_pair()
                for sock in (client, client_far, backend, backend_far):
                    sock.setblocking(False)
                transports = join(self.engine, client, backend)
                client_far.send(b"q")
                self.engine.doRead()
                self.assertEqual(backend_far.recv(10), b"q")
                backend_far.send(b"a")
                backend_far.shutdown(socket.SHUT_WR)
                self.engine.doRead()
                self.assertEqual(client_far.recv(10), b"a")
                client_far.shutdown(socket.SHUT_WR)
                self.engine.doRead()
                self.assertEqual([t.protocol.ended for t in transports], [True, True])
                for transport in transports:
                    transport.loseConnection()
                self.engine.reactor.advance(0)
                self.assertEqual([client.fileno(), backend.fileno()], [-1, -1])
                client_far.close()
                backend_far.close()

        self.assertLess(growth(self, connections), GROWTH_ALLOWED)


class CompiledRelayMemoryTests(RelayMemoryTests):
    """The same, on the engine's compiled loop."""

    compiled = True


class Counted:
    """A session that counts its datagrams."""

    def __init__(self) -> None:
        self.datagrams = 0

    def from_backend(self, data: bytes) -> None:
        self.datagrams += 1

    def refused(self) -> None:
        raise AssertionError("refused")

    def socket_closed(self) -> None:
        raise AssertionError("a plain socket's link does not call this")


class LinkMemoryTests(SynchronousTestCase):
    """A UDP session's datagrams from its backend, on the read round in Python."""

    compiled = False

    def setUp(self) -> None:
        use_loop(self, self.compiled)
        if not hasattr(select, "epoll"):
            raise self.skipTest("UDP links need epoll")

    def test_datagramsHoldNothing(self) -> None:
        backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(backend.close)
        backend.bind(("127.0.0.1", 0))
        poller = LinkPoller(MemoryReactorClock())
        self.addCleanup(poller.close)
        session = Counted()
        link = poller.open(session, *backend.getsockname())
        self.addCleanup(link.close)
        backend.connect(link.getsockname())

        def datagrams(count: int) -> None:
            for _ in range(count // 10):
                for _ in range(10):
                    backend.send(b"answer" * 50)
                poller.doRead()

        datagrams(10)
        references = sys.getrefcount(session)
        start = session.datagrams
        self.assertLess(growth(self, datagrams), GROWTH_ALLOWED)
        self.assertEqual(session.datagrams - start, ROUNDS + ROUNDS // 10)
        self.assertEqual(sys.getrefcount(session), references)


class CompiledLinkMemoryTests(LinkMemoryTests):
    """The same, on the compiled read round."""

    compiled = True
