"""
Discovery: where a server's backends come from (C{[servers.X.discovery]}).

Each C{kind} is one module providing L{IDiscovery} (one lookup per
C{fetch}), registered by name in L{balancer.discovery.registry.KINDS};
L{DiscoveryRunner} repeats the lookups, bounds them with the timeout and
applies the failpolicy.
"""

from balancer.discovery.base import DiscoveryError, IDiscovery
from balancer.discovery.registry import KINDS, fetch_timeout, make_discovery
from balancer.discovery.runner import DiscoveryRunner

__all__ = ["KINDS", "DiscoveryError", "DiscoveryRunner", "IDiscovery", "fetch_timeout", "make_discovery"]
