"""
The finished connections of a torture run (L{tests.support.torture}) on
both data paths: a seeded random mix of peers that reset, close at once,
greet and close, stay silent, refuse or never accept.  Each connection is
published exactly once, with the reason its shape makes certain: the
shapes here are those whose ending is one reason, one shape per server.

C{TORTURE_SEED=N} replays a run, as for L{tests.test_torture}.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from typing import Any, Generator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from balancer.config.addresses import HostPort, parse_backend_line
from balancer.config.schema import Config, DefaultsConfig, DiscoveryConfig, ServerConfig
from balancer.proxy import finished as reasons
from balancer.proxy.finished import FinishedConnection
from balancer.root_service import BalancerService
from tests.support import torture
from tests.support.waiting import until

#: Each server's one shape here, and the reasons that shape's connections end with: one, but for a
#: backend that resets as soon as it accepts, which the connect may already report as its failure.
ENDINGS = {
    "greet": ("greet_close", {reasons.BACKEND_CLOSED}),
    "greet_empty": ("zero_backend", {reasons.BACKEND_CLOSED}),
    "greet_pause": ("greet_pause", {reasons.CLIENT_CLOSED}),
    "rst": ("backend_reset_early", {reasons.BACKEND_RESET, reasons.CONNECT_FAILED}),
    "scripted": ("client_reset_mid", {reasons.CLIENT_RESET}),
    "refused": ("refused", {reasons.CONNECT_FAILED}),
    "silent": ("silent", {reasons.CLIENT_IDLE}),
    "blackhole": ("connect_timeout", {reasons.CONNECT_TIMEOUT}),
}

CONNECTIONS = 600
CONCURRENCY = 40


def only_greet(conn_id: int, rng: random.Random) -> torture.Connection:
    """A C{greet_close} connection to the C{greet} server (not C{greet_big}, which is left out here)."""
    conn = torture.SHAPES["greet_close"][0](conn_id, rng)
    while conn.server != "greet":
        conn = torture.SHAPES["greet_close"][0](conn_id, rng)
    return conn


SHAPES = {shape: torture.SHAPES[shape] for shape, _ in ENDINGS.values()}
SHAPES["greet_close"] = (only_greet, torture.SHAPES["greet_close"][1])


class _FinishedUnderTorture:
    """The run on one data path (C{splice})."""

    splice: bool
    timeout = 120

    addCleanup: Any
    assertEqual: Any

    @inlineCallbacks
    def test_eachConnectionOnceWithItsReason(self) -> Generator[Deferred[Any], Any, None]:
        seed = int(os.environ.get("TORTURE_SEED") or random.randrange(1 << 32))
        print(f"torture seed {seed} (replay: TORTURE_SEED={seed})")
        backends = torture.Backends()
        yield backends.start()
        self.addCleanup(backends.stop)
        servers = {
            name: ServerConfig(
                bind=HostPort("127.0.0.1", 0),
                discovery=DiscoveryConfig(
                    kind="static", static_list=(parse_backend_line(f"127.0.0.1:{backends.ports[name]}"),)
                ),
                **torture.SERVER_OPTIONS.get(name, {}),
            )
            for name in ENDINGS
        }
        service = BalancerService(Config(defaults=DefaultsConfig(splice=self.splice), servers=servers), reactor)
        records: list[FinishedConnection] = []
        service.finished.subscribe(records.append)
        service.privilegedStartService()
        service.startService()

        def stop() -> Deferred[Any]:
            for name in ENDINGS:
                service.server(name).grace = 0.0
            return service.stopService()

        self.addCleanup(stop)
        report: torture.Report = yield torture.run(
            seed, CONNECTIONS, CONCURRENCY, backends, lambda name: ("127.0.0.1", service.server(name).port), SHAPES
        )
        yield until(lambda: len(records) >= CONNECTIONS, torture.LAG + 5, f"{CONNECTIONS} finished connections")
        self.assertEqual(len(records), CONNECTIONS, report.summary())
        self.assertEqual(Counter(record.server for record in records), report.servers, report.summary())
        unexpected = Counter((r.server, r.reason) for r in records if r.reason not in ENDINGS[r.server][1])
        self.assertEqual(unexpected, Counter(), report.summary())
        never_connected = {reasons.CONNECT_FAILED, reasons.CONNECT_TIMEOUT}
        wrong_times = [
            r for r in records
            if (r.connect_seconds is None) != (r.reason in never_connected)
            or not 0 <= (r.connect_seconds or 0.0) <= r.duration_seconds
        ]
        self.assertEqual(wrong_times, [])


class EngineFinishedTests(_FinishedUnderTorture, TestCase):
    """On the relay engine."""

    splice = True


class TwistedFinishedTests(_FinishedUnderTorture, TestCase):
    """On Twisted's transports."""

    splice = False
