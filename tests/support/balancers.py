"""A balancer in the test's own process, on the global reactor, stopped after the test."""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from balancer.config.schema import Config, DefaultsConfig
from balancer.server_service import ServerService
from balancer.root_service import BalancerService
from tests.support.relays import server_config


def start_balancer(test: TestCase, lines: tuple[str, ...], splice: bool = True, **options: Any) -> ServerService:
    """
    A started balancer with one server "web" on 127.0.0.1 port 0 in front of
    the C{static_list} C{lines}, with C{[defaults] splice} as given; stopped
    (relays closed at once) after C{test}.
    """
    config = Config(
        defaults=DefaultsConfig(shutdown_grace=5.0, splice=splice), servers={"web": server_config(lines, **options)}
    )
    service = BalancerService(config, reactor)
    service.privilegedStartService()
    service.startService()
    server = service.server("web")

    def stop() -> Deferred[Any]:
        server.grace = 0.0
        return service.stopService()

    test.addCleanup(stop)
    return server
