"""
The torture suite: a seeded random mix of connection shapes through a real
balancer on both data paths (L{tests.support.torture} describes the shapes
and what is checked of each connection).

Each run draws a new seed, printed in the test's output and in any failure;
C{TORTURE_SEED=N python -m twisted.trial tests.test_torture} replays it.

L{EnginePathTortureTests.test_mixOfShapes} is the test that catches the
ends of stream the relay engine used to lose: before the fix of issue 13 a
backend that sent its greeting and closed before the relay joined the two
sockets (the C{greet_close} shape) left its client without an end of stream
in a few percent of the connections, and a reader paused by flow control
when its end arrived (C{slow_client_reader}, C{slow_backend_reader}) never
saw it.
"""

from __future__ import annotations

import gc
import os
import random
from typing import Any, Iterator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from balancer.config.addresses import HostPort, parse_backend_line
from balancer.config.schema import Config, DefaultsConfig, DiscoveryConfig, ServerConfig
from balancer.proxy.engine import splice
from balancer.proxy.engine.pipes import PipePool
from balancer.proxy.engine.path import EnginePath
from balancer.root_service import BalancerService
from tests.support import torture
from tests.support.loops import use_loop

#: Connections per path in the suite, and how many at once.
CONNECTIONS = 2500
CONCURRENCY = 50


def torture_config(ports: dict[str, int], splice_on: bool) -> Config:
    """A balancer with one server per torture server name, each in front of its one backend."""
    servers = {
        name: ServerConfig(
            bind=HostPort("127.0.0.1", 0),
            balance="roundrobin",
            discovery=DiscoveryConfig(kind="static", static_list=(parse_backend_line(f"127.0.0.1:{ports[name]}"),)),
            **torture.SERVER_OPTIONS.get(name, {}),
        )
        for name in torture.SERVERS
    }
    return Config(defaults=DefaultsConfig(shutdown_grace=5.0, splice=splice_on), servers=servers)


class _TortureTests:
    """The torture run on one data path (a subclass says which, by C{splice})."""

    splice: bool
    timeout = 180

    addCleanup: Any
    assertEqual: Any
    fail: Any

    @inlineCallbacks
    def test_mixOfShapes(self) -> Iterator[Deferred[Any]]:
        """
        C{CONNECTIONS} connections of every shape, C{CONCURRENCY} at a time:
        each gets exactly its bytes and its ends; afterwards nothing is left
        counted, open, lent or watched.
        """
        seed = int(os.environ.get("TORTURE_SEED") or random.randrange(1 << 32))
        print(f"torture seed {seed} (replay: TORTURE_SEED={seed})")
        backends = torture.Backends()
        yield backends.start()
        self.addCleanup(backends.stop)
        service = BalancerService(torture_config(backends.ports, self.splice), reactor)
        service.privilegedStartService()
        service.startService()

        def stop() -> Deferred[Any]:
            for name in torture.SERVERS:
                service.server(name).grace = 0.0
            return service.stopService()

        self.addCleanup(stop)
        servers = {name: service.server(name) for name in torture.SERVERS}
        for server in servers.values():
            self.assertEqual(isinstance(server.path, EnginePath), self.splice and splice.AVAILABLE)
        yield _turn()  # the reactor opens a descriptor of its own in its first turn
        # The objects earlier tests left in this process are not walked by the
        # collections during the run: a full collection of them can stall the
        # process for over a second on a busy machine, longer than the LAG allowed.
        gc.collect()
        gc.freeze()
        self.addCleanup(gc.unfreeze)
        engine = service.engine
        descriptors = torture.open_descriptors()
        started = reactor.seconds()
        report = yield torture.run(
            seed, CONNECTIONS, CONCURRENCY, backends, lambda name: ("127.0.0.1", servers[name].port)
        )
        took = reactor.seconds() - started
        print(f"{report.summary()}\n{took:.1f} s")
        problems = list(report.failures) + (yield torture.check_backends(backends, report))
        # The relays end after both of their peers: wait for the last ones (bounded).
        deadline = reactor.seconds() + torture.LAG
        while any(s.relays for s in servers.values()) and reactor.seconds() < deadline:
            yield _turn()
        for name, server in servers.items():
            stats = server.stats()
            active = (stats["active_connections"], stats["backends"][0]["stats"]["active_connections"])
            if active != (0, 0):
                problems.append(f"server {name}: active connections (server, backend) {active}, expected (0, 0)")
            if server.counters.total_connections != report.servers[name]:
                problems.append(
                    f"server {name}: total_connections {server.counters.total_connections}, for {report.servers[name]} clients"
                )
        if engine is not None and engine.pipes.lent:
            problems.append(f"{engine.pipes.lent} pipes not given back to the pool")
        kept = torture.pooled_pipes(engine.pipes) if engine is not None else set()
        leaked = torture.leaked_descriptors(descriptors, torture.open_descriptors(), kept)
        if leaked:
            problems.append(f"{len(leaked)} descriptors opened during the run are still open: {leaked}")
        if self.splice and engine is not None and engine.watched != len(servers):
            problems.append(f"the engine watches {engine.watched} sockets, not only the {len(servers)} listeners")
        if problems:
            self.fail(f"{report.summary()}\n" + "\n".join(problems[:60]))


def _turn() -> Deferred[None]:
    d: Deferred[None] = Deferred()
    reactor.callLater(0.01, d.callback, None)
    return d


class EnginePathTortureTests(_TortureTests, TestCase):
    """The relay engine (plain TCP relays spliced in the kernel), its dispatch loop in Python."""

    splice = True

    def setUp(self) -> None:
        use_loop(self, compiled_loop=False)


class CompiledEnginePathTortureTests(_TortureTests, TestCase):
    """The relay engine on its compiled dispatch loop (C{balancer_cdispatch}), the default where it is built."""

    splice = True

    def setUp(self) -> None:
        use_loop(self, compiled_loop=True)


class TwistedPathTortureTests(_TortureTests, TestCase):
    """Twisted's transports (C{[defaults] splice = false})."""

    splice = False


class LeakedDescriptorsTests(SynchronousTestCase):
    """
    The run's descriptor check counts only descriptors opened during the run
    and still open after it (L{torture.leaked_descriptors}).
    """

    def test_newDescriptorIsLeaked(self) -> None:
        """A descriptor opened during the run and still open is reported."""
        before = torture.open_descriptors()
        read, write = os.pipe()
        self.addCleanup(os.close, write)
        self.addCleanup(os.close, read)
        leaked = torture.leaked_descriptors(before, torture.open_descriptors())
        self.assertEqual(set(leaked), {read, write})

    def test_olderDescriptorClosedIsNoLeak(self) -> None:
        """
        A descriptor open before the run (left by an earlier test) that
        closes during it changes the count but is no leak.
        """
        read, write = os.pipe()
        before = torture.open_descriptors()
        os.close(read)
        os.close(write)
        self.assertEqual(torture.leaked_descriptors(before, torture.open_descriptors()), {})

    def test_numberReusedIsLeaked(self) -> None:
        """A number closed during the run and then opened again for something else is a new descriptor."""
        read, write = os.pipe()
        before = torture.open_descriptors()
        os.close(read)
        os.close(write)
        again, other = os.pipe()
        self.addCleanup(os.close, other)
        self.addCleanup(os.close, again)
        self.assertEqual(set(torture.leaked_descriptors(before, torture.open_descriptors())), {again, other})

    def test_pooledPipesAreNotLeaked(self) -> None:
        """
        Pipes the engine's pool keeps are not leaks; taking their numbers
        leaves the pool as it was.
        """
        pool = PipePool()
        self.addCleanup(pool.close)
        before = torture.open_descriptors()
        first, second = pool.acquire(), pool.acquire()
        pool.release(first)
        pool.release(second)
        kept = torture.pooled_pipes(pool)
        self.assertEqual(kept, set(first) | set(second))
        self.assertEqual((pool.free, pool.lent), (2, 0))
        self.assertEqual(pool.acquire(), second)
        pool.release(second)
        self.assertEqual(torture.leaked_descriptors(before, torture.open_descriptors(), kept), {})
        self.assertEqual(set(torture.leaked_descriptors(before, torture.open_descriptors())), kept)
