"""
Balancing strategies: how a server picks one backend for a new client.

Each strategy gets the candidates that may take a new connection (live,
active, under their limits, ordered by C{host:port}, as
L{balancer.backends.Pool.candidates} returns them) and the client's IP, and
picks one of them.  The names are gobetween's C{balance} values.
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
import random
from types import MappingProxyType
from typing import Callable, Mapping, Sequence

from zope.interface import Interface, implementer

from balancer.backends import Backend

_FNV32_OFFSET = 2166136261
_FNV32_PRIME = 16777619


class IStrategy(Interface):
    """Picks the backend for each new client of one server."""

    def choose(candidates: Sequence[Backend], client_host: str) -> Backend | None:
        """
        Pick one of C{candidates} for a client from C{client_host}.

        @param candidates: backends that may take a new connection (live,
            active, under their limits), ordered by C{host:port}.
        @param client_host: the client's IP address as text (IPv4 or IPv6).
        @return: the chosen backend, or C{None} when none may be chosen.
        """


def fnv1a_32(data: bytes) -> int:
    """The 32-bit FNV-1a hash of C{data}."""
    value = _FNV32_OFFSET
    for byte in data:
        value = ((value ^ byte) * _FNV32_PRIME) & 0xFFFFFFFF
    return value


def client_bytes(client_host: str) -> bytes:
    """
    The bytes that identify a client for hashing.

    The packed address: 4 bytes for IPv4 (also when written as an
    IPv4-mapped IPv6 address, as a dual-stack listener reports IPv4 clients),
    16 for IPv6; the UTF-8 text for a host that is not an IP address.
    """
    try:
        address = ipaddress.ip_address(client_host)
    except ValueError:
        return client_host.encode("utf-8")
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.packed
    return address.packed


@implementer(IStrategy)
class WeightStrategy:
    """
    C{weight}: weighted-random within the most preferred priority.

    Only backends of positive C{weight} are eligible (weight 0 takes no new
    clients); among them, those with the lowest C{priority} value form the
    group, and each is picked with probability C{weight / sum of weights},
    drawing from the given C{random.Random}.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, candidates: Sequence[Backend], client_host: str) -> Backend | None:
        """Pick weighted-randomly among the lowest priority's positive weights."""
        eligible = [b for b in candidates if b.spec.weight > 0]
        if not eligible:
            return None
        priority = min(b.spec.priority for b in eligible)
        group = [b for b in eligible if b.spec.priority == priority]
        ends = list(itertools.accumulate(b.spec.weight for b in group))
        return group[bisect.bisect_right(ends, self._rng.randrange(ends[-1]))]


@implementer(IStrategy)
class RoundRobinStrategy:
    """
    C{roundrobin}: each candidate in turn, in C{host:port} order.

    It remembers the backend picked last and next picks the first candidate
    after it in that order (wrapping to the first), so a changed candidate
    set continues the cycle rather than restarting it.
    """

    def __init__(self) -> None:
        self._last: tuple[str, int] | None = None

    def choose(self, candidates: Sequence[Backend], client_host: str) -> Backend | None:
        """Pick the candidate after the one picked last."""
        if not candidates:
            return None
        chosen = candidates[0]
        last = self._last
        if last is not None and len(candidates) > 1:
            # The spec's fields, not the backend's properties, and a loop, not
            # a generator (a frame of its own): this runs for every new client.
            for b in candidates:
                spec = b.spec
                if (spec.host, spec.port) > last:
                    chosen = b
                    break
        spec = chosen.spec
        self._last = (spec.host, spec.port)
        return chosen


@implementer(IStrategy)
class LeastConnStrategy:
    """C{leastconn}: the fewest active connections; the first such on a tie."""

    def choose(self, candidates: Sequence[Backend], client_host: str) -> Backend | None:
        """Pick the candidate with the fewest active connections."""
        return min(candidates, key=lambda b: b.counters.active_connections, default=None)


@implementer(IStrategy)
class LeastBandwidthStrategy:
    """
    C{leastbandwidth}: the lowest traffic rate (received plus transmitted
    bytes over the last second); the first such on a tie.
    """

    def choose(self, candidates: Sequence[Backend], client_host: str) -> Backend | None:
        """Pick the candidate moving the fewest bytes per second."""
        return min(
            candidates,
            key=lambda b: b.counters.traffic.rx_second + b.counters.traffic.tx_second,
            default=None,
        )


@implementer(IStrategy)
class IPHashStrategy:
    """
    C{iphash}: the candidate at index C{fnv1a_32(client) mod len(candidates)}.

    The same client gets the same backend while the candidates stay the same;
    any change to the set may move most clients (see L{IPHash1Strategy}).
    """

    def choose(self, candidates: Sequence[Backend], client_host: str) -> Backend | None:
        """Pick by the client address's hash modulo the number of candidates."""
        if not candidates:
            return None
        return candidates[fnv1a_32(client_bytes(client_host)) % len(candidates)]


@implementer(IStrategy)
class IPHash1Strategy:
    """
    C{iphash1}: rendezvous (highest random weight) hashing.

    Each candidate scores C{fnv1a_32(client + b"|" + key)}; the highest score
    wins (the first such on a tie).  Removing a backend moves only the clients
    it had; adding it back returns them to it.
    """

    def choose(self, candidates: Sequence[Backend], client_host: str) -> Backend | None:
        """Pick the candidate scoring highest for this client."""
        prefix = client_bytes(client_host) + b"|"
        return max(
            candidates,
            key=lambda b: fnv1a_32(prefix + b.key.encode("utf-8")),
            default=None,
        )


StrategyFactory = Callable[[random.Random], IStrategy]
"""Makes a fresh strategy; the random source is for those that draw."""

STRATEGIES: Mapping[str, StrategyFactory] = MappingProxyType(
    {
        "weight": WeightStrategy,
        "roundrobin": lambda rng: RoundRobinStrategy(),
        "leastconn": lambda rng: LeastConnStrategy(),
        "leastbandwidth": lambda rng: LeastBandwidthStrategy(),
        "iphash": lambda rng: IPHashStrategy(),
        "iphash1": lambda rng: IPHash1Strategy(),
    }
)
"""The strategies by their C{balance} name."""


def make_strategy(name: str, rng: random.Random | None = None) -> IStrategy:
    """
    A fresh strategy of the C{balance} name C{name}.

    @param rng: the random source for C{weight}; a new C{random.Random()}
        when not given.
    @raise ValueError: naming C{name} when no strategy has that name.
    """
    try:
        factory = STRATEGIES[name]
    except KeyError:
        known = ", ".join(STRATEGIES)
        raise ValueError(f'unknown balancing strategy "{name}" (known: {known})') from None
    return factory(random.Random() if rng is None else rng)
