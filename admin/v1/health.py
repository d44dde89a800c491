"""
The health-check attributes of a /v1 server: C{last_check}, what the latest
health check of the backend found (its services' checks, the latest of
them), and C{state_changed_at}, when the checks last turned it live or down.
"""

from __future__ import annotations

from typing import Any

from admin.gobetween import rfc3339
from balancer.control.views import BackendView
from balancer.health.results import CheckResult


def latest_check(view: BackendView) -> CheckResult | None:
    """The latest check of backend C{view} over the services that use it; None before any (or without checks)."""
    checks = [entry.check for entry in view.entries if entry.check is not None]
    return max(checks, key=lambda check: check.finished_at, default=None)


def health_attributes(view: BackendView) -> dict[str, Any]:
    """
    C{last_check} (C{outcome}: passed, failed, timeout or error; C{at},
    C{duration}, C{checks}, C{failures}; null before the first check) and
    C{state_changed_at} (RFC 3339; null while the checks have not turned it).
    """
    check = latest_check(view)
    turns = [entry.check.changed_at for entry in view.entries
             if entry.check is not None and entry.check.changed_at is not None]
    last_check = None if check is None else {
        "outcome": check.outcome,
        "at": rfc3339(check.finished_at),
        "duration": round(check.duration, 6),
        "checks": check.checks,
        "failures": check.failures,
    }
    return {"last_check": last_check, "state_changed_at": rfc3339(max(turns)) if turns else None}
