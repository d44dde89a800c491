"""The health check kinds by name, and L{make_check}."""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Callable, Mapping

from balancer.config.schema import HealthcheckConfig
from balancer.health.base import IHealthCheck
from balancer.health.exec import ExecCheck
from balancer.health.ping import PingCheck
from balancer.health.probe import ProbeCheck

CheckFactory = Callable[[HealthcheckConfig, Any], IHealthCheck]

CHECKS: Mapping[str, CheckFactory] = MappingProxyType(
    {
        "ping": PingCheck,
        "probe": ProbeCheck,
        "exec": ExecCheck,
    }
)
"""The checks by their C{kind}; C{"none"} has no check."""


def make_check(config: HealthcheckConfig, reactor: Any) -> IHealthCheck | None:
    """
    The check C{config.kind} names, built from C{config}, or C{None} for
    C{kind = "none"}.

    @param reactor: provides L{IReactorTCP}, L{IReactorUDP},
        L{IReactorProcess} and name resolution, as the kind needs.
    @raise ValueError: naming the kind when no check has that name, or the
        key whose value the check cannot use.
    """
    if config.kind == "none":
        return None
    try:
        factory = CHECKS[config.kind]
    except KeyError:
        known = ", ".join([*CHECKS, "none"])
        raise ValueError(f'unknown health check kind "{config.kind}" (known: {known})') from None
    return factory(config, reactor)

