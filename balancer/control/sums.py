"""
Statistics over every worker process (C{[defaults] workers}): worker 0's own
documents plus the latest the other workers reported (L{balancer.workers.supervisor}),
added up.
"""

from __future__ import annotations

from typing import Any, Callable

from balancer.stats import SERVER_COUNTERS

#: The server figures of gobetween's document, and the backend figures, that add up over worker processes.
SERVER_SUMS = ("active_connections", "rx_total", "tx_total", "rx_second", "tx_second")
BACKEND_SUMS = (
    "total_connections", "active_connections", "refused_connections", "rx", "tx", "rx_second", "tx_second"
)

#: A source of the other worker processes' latest reports of a server, by name.
PeerSource = Callable[[str], list[dict[str, Any]]]


def sum_stats(
    own: dict[str, Any], others: list[dict[str, Any]], server_sums: tuple[str, ...] = SERVER_SUMS
) -> dict[str, Any]:
    """
    A server's statistics document over every worker process.

    C{own} is this process's document: its backends, their weights and their
    C{live} and C{discovered} flags (this process's health checks and
    discovery) are kept, and the C{server_sums} and L{BACKEND_SUMS} of each
    document of C{others} are added, backends matched by host and port.  A
    backend that only another process still has is left out.
    """
    total = {**own, "backends": [{**b, "stats": dict(b["stats"])} for b in own["backends"]]}
    by_address = {(b["host"], b["port"]): b["stats"] for b in total["backends"]}
    for doc in others:
        for key in server_sums:
            total[key] += doc[key]
        for backend in doc["backends"]:
            stats = by_address.get((backend["host"], backend["port"]))
            if stats is not None:
                for key in BACKEND_SUMS:
                    stats[key] += backend["stats"][key]
    return total


class PeerStatistics:
    """
    The other worker processes' statistics, from the sources that keep them
    (the worker supervisor adds one while it runs).
    """

    def __init__(self) -> None:
        self._sources: list[PeerSource] = []

    def add_source(self, source: PeerSource) -> None:
        """Count the reports C{source(name)} returns from now on."""
        self._sources.append(source)

    def remove_source(self, source: PeerSource) -> None:
        """Stop counting C{source}."""
        self._sources.remove(source)

    def documents(self, name: str) -> list[dict[str, Any]]:
        """The other worker processes' latest reports of server C{name}."""
        return [doc for source in self._sources for doc in source(name)]

    def total(self, name: str, own: dict[str, Any]) -> dict[str, Any]:
        """
        Worker 0's report C{own} of server C{name} (L{balancer.stats.server_report})
        summed with the others': gobetween's figures and the server counters.
        """
        return sum_stats(own, self.documents(name), SERVER_SUMS + SERVER_COUNTERS)
