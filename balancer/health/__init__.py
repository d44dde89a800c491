"""
Health checks (docs/DESIGN.md §5): one module per C{kind}, each an L{IHealthCheck},
and the L{HealthMonitor} that runs them on a server's backends.
"""

from __future__ import annotations

from balancer.health.base import HealthCheckError, IHealthCheck
from balancer.health.monitor import HealthMonitor
from balancer.health.registry import CHECKS, make_check

__all__ = ["CHECKS", "HealthCheckError", "HealthMonitor", "IHealthCheck", "make_check"]
