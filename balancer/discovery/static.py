"""C{kind = "static"}: the backends are the configuration's C{static_list}."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed
from zope.interface import implementer

from balancer.config.addresses import BackendSpec
from balancer.config.schema import DiscoveryConfig
from balancer.discovery.base import IDiscovery


@implementer(IDiscovery)
class StaticDiscovery:
    """
    The configured C{static_list}, already parsed by the configuration.

    It never fails and never changes, so the runner fetches it once.
    """

    DEFAULT_TIMEOUT = 0.0

    def __init__(self, config: DiscoveryConfig, reactor: Any = None) -> None:
        self._backends = list(config.static_list)

    def fetch(self) -> Deferred[list[BackendSpec]]:
        """The configured list."""
        return succeed(list(self._backends))
