"""
The TLS torture run: a seeded random mix of TLS connection shapes
(L{tests.support.tls_torture} describes them and what is checked of each)
through a C{protocol = "tls"} server of a real balancer, in front of a
plain TCP backend, on both data paths: TLS terminated on the relay engine
(L{balancer.proxy.tls_path}), and Twisted's TLS transports
(C{[defaults] splice = false}).

The clients are pyOpenSSL over blocking sockets in threads, in a process
of their own (L{tests.support.tls_client_peer}); the balancer and the
backend run here, on the test's reactor, so that afterwards the run can
check the server's counters, the relays, the engine and this process's
file descriptors.

Each run draws a new seed, printed in the test's output and in any
failure; C{TLS_TORTURE_SEED=N python -m twisted.trial tests.test_tls_torture}
replays it.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import struct
import sys
from typing import Any, Iterator

from cryptography import x509
from OpenSSL import SSL
from twisted.internet import reactor, ssl
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from balancer.config.schema import BackendsTlsConfig, TlsConfig
from balancer.proxy.engine import tls_socket
from balancer.proxy.tls_path import TlsEnginePath
from tests.support import skips, tls_torture
from tests.support.balancers import start_balancer
from tests.support.certs import Authority, make_certificates
from tests.support.torture import ROOT, open_descriptors
from tests.support.waiting import until

#: Connections per path, and how many at once.
CONNECTIONS = int(os.environ.get("TLS_TORTURE_CONNECTIONS", "350"))
CONCURRENCY = int(os.environ.get("TLS_TORTURE_CONCURRENCY", "25"))
#: Seconds a client waits on its socket before it counts as hung.
CLIENT_TIMEOUT = 20
#: Bytes a backend answers and closes at once, in L{EngineTlsClosingTests}.
ANSWER = 1_000_000



def tls_balancer(
    test: TestCase, splice: bool = True, backlog: int = 50
) -> tuple[Any, tls_torture.BackendFactory, Any, str]:
    """
    A started balancer terminating TLS (on the engine with C{splice}, where
    there is one) in front of a torture backend in this process; returns
    the server, the backend, the certificates and the scratch directory.
    """
    directory = os.path.abspath(test.mktemp())
    os.makedirs(directory)
    certs = make_certificates(directory)
    backend = tls_torture.BackendFactory()
    listening = reactor.listenTCP(0, backend, backlog=backlog, interface="127.0.0.1")
    test.addCleanup(listening.stopListening)
    tls = TlsConfig(cert_path=certs.server.cert_path, key_path=certs.server.key_path)
    server = start_balancer(test, (f"127.0.0.1:{listening.getHost().port}",), splice=splice, protocol="tls", tls=tls)
    return server, backend, certs, directory

class _TlsTortureTests:
    """The TLS torture run on one data path (a subclass says which, by C{splice})."""

    splice: bool
    timeout = 240

    addCleanup: Any
    assertIsInstance: Any
    assertNotIsInstance: Any
    fail: Any
    mktemp: Any

    @inlineCallbacks
    def test_mixOfShapes(self) -> Iterator[Deferred[Any]]:
        """
        C{CONNECTIONS} TLS connections of every shape, C{CONCURRENCY} at a
        time: each gets exactly its bytes and its ends at both sides;
        afterwards no relay is left, nothing is counted active, the
        handshakes that failed are exactly the garbage ones, the engine
        watches only its listener and no new descriptor is left open.
        """
        seed = int(os.environ.get("TLS_TORTURE_SEED") or random.randrange(1 << 32))
        print(f"TLS torture seed {seed} (replay: TLS_TORTURE_SEED={seed})")
        server, backend, certs, directory = tls_balancer(self, self.splice, backlog=256)  # type: ignore[arg-type]
        if self.splice:
            self.assertIsInstance(server.path, TlsEnginePath)
        else:
            self.assertNotIsInstance(server.path, TlsEnginePath)
        connections = tls_torture.plan(seed, CONNECTIONS, engine=self.splice)
        plan_path = os.path.join(directory, "plan.json")
        with open(plan_path, "w") as f:
            json.dump(
                {
                    "port": server.port,
                    "ca_path": certs.ca_path,
                    "concurrency": CONCURRENCY,
                    "timeout": CLIENT_TIMEOUT,
                    "connections": [conn.as_json() for conn in connections],
                },
                f,
            )
        yield _turn()  # the reactor opens a descriptor of its own in its first turn
        engine = getattr(server.path, "engine", None)
        pipes_free = engine.pipes.free if engine is not None else 0
        descriptors = open_descriptors()

        peer = tls_torture.PeerProcess()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
        process = reactor.spawnProcess(
            peer, sys.executable, [sys.executable, "-m", "tests.support.tls_client_peer", plan_path], env=env, path=ROOT
        )

        def stop_peer() -> None:
            if not peer.ended.called:
                os.kill(process.pid, signal.SIGKILL)

        self.addCleanup(stop_peer)
        started = reactor.seconds()
        yield peer.ended
        took = reactor.seconds() - started
        problems: list[str] = []
        if not peer.finished:
            problems.append(f"the client process did not finish: {peer.errors.decode(errors='replace')[-2000:]}")
        reaching = [conn for conn in connections if conn.shape not in tls_torture.NO_BACKEND]

        def backends_ended() -> bool:
            return all(backend.seen.get(c.id) is not None and backend.seen[c.id].end for c in reaching)

        try:
            yield until(backends_ended, timeout=10, what="the backend's connections to end")
        except Exception as e:
            problems.append(str(e))
        try:
            yield until(lambda: not server.relays, timeout=10, what="the relays to end")
        except Exception as e:
            problems.append(str(e))
        for conn in connections:
            for problem in tls_torture.check(conn, peer.outcomes.get(conn.id), backend.seen.get(conn.id)):
                problems.append(f"conn {conn.id} ({conn.shape}, TLS {conn.tls}, size {conn.size}, extra {conn.extra}): {problem}")
        if backend.connections != len(reaching) or backend.anonymous:
            problems.append(f"the backend had {backend.connections} connections for {len(reaching)} clients ({len(backend.anonymous)} without a header: {backend.anonymous[:5]})")
        stats = server.stats()
        active = (stats["active_connections"], stats["backends"][0]["stats"]["active_connections"])
        if active != (0, 0):
            problems.append(f"active connections (server, backend) {active}, expected (0, 0)")
        garbage = sum(1 for conn in connections if conn.shape == "garbage")
        if server.counters.tls_failures != garbage:
            problems.append(f"tls_failures {server.counters.tls_failures}, for {garbage} garbage clients")
        if server.counters.total_connections != len(connections):
            problems.append(f"total_connections {server.counters.total_connections}, for {len(connections)} clients")
        if engine is not None:
            if engine.pipes.lent:
                problems.append(f"{engine.pipes.lent} pipes not given back to the pool")
            try:
                yield until(lambda: engine.watched == 1, timeout=5, what="the engine to watch only the listener")
            except Exception:
                problems.append(f"the engine watches {engine.watched} sockets, not only the listener")
        now_open = open_descriptors()
        new = {fd: what for fd, what in now_open.items() if descriptors.get(fd) != what}
        pipes = 2 * ((engine.pipes.free if engine is not None else 0) - pipes_free)
        if len(new) != pipes:
            problems.append(f"{len(new)} new descriptors open ({pipes} expected, for the pipe pool): {new}")
        shapes: dict[str, int] = {}
        for conn in connections:
            shapes[conn.shape] = shapes.get(conn.shape, 0) + 1
        ends: dict[str, int] = {}
        for outcome in peer.outcomes.values():
            ends[outcome["end"]] = ends.get(outcome["end"], 0) + 1
        received = sum(outcome["received"] for outcome in peer.outcomes.values()) + sum(s.received for s in backend.seen.values())
        summary = (
            f"seed {seed}: {len(connections)} connections ({', '.join(f'{k} {v}' for k, v in sorted(shapes.items()))}) in {took:.1f} s, "
            f"{received / 1e6:.0f} MB relayed, the clients' ends {ends}; {len(problems)} problems"
        )
        print(summary)
        if problems:
            self.fail(summary + "\n" + "\n".join(problems[:60]))


def _turn() -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d


class EngineTlsTortureTests(_TlsTortureTests, TestCase):
    """TLS terminated on the relay engine."""

    splice = True
    skip = skips.NO_ENGINE


class TwistedTlsTortureTests(_TlsTortureTests, TestCase):
    """Twisted's TLS transports (C{[defaults] splice = false})."""

    splice = False


class BlockingTlsClient:
    """A TLS client (pyOpenSSL on a blocking socket, small receive buffer) driven from threads, step by step."""

    def __init__(self, ca_path: str, port: int, version: int) -> None:
        self.ca_path = ca_path
        self.port = port
        self.version = version

    def connect(self, header: bytes) -> None:
        """Connect, handshake and send C{header}; read nothing."""
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(self.version)
        context.set_max_proto_version(self.version)
        context.load_verify_locations(self.ca_path)
        context.set_verify(SSL.VERIFY_PEER)
        self.socket = socket.socket()
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        timeout = struct.pack("ll", CLIENT_TIMEOUT, 0)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeout)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        self.socket.connect(("127.0.0.1", self.port))
        self.tls = SSL.Connection(context, self.socket)
        self.tls.set_connect_state()
        self.tls.do_handshake()
        if header:
            self.tls.sendall(header)

    def send(self, data: bytes) -> None:
        """Send C{data}."""
        self.tls.sendall(data)

    def read_then_send(self, data: bytes) -> tuple[bytes, str]:
        """Read to the end of the input, then send C{data} and C{close_notify}: the bytes read, and how they ended."""
        received, end = self.read_to_the_end()
        self.tls.sendall(data)
        self.tls.shutdown()
        self.socket.close()
        return received, end

    def read_then_send_only(self, data: bytes) -> tuple[bytes, str]:
        """Read to the end of the input, then send C{data} and neither end nor close: the bytes read, and how they ended."""
        received, end = self.read_to_the_end()
        self.tls.sendall(data)
        return received, end

    def end_and_read(self, close_notify: bool) -> tuple[bytes, str]:
        """End the input (C{close_notify}, else a TCP half-close), then read to the end: the bytes, and how they ended."""
        if close_notify:
            self.tls.shutdown()
        else:
            self.socket.shutdown(socket.SHUT_WR)
        received, end = self.read_to_the_end()
        self.socket.close()
        return received, end

    def read_to_the_end(self) -> tuple[bytes, str]:
        """Read until the input ends: the bytes, and how they ended."""
        received = []
        try:
            while True:
                received.append(self.tls.recv(65536))
        except SSL.ZeroReturnError:
            end = "close_notify"
        except SSL.SysCallError as e:
            end = "eof" if e.args[0] == -1 else "reset"
        except SSL.WantReadError:
            end = "timeout"
        except SSL.Error as e:
            end = repr(e)
        return b"".join(received), end


class EngineTlsClosingTests(TestCase):
    """
    A TLS client whose backend answered and closed, and which has read
    none of the answer when its own end (its C{close_notify}, or a TCP
    half-close without one) reaches the balancer, which is closing it
    (its C{close_notify} sent, waiting for the client's end): the client
    still gets every byte and then the balancer's C{close_notify}.
    """

    timeout = 60
    skip = skips.NO_ENGINE

    @inlineCallbacks
    def ended_while_closing(self, close_notify: bool, version: int) -> Iterator[Deferred[Any]]:
        server, backend, certs, _ = tls_balancer(self)
        self.assertIsInstance(server.path, TlsEnginePath)
        size = ANSWER
        client = BlockingTlsClient(certs.ca_path, server.port, version)
        yield deferToThread(client.connect, f"answer 1 {size} 0\n".encode())
        # The backend sent it all and closed, and the relay read its end: the client's transport is closing.
        yield until(lambda: 1 in backend.seen and backend.seen[1].end == "clean", what="the backend's close")
        yield until(
            lambda: all(relay.backend_side is not None and relay.backend_side.read_closed for relay in server.relays.values()),
            what="the relay to read the backend's end",
        )
        data, end = yield deferToThread(client.end_and_read, close_notify)
        self.assertEqual((len(data), tls_torture.sha(data), end), (size, tls_torture.sha(tls_torture.answer_bytes(1, size)), "close_notify"))
        yield until(lambda: not server.relays, what="the relay to end")

    def test_closeNotifyWhileClosingTls13(self) -> Deferred[Any]:
        return self.ended_while_closing(True, SSL.TLS1_3_VERSION)

    def test_closeNotifyWhileClosingTls12(self) -> Deferred[Any]:
        return self.ended_while_closing(True, SSL.TLS1_2_VERSION)

    def test_halfCloseWhileClosing(self) -> Deferred[Any]:
        return self.ended_while_closing(False, SSL.TLS1_3_VERSION)


class EngineTlsHalfCloseTests(TestCase):
    """
    On the relay engine a client's end of input, its C{close_notify} or the
    end of its TCP stream without one, is passed to the backend as a
    half-close, and the client still gets the whole answer, then the
    balancer's C{close_notify}.

    Before the fix the end of the TCP stream without C{close_notify} put
    the client's OpenSSL connection in error (an unexpected EOF is fatal
    there), so the answer's first write failed and both sides were reset
    (found by the C{late_fin} shape of L{EngineTlsTortureTests}, seed
    3751143232 with 1500 connections, 60 at once).
    """

    timeout = 60
    skip = skips.NO_ENGINE

    @inlineCallbacks
    def answer_after_end(self, close_notify: bool, version: int) -> Iterator[Deferred[Any]]:
        server, backend, certs, _ = tls_balancer(self)
        self.assertIsInstance(server.path, TlsEnginePath)
        conn = tls_torture.Connection(1, "half_close", 50_000, ANSWER)
        client = BlockingTlsClient(certs.ca_path, server.port, version)
        yield deferToThread(client.connect, f"half_close 1 {conn.size} {conn.extra}\n".encode())
        yield deferToThread(client.send, tls_torture.client_bytes(1, conn.size))
        data, end = yield deferToThread(client.end_and_read, close_notify)
        expected = tls_torture.expected_answer(conn)
        self.assertEqual((len(data), tls_torture.sha(data), end), (len(expected), tls_torture.sha(expected), "close_notify"))
        yield until(lambda: not server.relays, what="the relay to end")
        seen = backend.seen[1]
        self.assertEqual((seen.received, seen.input_ended, seen.end), (conn.size, True, "clean"))
        self.assertEqual(server.counters.tls_failures, 0)

    def test_closeNotifyTls13(self) -> Deferred[Any]:
        return self.answer_after_end(True, SSL.TLS1_3_VERSION)

    def test_closeNotifyTls12(self) -> Deferred[Any]:
        return self.answer_after_end(True, SSL.TLS1_2_VERSION)

    def test_tcpEndTls13(self) -> Deferred[Any]:
        return self.answer_after_end(False, SSL.TLS1_3_VERSION)

    def test_tcpEndTls12(self) -> Deferred[Any]:
        return self.answer_after_end(False, SSL.TLS1_2_VERSION)


class _FullForTheGoodbye:
    """
    A client's OpenSSL connection whose first C{shutdown} finds the socket
    full (C{WantWriteError}, as OpenSSL says when the socket takes nothing
    more); everything else is the connection's own.
    """

    def __init__(self, tls: SSL.Connection) -> None:
        self.tls = tls
        self.refused = False

    def shutdown(self) -> bool:
        if not self.refused:
            self.refused = True
            raise SSL.WantWriteError()
        return self.tls.shutdown()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tls, name)


class EngineTlsGoodbyeTests(TestCase):
    """
    The balancer's C{close_notify} waits for room in a full socket rather
    than being dropped: before the fix a client closed while its socket was
    full got the end of the TCP stream without C{close_notify}, which a TLS
    client takes for a truncation attack.
    """

    timeout = 60
    skip = skips.NO_ENGINE

    @inlineCallbacks
    def test_closeNotifyWaitsForRoom(self) -> Iterator[Deferred[Any]]:
        server, backend, certs, _ = tls_balancer(self)
        self.assertIsInstance(server.path, TlsEnginePath)
        client = BlockingTlsClient(certs.ca_path, server.port, SSL.TLS1_3_VERSION)
        yield deferToThread(client.connect, b"")
        yield until(lambda: len(server.relays) == 1 and next(iter(server.relays.values())).backend_side is not None)
        transport = next(iter(server.relays.values())).client.transport
        full = _FullForTheGoodbye(transport.getHandle())
        transport._tls = full
        yield deferToThread(client.send, b"answer 1 1000 0\n")
        data, end = yield deferToThread(client.end_and_read, True)
        self.assertEqual((data, end, full.refused), (tls_torture.answer_bytes(1, 1000), "close_notify", True))


class TlsBackendHalfCloseTests(TestCase):
    """
    A backend that shuts its write side and reads on: its TLS client gets
    the answer and C{close_notify} (TLS has no half-close here), and the
    bytes the client sends after it still reach the backend, then its end.
    Before the fix the relay engine discarded them while waiting for the
    client's end, and the backend saw a clean end without them (the
    torture's C{backend_half} shape failed on the engine, every run).
    """

    timeout = 60
    splice = True
    skip = skips.NO_ENGINE

    @inlineCallbacks
    def test_bytesAfterTheBackendsEndReachIt(self) -> Iterator[Deferred[Any]]:
        server, backend, certs, _ = tls_balancer(self, self.splice)
        conn = tls_torture.Connection(1, "backend_half", 1000, 300_000)
        client = BlockingTlsClient(certs.ca_path, server.port, SSL.TLS1_3_VERSION)
        yield deferToThread(client.connect, f"backend_half 1 {conn.size} {conn.extra}\n".encode())
        data, end = yield deferToThread(client.read_then_send, tls_torture.client_bytes(1, conn.extra))
        self.assertEqual((data, end), (tls_torture.answer_bytes(1, conn.size), "close_notify"))
        yield until(lambda: 1 in backend.seen and backend.seen[1].end != "", what="the backend's end")
        seen = backend.seen[1]
        self.assertEqual(
            (seen.received, seen.digest.hexdigest(), seen.input_ended, seen.end),
            (conn.extra, tls_torture.sha(tls_torture.client_bytes(1, conn.extra)), True, "clean"),
        )


class EngineTlsCloseWaitTests(TestCase):
    """
    A TLS client that does not end within L{CLOSE_WAIT} of the close its
    backend's half-close brought is closed, and its backend, still reading
    the client's bytes, is reset: it must not take a cut stream for whole
    (before the fix it got a clean end).
    """

    timeout = 60
    skip = skips.NO_ENGINE

    @inlineCallbacks
    def test_backendResetWhenTheClientNeverEnds(self) -> Iterator[Deferred[Any]]:
        self.patch(tls_socket, "CLOSE_WAIT", 0.2)
        server, backend, certs, _ = tls_balancer(self)
        client = BlockingTlsClient(certs.ca_path, server.port, SSL.TLS1_3_VERSION)
        self.addCleanup(lambda: client.socket.close())
        yield deferToThread(client.connect, b"backend_half 1 10 0\n")
        data, end = yield deferToThread(client.read_then_send_only, b"more")
        self.assertEqual((data, end), (tls_torture.answer_bytes(1, 10), "close_notify"))
        yield until(lambda: 1 in backend.seen and backend.seen[1].end != "", what="the backend's end")
        self.assertEqual((backend.seen[1].received, backend.seen[1].end), (4, "reset"))


class TwistedTlsBackendHalfCloseTests(TlsBackendHalfCloseTests):
    """The same on Twisted's transports (C{[defaults] splice = false}), where it always held."""

    splice = False
    skip = None


def handshake_then_send_and_end(ca_path: str, port: int, data: bytes) -> tuple[bytes, str]:
    """
    A TLS 1.3 client that sends its C{Finished}, C{data} and C{close_notify}
    in one write (a memory BIO holds them until then), then reads to the end
    of its input: the bytes read, and how they ended.
    """
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(SSL.TLS1_3_VERSION)
    context.load_verify_locations(ca_path)
    context.set_verify(SSL.VERIFY_PEER)
    tls = SSL.Connection(context, None)
    tls.set_connect_state()
    with socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT) as sock:
        while True:
            try:
                tls.do_handshake()
                break
            except SSL.WantReadError:
                sock.sendall(tls.bio_read(65536))
                received = sock.recv(65536)
                if not received:
                    return b"", "eof during the handshake"
                tls.bio_write(received)
        tls.sendall(data)
        try:
            tls.shutdown()
        except SSL.WantReadError:
            pass
        sock.sendall(tls.bio_read(1 << 20))
        answer = []
        while True:
            try:
                received = sock.recv(65536)
            except ConnectionResetError:
                return b"".join(answer), "reset"
            if not received:
                return b"".join(answer), "eof"
            tls.bio_write(received)
            try:
                while True:
                    answer.append(tls.recv(65536))
            except SSL.WantReadError:
                pass
            except SSL.ZeroReturnError:
                return b"".join(answer), "close_notify"


class TwistedTlsCloseNotifyBeforeConnectTests(TestCase):
    """
    On Twisted's transports a client's C{close_notify} ends its connection;
    one that comes with the client's bytes before the backend is connected
    (here: in the same write as the handshake's last message, so the
    balancer reads them in one go) must not lose those bytes: the backend
    gets them all, then the end of its input.  Before the fix the relay
    abandoned the connect and the backend never saw the client.
    """

    timeout = 60

    @inlineCallbacks
    def test_bytesReachTheBackend(self) -> Iterator[Deferred[Any]]:
        server, backend, certs, _ = tls_balancer(self, splice=False)
        self.assertNotIsInstance(server.path, TlsEnginePath)
        body = tls_torture.client_bytes(1, 50_000)
        _, end = yield deferToThread(
            handshake_then_send_and_end, certs.ca_path, server.port, f"echo 1 {len(body)} 0\n".encode() + body
        )
        self.assertIn(end, ("close_notify", "eof"))
        yield until(lambda: 1 in backend.seen and backend.seen[1].end != "", what="the backend's end")
        seen = backend.seen[1]
        self.assertEqual(
            (seen.received, seen.digest.hexdigest(), seen.input_ended, seen.end),
            (len(body), tls_torture.sha(body), True, "clean"),
        )
        yield until(lambda: not server.relays, what="the relay to end")

    @inlineCallbacks
    def test_bytesReachATlsBackend(self) -> Iterator[Deferred[Any]]:
        """
        The same with TLS to the backend (C{[backends_tls]}): the bytes reach
        it over TLS, then its C{close_notify} (no half-close there either).
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        certs = make_certificates(directory)
        backend = tls_torture.BackendFactory()
        with open(certs.server.cert_path, "rb") as cert, open(certs.server.key_path, "rb") as key:
            options = ssl.PrivateCertificate.loadPEM(cert.read() + key.read()).options()
        listening = reactor.listenSSL(0, backend, options, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        server = start_balancer(
            self,
            (f"127.0.0.1:{listening.getHost().port}",),
            protocol="tls",
            tls=TlsConfig(cert_path=certs.server.cert_path, key_path=certs.server.key_path),
            backends_tls=BackendsTlsConfig(root_ca_cert_path=certs.ca_path),
        )
        body = tls_torture.client_bytes(1, 50_000)
        yield deferToThread(
            handshake_then_send_and_end, certs.ca_path, server.port, f"echo 1 {len(body)} 0\n".encode() + body
        )
        yield until(lambda: 1 in backend.seen and backend.seen[1].end != "", what="the backend's end")
        seen = backend.seen[1]
        self.assertEqual((seen.received, seen.digest.hexdigest(), seen.end), (len(body), tls_torture.sha(body), "clean"))
        yield until(lambda: not server.relays, what="the relay to end")


class EngineTlsReloadTests(TestCase):
    """
    Reading a TLS server's certificate files again (C{reload_files}) keeps
    it on the relay engine, serving the new certificate to new clients on
    the same socket, and a client accepted before goes on.  Before the fix
    the reload moved the listener to Twisted's transports for good, and a
    relay accepted on the engine but joined after it was joined on
    Twisted's path with the engine's transports and lost (the secure loop
    of C{test_reload_integration}'s
    C{test_rebindRefusesNoClientAndTheSameAddressKeepsItsSocket} failed about
    half the time since 58b4eb0).
    """

    timeout = 60
    skip = skips.NO_ENGINE

    @inlineCallbacks
    def test_filesReadAgainOnTheEngine(self) -> Iterator[Deferred[Any]]:
        directory = os.path.abspath(self.mktemp())
        renewed = os.path.join(directory, "renewed")
        os.makedirs(renewed)
        authority = Authority()
        ca_path = authority.write(directory)
        first = authority.issue(directory, "server")
        second = authority.issue(renewed, "server")
        backend = tls_torture.BackendFactory()
        listening = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        tls = TlsConfig(cert_path=first.cert_path, key_path=first.key_path)
        server = start_balancer(self, (f"127.0.0.1:{listening.getHost().port}",), protocol="tls", tls=tls)
        self.assertIsInstance(server.path, TlsEnginePath)
        before = BlockingTlsClient(ca_path, server.port, SSL.TLS1_3_VERSION)
        yield deferToThread(before.connect, b"echo 1 5 0\n")
        for source, target in ((second.cert_path, first.cert_path), (second.key_path, first.key_path)):
            with open(source, "rb") as f:
                data = f.read()
            with open(target, "wb") as f:
                f.write(data)
        server.reload_files()
        self.assertIsInstance(server.path, TlsEnginePath)
        after = BlockingTlsClient(ca_path, server.port, SSL.TLS1_3_VERSION)
        yield deferToThread(after.connect, b"echo 2 5 0\n")
        certificates = [client.tls.get_peer_certificate().to_cryptography() for client in (before, after)]
        with open(first.cert_path, "rb") as f:
            renewed_pem = f.read()
        self.assertEqual(
            [c.serial_number for c in certificates],
            [certificates[0].serial_number, x509.load_pem_x509_certificate(renewed_pem).serial_number],
        )
        self.assertNotEqual(certificates[0].serial_number, certificates[1].serial_number)
        for conn_id, client in ((1, before), (2, after)):
            yield deferToThread(client.send, tls_torture.client_bytes(conn_id, 5))
            data, end = yield deferToThread(client.end_and_read, True)
            self.assertEqual((data, end), (tls_torture.client_bytes(conn_id, 5), "close_notify"))
        yield until(lambda: not server.relays, what="the relays to end")


class TwistedTlsTcpEndTests(TestCase):
    """
    On Twisted's TLS transports (C{[defaults] splice = false}) the end of a
    client's TCP stream without C{close_notify} is the end of its input,
    as on the engine: what it sent reaches the backend whole, then the end
    of its input.  Before the fix OpenSSL held that end for an error, the
    relay took it for a reset and reset the backend, which lost what was
    still on its way (found from outside: 4 MB uploads lost 3 times in 3).
    """

    timeout = 60

    @inlineCallbacks
    def upload_then_tcp_end(self, version: int) -> Iterator[Deferred[Any]]:
        server, backend, certs, _ = tls_balancer(self, splice=False)
        conn = tls_torture.Connection(1, "half_close", 4_000_000, ANSWER)
        client = BlockingTlsClient(certs.ca_path, server.port, version)
        yield deferToThread(client.connect, f"half_close 1 {conn.size} {conn.extra}\n".encode())
        yield deferToThread(client.send, tls_torture.client_bytes(1, conn.size))
        yield deferToThread(client.end_and_read, False)
        yield until(lambda: not server.relays and backend.seen[1].end != "", what="the relay and the backend to end")
        seen = backend.seen[1]
        self.assertEqual((seen.received, seen.input_ended), (conn.size, True))
        self.assertEqual(server.counters.tls_failures, 0)

    def test_tcpEndTls13(self) -> Deferred[Any]:
        return self.upload_then_tcp_end(SSL.TLS1_3_VERSION)

    def test_tcpEndTls12(self) -> Deferred[Any]:
        return self.upload_then_tcp_end(SSL.TLS1_2_VERSION)
