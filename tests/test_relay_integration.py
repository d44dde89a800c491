"""
The TCP data plane on real sockets (127.0.0.1, port 0): the balancer runs in
this process on the global reactor, between real clients and real backends;
graceful stop on SIGTERM runs it as a twistd process.
"""

from __future__ import annotations

import collections
import hashlib
import os
import signal
import socket
from typing import Any

from twisted.internet import error, reactor
from twisted.internet.error import ConnectionLost
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from balancer.config.schema import Config, DefaultsConfig
from balancer.root_service import BalancerService
from balancer.server_service import ServerService
from tests.support.balancers import start_balancer
from tests.support.clients import Named, exchange, port_number, serve
from tests.support.paths import ROOT
from tests.support.peers import Peer, open_client
from tests.support.ports import refusing_port
from tests.support.processes import spawn_twistd
from tests.support.relays import server_config
from tests.support.streams import CHUNK, Answer, Greeter, PacedEcho, StalledSink, Streamer, buffered, pattern
from tests.support.waiting import until


class RelayIntegrationTests(TestCase):
    """Relaying, balancing, limits and statistics through real sockets."""

    timeout = 60

    def listen(self, protocol: type[Protocol], **attributes: Any) -> Deferred[int]:
        """A backend on 127.0.0.1 port 0; fires with its port (closed after the test)."""

        def started(port: Any) -> int:
            self.ports[port_number(port)] = port
            return port_number(port)

        return serve(self, protocol, **attributes).addCallback(started)

    def named(self, *names: bytes) -> Deferred[list[int]]:
        """Backends answering with their names; fires with their ports, in order."""
        return gatherResults([self.listen(Named, name=name) for name in names])

    def setUp(self) -> None:
        self.ports: dict[int, Any] = {}

    def balancer(self, backends: list[Any], **options: Any) -> ServerService:
        """
        A started balancer with one server on 127.0.0.1 port 0 in front of
        C{backends}: ports on 127.0.0.1, or whole C{static_list} lines.
        """
        lines = tuple(f"127.0.0.1:{b}" if isinstance(b, int) else b for b in backends)
        return start_balancer(self, lines, **options)

    @inlineCallbacks
    def test_50MBThroughEchoComeBackIdentical(self) -> None:
        server = self.balancer([(yield self.listen(PacedEcho))])
        client = Streamer(chunks=800)
        yield open_client(server.port, client)
        yield client.closed
        self.assertEqual(client.received_count, 800 * CHUNK)
        self.assertEqual(client.received.hexdigest(), client.sent.hexdigest())
        yield until(lambda: not server.relays)
        self.assertEqual((server.counters.traffic.tx, server.counters.traffic.rx), (800 * CHUNK, 800 * CHUNK))

    @inlineCallbacks
    def test_clientHalfClosesThenGetsTheWholeAnswer(self) -> None:
        body = b"".join(pattern(i) for i in range(32))
        server = self.balancer([(yield self.listen(Answer, body=body))])
        request = b"".join(pattern(i) for i in range(100, 104))
        answer = yield exchange(server.port, request, half_close=True)
        self.assertEqual(answer, hashlib.sha256(request).hexdigest().encode() + body)

    @inlineCallbacks
    def test_backendHalfClosesFirstAndStillGetsTheRequest(self) -> None:
        banner = b"".join(pattern(i) for i in range(16))
        got: Deferred[bytes] = Deferred()
        server = self.balancer([(yield self.listen(Greeter, banner=banner, got=got))])
        client = Peer()
        yield open_client(server.port, client)
        received = yield client.ended
        self.assertEqual(received, banner)
        request = b"".join(pattern(i) for i in range(50, 58))
        client.transport.write(request)
        client.transport.loseWriteConnection()
        self.assertEqual((yield got), request)
        yield client.closed

    @inlineCallbacks
    def stalled_relay(self) -> Any:
        """
        A client streaming as fast as it can through the balancer to a backend
        that does not read; fires with (server, relay, client, sink, sink done)
        once the relay's transport to the backend has paused the client's.

        The kernel buffers towards the backend are small and fixed, so that the
        stall is final, not undone a moment later by the kernel growing a buffer.
        """
        done: Deferred[tuple[int, str]] = Deferred()
        sinks: list[StalledSink] = []
        sink_port = yield self.listen(StalledSink, sinks=sinks, done=done)
        self.ports[sink_port].socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # These tests pin the normal path's Twisted buffers; tests.test_splice covers both paths.
        server = self.balancer([sink_port], splice=False)
        client = Streamer(chunks=1 << 20)
        yield open_client(server.port, client)
        yield until(lambda: bool(server.relays and next(iter(server.relays.values())).backend_side))
        relay = next(iter(server.relays.values()))
        relay.backend_side.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return server, relay, client, sinks[0], done

    @inlineCallbacks
    def test_stalledBackendBoundsBalancerMemory(self) -> None:
        """
        The backend stops reading; the client writes as fast as it can.  The
        balancer's transport to the backend pauses the client's transport and
        never holds more than its buffer size plus one read.
        """
        server, relay, client, sink, done = yield self.stalled_relay()
        to_backend, from_client = relay.backend_side.transport, relay.client.transport
        bound = to_backend.bufferSize + from_client.bufferSize

        def sample() -> None:
            self.assertLessEqual(buffered(to_backend), bound)

        def stalled() -> bool:
            return bool(
                to_backend.producerPaused
                and from_client not in reactor.getReaders()
                and buffered(client.transport) > 0
                and client.index < client.chunks
            )

        yield until(stalled, each=sample)
        for _ in range(20):
            yield deferLater(reactor, 0, sample)
            self.assertTrue(stalled())
        self.assertLess(relay.tx, client.index * CHUNK)
        client.chunks = client.index
        sink.transport.resumeProducing()
        count, digest = yield done
        self.assertEqual((count, digest), (client.chunks * CHUNK, client.sent.hexdigest()))

    @inlineCallbacks
    def test_clientResetWhileBackendStalledResetsTheBackend(self) -> None:
        """
        The client vanishes (its socket reset) while the stalled backend's
        transport holds the client's transport, paused, as its producer and
        bytes for the backend.  The backend is reset at once, without
        waiting for it to read (the bytes held are dropped: a transfer cut
        short must not look complete), and the relay ends.
        """
        server, relay, client, sink, done = yield self.stalled_relay()
        to_backend = relay.backend_side.transport
        yield until(lambda: to_backend.producerPaused and relay.client.transport not in reactor.getReaders())
        client.transport.abortConnection()
        yield client.closed
        sink.transport.write(b"?")  # relaying this, the balancer finds the client reset
        yield until(lambda: relay.client.lost)
        sink.transport.resumeProducing()  # a paused transport would not see the reset
        count, digest = yield done
        self.assertLess(count, relay.tx)
        self.assertIsInstance(sink.reason.value, ConnectionLost)
        yield until(lambda: not server.relays)
        self.assertEqual([b.counters.active_connections for b in server.pool], [0])

    test_clientResetWhileBackendStalledResetsTheBackend.timeout = 20  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_deadBackendAmongLiveOnesEveryClientServed(self) -> None:
        """The dead backend is preferred (priority 1), so every client is refused by it once, then served."""
        live = yield self.named(b"a", b"b")
        dead = refusing_port(self)
        server = self.balancer(
            [f"127.0.0.1:{dead} priority=1", *(f"127.0.0.1:{p} priority=2" for p in live)], balance="weight"
        )
        answers = yield gatherResults([exchange(server.port, half_close=False) for _ in range(30)])
        served = collections.Counter(answers)
        self.assertEqual(sum(served.values()), 30)
        self.assertEqual(set(served), {b"a", b"b"})
        backends = {b.port: b.counters for b in server.pool}
        self.assertEqual((backends[dead].refused_connections, backends[dead].total_connections), (30, 0))
        self.assertTrue(server.pool.get(f"127.0.0.1:{dead}").live)
        self.assertEqual([backends[p].refused_connections for p in live], [0, 0])
        self.assertEqual([backends[p].total_connections for p in live], [served[b"a"], served[b"b"]])
        self.assertEqual(server.counters.no_backend, 0)
        yield until(lambda: not server.relays)
        self.assertEqual([b.counters.active_connections for b in server.pool], [0, 0, 0])

    @inlineCallbacks
    def test_deadBackendInRoundrobinEveryClientServed(self) -> None:
        live = yield self.named(b"a", b"b")
        server = self.balancer([live[0], refusing_port(self), live[1]], balance="roundrobin")
        answers = yield gatherResults([exchange(server.port, half_close=False) for _ in range(30)])
        self.assertEqual(sorted(set(answers)), [b"a", b"b"])
        self.assertEqual(len(answers), 30)
        refused = sum(b.counters.refused_connections for b in server.pool)
        self.assertGreaterEqual(refused, 10)
        self.assertEqual(server.counters.no_backend, 0)

    @inlineCallbacks
    def test_allBackendsDeadClientClosed(self) -> None:
        dead = [refusing_port(self), refusing_port(self)]
        server = self.balancer(dead)
        answer = yield exchange(server.port, b"hello", half_close=False)
        self.assertEqual(answer, b"")
        self.assertEqual([b.counters.refused_connections for b in server.pool], [1, 1])
        self.assertEqual(server.counters.no_backend, 1)

    @inlineCallbacks
    def test_roundrobinExactlyEqualOver300(self) -> None:
        ports = yield self.named(b"a", b"b", b"c")
        server = self.balancer(ports, balance="roundrobin")
        answers: list[bytes] = []
        for _ in range(6):
            answers += yield gatherResults([exchange(server.port, half_close=False) for _ in range(50)])
        self.assertEqual(collections.Counter(answers), {b"a": 100, b"b": 100, b"c": 100})
        self.assertEqual([b.counters.total_connections for b in server.pool], [100, 100, 100])

    @inlineCallbacks
    def test_iphashSameClientAddressSameBackend(self) -> None:
        ports = yield self.named(b"a", b"b", b"c")
        server = self.balancer(ports, balance="iphash")
        sources = [f"127.0.0.{i}" for i in range(2, 22)]
        seen: dict[str, set[bytes]] = collections.defaultdict(set)
        for _ in range(3):
            answers = yield gatherResults([exchange(server.port, half_close=False, bind_host=s) for s in sources])
            for source, answer in zip(sources, answers):
                seen[source].add(answer)
        self.assertEqual({len(names) for names in seen.values()}, {1})
        self.assertGreater(len(set.union(*seen.values())), 1)

    @inlineCallbacks
    def test_serverLimitClosesTheNextClientAtOnce(self) -> None:
        server = self.balancer([(yield self.listen(PacedEcho))], max_connections=2)
        peers = [Peer(), Peer()]
        for peer in peers:
            yield open_client(server.port, peer)
            peer.transport.write(b"ping")
            self.assertEqual((yield peer.expect(4)), b"ping")
        answer = yield exchange(server.port, b"over the limit", half_close=False)
        self.assertEqual(answer, b"")
        self.assertEqual(server.counters.over_limit, 1)
        self.assertEqual(server.counters.active_connections, 2)
        peers[0].transport.loseConnection()
        yield until(lambda: server.counters.active_connections == 1)
        self.assertEqual((yield exchange(server.port, b"room again")), b"room again")

    @inlineCallbacks
    def test_backendLimitSkipsTheFullBackend(self) -> None:
        first, second = yield gatherResults([self.listen(PacedEcho), self.listen(Named, name=b"second")])
        server = self.balancer(
            [f"127.0.0.1:{first} priority=1 max_connections=1", f"127.0.0.1:{second} priority=2"], balance="weight"
        )
        holder = Peer()
        yield open_client(server.port, holder)
        holder.transport.write(b"x")
        yield holder.expect(1)
        self.assertEqual((yield exchange(server.port, half_close=False)), b"second")
        holder.transport.loseConnection()
        yield until(lambda: server.pool.get(f"127.0.0.1:{first}").counters.active_connections == 0)
        self.assertEqual((yield exchange(server.port, b"echoed")), b"echoed")

    @inlineCallbacks
    def test_exactByteCountsForKnownPayloads(self) -> None:
        body = b"r" * 54321
        server = self.balancer([(yield self.listen(Answer, body=body))])
        request = b"t" * 12345
        answer = yield exchange(server.port, request)
        self.assertEqual(len(answer), 64 + 54321)
        yield until(lambda: not server.relays)
        stats = server.stats()
        self.assertEqual((stats["rx_total"], stats["tx_total"]), (64 + 54321, 12345))
        backend = stats["backends"][0]["stats"]
        self.assertEqual((backend["rx"], backend["tx"], backend["total_connections"]), (64 + 54321, 12345, 1))
        self.assertEqual((stats["active_connections"], backend["active_connections"]), (0, 0))


class NormalPathRelayIntegrationTests(RelayIntegrationTests):
    """L{RelayIntegrationTests}, all on the normal path (the default there is the fast path)."""

    def balancer(self, backends: list[Any], **options: Any) -> ServerService:
        return super().balancer(backends, **{**options, "splice": False})


class StopIntegrationTests(TestCase):
    """Stopping and removing servers with live relays, on real sockets."""

    timeout = 30

    @inlineCallbacks
    def start(self) -> Any:
        backend = yield serve(self, PacedEcho)
        config = Config(
            defaults=DefaultsConfig(shutdown_grace=20.0),
            servers={"web": server_config((f"127.0.0.1:{backend.getHost().port}",))},
        )
        service = BalancerService(config, reactor)
        service.privilegedStartService()
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        server = service.server("web")
        peer = Peer()
        yield open_client(server.port, peer)
        peer.transport.write(b"ping")
        yield peer.expect(4)
        return service, server, peer

    @inlineCallbacks
    def test_stopClosesListenerAndLetsTheRelayFinish(self) -> None:
        service, server, peer = yield self.start()
        port = server.port
        stopped = service.stopService()
        yield deferLater(reactor, 0, lambda: None)
        with socket.socket() as probe:
            self.assertRaises(ConnectionRefusedError, probe.connect, ("127.0.0.1", port))
        self.assertNoResult(stopped)
        peer.transport.write(b"pong")
        self.assertEqual((yield peer.expect(8)), b"pingpong")
        peer.transport.loseWriteConnection()
        yield peer.closed
        yield stopped
        self.assertEqual(server.relays, {})

    @inlineCallbacks
    def test_removeServerClosesRelaysAtOnce(self) -> None:
        service, server, peer = yield self.start()
        yield service.remove_server("web")
        yield peer.closed
        self.assertEqual(server.relays, {})
        self.assertEqual(list(service), [])


SIGTERM_CONFIG = """
[defaults]
shutdown_grace = "{grace}"
[servers.web]
bind = "127.0.0.1:0"
[servers.web.discovery]
kind = "static"
static_list = ["127.0.0.1:{backend}"]
"""


class SigtermTests(TestCase):
    """twistd -n balancer: SIGTERM closes the listener first, then waits for relays up to the grace."""

    timeout = 30

    @inlineCallbacks
    def run_balancer(self, grace: str) -> Any:
        backend = yield serve(self, PacedEcho)
        path = os.path.abspath(self.mktemp() + ".toml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(SIGTERM_CONFIG.format(grace=grace, backend=backend.getHost().port))
        process = spawn_twistd(b"web: listening on", "-n", "--pidfile=", "balancer", "--config", path, cwd=ROOT)
        self.addCleanup(lambda: process.stop() if process.transport.pid else None)
        port = yield process.listening_port("web")
        peer = Peer()
        yield open_client(port, peer)
        peer.transport.write(b"ping")
        yield peer.expect(4)
        os.kill(process.transport.pid, signal.SIGTERM)
        yield until(lambda: b"web: stopped listening" in process.output)
        return process, port, peer

    @inlineCallbacks
    def test_liveRelayFinishesThenProcessExits(self) -> None:
        """With a long grace, the process ends as soon as its last relay does (else the test times out)."""
        process, port, peer = yield self.run_balancer("60s")
        refused = yield exchange(port).addCallbacks(lambda _: False, lambda f: f.check(error.ConnectionRefusedError))
        self.assertTrue(refused)
        peer.transport.write(b"pong")
        self.assertEqual((yield peer.expect(8)), b"pingpong")
        peer.transport.loseWriteConnection()
        yield peer.closed
        ended = yield process.ended
        self.assertEqual(ended, (None, signal.SIGTERM), process.output.decode())

    @inlineCallbacks
    def test_relayClosedAtGraceDeadline(self) -> None:
        process, port, peer = yield self.run_balancer("1s")
        yield peer.closed
        ended = yield process.ended
        self.assertEqual(ended, (None, signal.SIGTERM), process.output.decode())
