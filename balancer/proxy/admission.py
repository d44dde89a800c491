"""
L{Admission}: whether a listener takes a new client (docs/architecture.md),
the one place where access rules and the limit of live clients are checked,
for TCP relays and UDP sessions alike.
"""

from __future__ import annotations

from twisted.logger import Logger

from balancer.config.schema import ServerConfig
from balancer.proxy.access import AccessRules
from balancer.proxy.finished import DENIED, OVER_LIMIT
from balancer.stats import ServerCounters

log = Logger()


class Admission:
    """
    A listener's access rules, then its limit of live clients.

    A client the rules refuse counts in C{denied}, one over the limit in
    C{over_limit}; a client taken (L{take}) counts in
    C{active_connections} and C{total_connections} until it L{ended}.

    @ivar access: the compiled C{[access]} rules, or C{None} (everyone).
    @ivar limit: the most live clients (0: no limit).
    """

    def __init__(
        self, counters: ServerCounters, name: str, *, access: AccessRules | None = None, limit: int = 0
    ) -> None:
        """
        @param counters: the listener's server's counters.
        @param name: the server's name, for the log.
        """
        self.counters = counters
        self.name = name
        self.access = access
        self.limit = limit

    def configure(self, config: ServerConfig, default_limit: int = 0) -> None:
        """Take the rules and limit of C{config} (a server reconfigured in place)."""
        self.access = AccessRules.from_config(config.access) if config.access is not None else None
        self.limit = config.max_connections or default_limit

    def allows(self, host: str) -> bool:
        """Whether a new client from C{host} may be taken now (a refusal is counted)."""
        return self.refusal(host) is None

    def refusal(self, host: str) -> str | None:
        """
        Why a new client from C{host} may not be taken now (a refusal is
        counted), or C{None} if it may.

        @return: L{DENIED}, L{OVER_LIMIT} or C{None}.
        """
        access = self.access
        if access is not None and not access.allows(host):
            self.counters.denied += 1
            log.debug("{server}: client {client} denied by access rules", server=self.name, client=host)
            return DENIED
        if self.limit and self.counters.active_connections >= self.limit:
            self.counters.over_limit += 1
            return OVER_LIMIT
        return None

    def take(self, host: str) -> str | None:
        """
        L{refusal} for a new client from C{host}, and if there is none, the
        client is taken (counted live and in the total): one call per client.
        """
        if self.access is not None or self.limit:
            refusal = self.refusal(host)
            if refusal is not None:
                return refusal
        counters = self.counters
        counters.active_connections += 1
        counters.total_connections += 1
        return None

    def ended(self) -> None:
        """A client taken has ended."""
        self.counters.active_connections -= 1
