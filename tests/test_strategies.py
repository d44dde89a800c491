"""Tests for L{balancer.strategies}."""

from __future__ import annotations

import random
from collections import Counter
from typing import Sequence

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from balancer.backends import Backend
from balancer.config.addresses import BackendSpec
from balancer.config.schema import STRATEGIES as CONFIG_STRATEGIES
from balancer.strategies import (
    STRATEGIES,
    IPHash1Strategy,
    IPHashStrategy,
    IStrategy,
    LeastBandwidthStrategy,
    LeastConnStrategy,
    RoundRobinStrategy,
    WeightStrategy,
    client_bytes,
    fnv1a_32,
    make_strategy,
)

CLIENT = "192.0.2.7"


def backend(i: int, weight: int = 1, priority: int = 1) -> Backend:
    """Backend C{127.0.0.1:900i}."""
    return Backend(BackendSpec("127.0.0.1", 9000 + i, weight=weight, priority=priority))


def backends(count: int) -> list[Backend]:
    """C{count} backends of weight 1, priority 1, in C{host:port} order."""
    return [backend(i) for i in range(count)]


def picks(strategy: IStrategy, candidates: Sequence[Backend], times: int) -> Counter[str]:
    """How often each backend key is chosen over C{times} picks by C{CLIENT}."""
    counts: Counter[str] = Counter()
    for _ in range(times):
        chosen = strategy.choose(candidates, CLIENT)
        assert chosen is not None
        counts[chosen.key] += 1
    return counts


def ipv4_clients(count: int) -> list[str]:
    """C{count} distinct addresses C{10.0.x.y}."""
    return [f"10.0.{i // 256}.{i % 256}" for i in range(count)]


class RegistryTests(SynchronousTestCase):
    """L{make_strategy} and L{STRATEGIES}."""

    def test_names(self) -> None:
        """The registry has exactly the names the configuration accepts."""
        self.assertEqual(
            sorted(STRATEGIES),
            sorted(["weight", "roundrobin", "leastconn", "leastbandwidth", "iphash", "iphash1"]),
        )
        self.assertEqual(sorted(STRATEGIES), sorted(CONFIG_STRATEGIES))

    def test_classes(self) -> None:
        """Each name makes the strategy of that name, providing L{IStrategy}."""
        expected = {
            "weight": WeightStrategy,
            "roundrobin": RoundRobinStrategy,
            "leastconn": LeastConnStrategy,
            "leastbandwidth": LeastBandwidthStrategy,
            "iphash": IPHashStrategy,
            "iphash1": IPHash1Strategy,
        }
        for name, cls in expected.items():
            strategy = make_strategy(name)
            self.assertIsInstance(strategy, cls)
            self.assertTrue(verifyObject(IStrategy, strategy))

    def test_freshInstances(self) -> None:
        """Each call makes a new strategy, so round-robin state is not shared."""
        first = make_strategy("roundrobin")
        second = make_strategy("roundrobin")
        self.assertIsNot(first, second)
        candidates = backends(3)
        self.assertIs(first.choose(candidates, CLIENT), candidates[0])
        self.assertIs(second.choose(candidates, CLIENT), candidates[0])

    def test_unknown(self) -> None:
        """An unknown name raises L{ValueError} naming it."""
        with self.assertRaises(ValueError) as raised:
            make_strategy("random-ish")
        self.assertIn("random-ish", str(raised.exception))

    def test_readOnly(self) -> None:
        """The registry cannot be changed by accident."""
        with self.assertRaises(TypeError):
            STRATEGIES["other"] = WeightStrategy  # type: ignore[index]

    def test_emptyCandidates(self) -> None:
        """Every strategy chooses nothing from no candidates."""
        for name in STRATEGIES:
            self.assertIsNone(make_strategy(name).choose([], CLIENT), name)
            self.assertIsNone(make_strategy(name).choose([], "2001:db8::1"), name)


class FNVTests(SynchronousTestCase):
    """L{fnv1a_32} and L{client_bytes}."""

    def test_vectors(self) -> None:
        """The published FNV-1a 32-bit test vectors."""
        self.assertEqual(fnv1a_32(b""), 0x811C9DC5)
        self.assertEqual(fnv1a_32(b"a"), 0xE40C292C)
        self.assertEqual(fnv1a_32(b"foobar"), 0xBF9CF968)

    def test_range(self) -> None:
        """The hash stays within 32 bits for long input."""
        value = fnv1a_32(bytes(range(256)) * 8)
        self.assertTrue(0 <= value < 2**32)

    def test_clientBytes(self) -> None:
        """Packed IPv4 (4 bytes), IPv6 (16 bytes); text otherwise."""
        self.assertEqual(client_bytes("10.1.2.3"), bytes([10, 1, 2, 3]))
        self.assertEqual(client_bytes("2001:db8::1"), bytes.fromhex("20010db8" + "0" * 23 + "1"))
        self.assertEqual(client_bytes("::ffff:10.1.2.3"), bytes([10, 1, 2, 3]))
        self.assertEqual(client_bytes("unix-peer"), b"unix-peer")


class WeightTests(SynchronousTestCase):
    """L{WeightStrategy}."""

    def test_ratio(self) -> None:
        """Weights 1:3 give about three times the picks to the heavier backend."""
        light, heavy = backend(0, weight=1), backend(1, weight=3)
        strategy = make_strategy("weight", random.Random(42))
        counts = picks(strategy, [light, heavy], 2000)
        self.assertEqual(sum(counts.values()), 2000)
        ratio = counts[heavy.key] / counts[light.key]
        self.assertTrue(2.7 <= ratio <= 3.3, f"ratio {ratio} ({counts})")

    def test_seeded(self) -> None:
        """The injected random source decides: equal seeds, equal picks."""
        candidates = [backend(i, weight=i + 1) for i in range(4)]
        first = make_strategy("weight", random.Random(7))
        second = make_strategy("weight", random.Random(7))
        self.assertEqual(
            [first.choose(candidates, CLIENT) for _ in range(50)],
            [second.choose(candidates, CLIENT) for _ in range(50)],
        )

    def test_priority(self) -> None:
        """Only the lowest priority value is picked while it has candidates."""
        preferred = [backend(0, priority=1), backend(2, priority=1)]
        fallback = [backend(1, priority=2), backend(3, priority=2, weight=5)]
        candidates = sorted(preferred + fallback, key=lambda b: b.port)
        strategy = make_strategy("weight", random.Random(1))
        counts = picks(strategy, candidates, 500)
        self.assertEqual(set(counts), {b.key for b in preferred})
        counts = picks(strategy, fallback, 500)
        self.assertEqual(set(counts), {b.key for b in fallback})

    def test_weightZero(self) -> None:
        """A backend of weight 0 is never picked."""
        zero = backend(1, weight=0)
        candidates = [backend(0), zero, backend(2)]
        counts = picks(make_strategy("weight", random.Random(3)), candidates, 1000)
        self.assertNotIn(zero.key, counts)
        self.assertEqual(len(counts), 2)

    def test_zeroPriorityGroup(self) -> None:
        """A priority whose candidates all weigh 0 gives way to the next."""
        candidates = [backend(0, weight=0, priority=1), backend(1, weight=2, priority=2)]
        counts = picks(make_strategy("weight", random.Random(3)), candidates, 100)
        self.assertEqual(counts, {candidates[1].key: 100})

    def test_allZero(self) -> None:
        """Nothing is picked when no candidate has a positive weight."""
        candidates = [backend(0, weight=0), backend(1, weight=0, priority=2)]
        self.assertIsNone(make_strategy("weight").choose(candidates, CLIENT))


class RoundRobinTests(SynchronousTestCase):
    """L{RoundRobinStrategy}."""

    def test_even(self) -> None:
        """Three backends get exactly 100 picks each out of 300, in order."""
        candidates = backends(3)
        strategy = make_strategy("roundrobin")
        order = [strategy.choose(candidates, CLIENT) for _ in range(6)]
        self.assertEqual(order, candidates + candidates)
        counts = picks(strategy, candidates, 300)
        self.assertEqual(counts, {b.key: 100 for b in candidates})

    def test_nextRemoved(self) -> None:
        """When the next backend leaves, the one after it follows."""
        a, b, c, d = backends(4)
        strategy = make_strategy("roundrobin")
        self.assertIs(strategy.choose([a, b, c, d], CLIENT), a)
        self.assertIs(strategy.choose([a, b, c, d], CLIENT), b)
        self.assertIs(strategy.choose([a, b, d], CLIENT), d)
        self.assertIs(strategy.choose([a, b, d], CLIENT), a)

    def test_lastRemoved(self) -> None:
        """When the backend picked last leaves, the cycle goes on after it."""
        a, b, c, d = backends(4)
        strategy = make_strategy("roundrobin")
        strategy.choose([a, b, c, d], CLIENT)
        self.assertIs(strategy.choose([a, b, c, d], CLIENT), b)
        self.assertIs(strategy.choose([a, c, d], CLIENT), c)

    def test_added(self) -> None:
        """A backend added just after the one picked last comes next."""
        a, b, c = backends(3)
        strategy = make_strategy("roundrobin")
        self.assertIs(strategy.choose([a, c], CLIENT), a)
        self.assertIs(strategy.choose([a, b, c], CLIENT), b)
        self.assertIs(strategy.choose([a, b, c], CLIENT), c)

    def test_wraps(self) -> None:
        """After the last backend in order comes the first."""
        a, b, c = backends(3)
        strategy = make_strategy("roundrobin")
        strategy.choose([c], CLIENT)
        self.assertIs(strategy.choose([a, b, c], CLIENT), a)


class LeastConnTests(SynchronousTestCase):
    """L{LeastConnStrategy}."""

    def test_fewest(self) -> None:
        """The backend with the fewest active connections is picked."""
        candidates = backends(3)
        for b, active in zip(candidates, [5, 2, 7]):
            b.counters.active_connections = active
        self.assertIs(make_strategy("leastconn").choose(candidates, CLIENT), candidates[1])

    def test_tie(self) -> None:
        """On a tie the first in order wins."""
        candidates = backends(4)
        for b, active in zip(candidates, [3, 1, 1, 1]):
            b.counters.active_connections = active
        strategy = make_strategy("leastconn")
        self.assertIs(strategy.choose(candidates, CLIENT), candidates[1])
        self.assertIs(strategy.choose(candidates, CLIENT), candidates[1])


class LeastBandwidthTests(SynchronousTestCase):
    """L{LeastBandwidthStrategy}."""

    def test_lowest(self) -> None:
        """The lowest received plus transmitted rate wins, not either alone.

        By received alone the second would win, by transmitted alone the first.
        """
        candidates = backends(3)
        rates = [(100, 0), (0, 150), (60, 20)]
        for b, (rx, tx) in zip(candidates, rates):
            b.counters.traffic.rx_second = rx
            b.counters.traffic.tx_second = tx
        self.assertIs(make_strategy("leastbandwidth").choose(candidates, CLIENT), candidates[2])

    def test_tie(self) -> None:
        """On a tie the first in order wins."""
        candidates = backends(3)
        for b, (rx, tx) in zip(candidates, [(10, 10), (5, 0), (0, 5)]):
            b.counters.traffic.rx_second = rx
            b.counters.traffic.tx_second = tx
        self.assertIs(make_strategy("leastbandwidth").choose(candidates, CLIENT), candidates[1])

    def test_rateNotTotal(self) -> None:
        """The per-second rate counts, not bytes moved overall."""
        candidates = backends(2)
        candidates[0].counters.traffic.rx = 10**9
        candidates[1].counters.traffic.tx_second = 1
        self.assertIs(make_strategy("leastbandwidth").choose(candidates, CLIENT), candidates[0])


class IPHashTests(SynchronousTestCase):
    """L{IPHashStrategy}."""

    def test_formula(self) -> None:
        """The index is FNV-1a of the packed address modulo the candidates."""
        candidates = backends(5)
        strategy = make_strategy("iphash")
        for client in ["10.0.0.1", "10.0.3.200", "2001:db8::42"]:
            index = fnv1a_32(client_bytes(client)) % 5
            self.assertIs(strategy.choose(candidates, client), candidates[index])

    def test_sticky(self) -> None:
        """The same client gets the same backend every time."""
        candidates = backends(4)
        strategy = make_strategy("iphash")
        for client in ipv4_clients(50):
            chosen = {strategy.choose(candidates, client) for _ in range(5)}
            self.assertEqual(len(chosen), 1, client)

    def test_spread(self) -> None:
        """256 clients reach every one of 4 backends."""
        candidates = backends(4)
        strategy = make_strategy("iphash")
        chosen = {strategy.choose(candidates, c) for c in ipv4_clients(256)}
        self.assertEqual(chosen, set(candidates))

    def test_ipv6(self) -> None:
        """IPv6 clients hash by their 16 packed bytes, stickily, and spread."""
        candidates = backends(4)
        strategy = make_strategy("iphash")
        clients = [f"2001:db8::{i:x}" for i in range(64)]
        first = [strategy.choose(candidates, c) for c in clients]
        self.assertEqual(first, [strategy.choose(candidates, c) for c in clients])
        self.assertEqual({b.key for b in first if b is not None}, {b.key for b in candidates})
        self.assertIs(
            strategy.choose(candidates, "2001:db8::1"),
            candidates[fnv1a_32(bytes.fromhex("20010db8" + "0" * 23 + "1")) % 4],
        )

    def test_mappedIpv4(self) -> None:
        """An IPv4-mapped IPv6 client is hashed like its IPv4 address."""
        candidates = backends(7)
        strategy = make_strategy("iphash")
        for client in ipv4_clients(30):
            self.assertIs(strategy.choose(candidates, "::ffff:" + client), strategy.choose(candidates, client))


class IPHash1Tests(SynchronousTestCase):
    """L{IPHash1Strategy}."""

    def assignment(self, candidates: Sequence[Backend], clients: Sequence[str]) -> dict[str, str]:
        """Which backend key each client gets."""
        strategy = make_strategy("iphash1")
        result = {}
        for client in clients:
            chosen = strategy.choose(candidates, client)
            assert chosen is not None
            result[client] = chosen.key
        return result

    def test_formula(self) -> None:
        """The backend with the highest FNV-1a of C{client|key} wins."""
        candidates = backends(5)
        for client in ["10.0.0.1", "2001:db8::9"]:
            scores = [fnv1a_32(client_bytes(client) + b"|" + b.key.encode()) for b in candidates]
            chosen = make_strategy("iphash1").choose(candidates, client)
            self.assertIs(chosen, candidates[scores.index(max(scores))])

    def test_removalMovesOnlyItsClients(self) -> None:
        """
        Removing one of 5 backends moves exactly its clients, and no others;
        adding it back returns them.
        """
        clients = ipv4_clients(1000)
        everything = backends(5)
        before = self.assignment(everything, clients)
        self.assertEqual(set(before.values()), {b.key for b in everything})
        for removed in everything:
            rest = [b for b in everything if b is not removed]
            after = self.assignment(rest, clients)
            moved = {c for c in clients if after[c] != before[c]}
            owned = {c for c in clients if before[c] == removed.key}
            self.assertTrue(owned, removed.key)
            self.assertEqual(moved, owned, removed.key)
            self.assertEqual(self.assignment(everything, clients), before)

    def test_tieFirst(self) -> None:
        """Equal scores (the same key twice) go to the first in order."""
        twins = [backend(0), backend(0)]
        self.assertIs(make_strategy("iphash1").choose(twins, CLIENT), twins[0])

    def test_ipv6(self) -> None:
        """IPv6 clients are spread and sticky too."""
        candidates = backends(3)
        strategy = make_strategy("iphash1")
        clients = [f"2001:db8::{i:x}" for i in range(60)]
        first = [strategy.choose(candidates, c) for c in clients]
        self.assertEqual(first, [strategy.choose(candidates, c) for c in clients])
        self.assertEqual({b.key for b in first if b is not None}, {b.key for b in candidates})
