"""
Failed logins per client address: a token bucket per address
(C{[api] auth_failures_per_second}, which is also the burst), in a table of at
most L{MAX_CLIENTS} addresses.

A check takes a token before it runs and gives it back when the password was
right, so a client with no token left gets L{TooManyFailures} without any
check running, however many requests it sends at once.  IPv6 clients are
counted per C{/64}, the block one host usually holds.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict

from twisted.internet.interfaces import IReactorTime

#: Addresses tracked at most; past it the address updated longest ago (whose
#: bucket is the likeliest to be full again) is forgotten.
MAX_CLIENTS = 10_000


class TooManyFailures(Exception):
    """The client has used up its failed logins: try again after C{retry_after} seconds."""

    def __init__(self, client: str, retry_after: int) -> None:
        super().__init__(f"too many failed logins from {client}: retry after {retry_after}s")
        self.client = client
        self.retry_after = retry_after


def client_key(host: str) -> str:
    """The address C{host} is counted under: itself, or its C{/64} for IPv6."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class FailureLimiter:
    """Token buckets of failed logins, one per client address."""

    def __init__(self, clock: IReactorTime, per_second: int, max_clients: int = MAX_CLIENTS) -> None:
        """
        @param clock: the time source.
        @param per_second: tokens a client regains per second, and holds at most.
        @param max_clients: addresses tracked at most.
        """
        self._clock = clock
        self._rate = float(per_second)
        self._burst = float(per_second)
        self._max_clients = max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        """How many addresses are tracked."""
        return len(self._buckets)

    def take(self, client: str) -> None:
        """
        Take one token for a check from C{client}.

        @raise TooManyFailures: when C{client} has none left; nothing is taken.
        """
        tokens = self._tokens(client)
        if tokens < 1.0:
            raise TooManyFailures(client, max(1, math.ceil((1.0 - tokens) / self._rate)))
        self._store(client, tokens - 1.0)

    def give_back(self, client: str) -> None:
        """The check succeeded (or never ran): C{client} gets its token back."""
        self._store(client, min(self._burst, self._tokens(client) + 1.0))

    def _tokens(self, client: str) -> float:
        """C{client}'s tokens now, refilled since its last update."""
        found = self._buckets.get(client)
        if found is None:
            return self._burst
        tokens, updated = found
        return min(self._burst, tokens + (self._clock.seconds() - updated) * self._rate)

    def _store(self, client: str, tokens: float) -> None:
        if tokens >= self._burst:
            self._buckets.pop(client, None)
            return
        self._buckets[client] = (tokens, self._clock.seconds())
        self._buckets.move_to_end(client)
        while len(self._buckets) > self._max_clients:
            self._buckets.popitem(last=False)
