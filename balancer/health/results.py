"""
L{CheckResult}: what the latest health check of one backend found, and
how many checks ran, as the monitor keeps it for the views and the metrics.
"""

from __future__ import annotations

import attrs

PASSED = "passed"
FAILED = "failed"
TIMEOUT = "timeout"
ERROR = "error"


@attrs.frozen
class CheckResult:
    """
    The latest check of one backend, and the checks before it.

    @ivar outcome: L{PASSED}, L{FAILED} (refused, closed, wrong answer),
        L{TIMEOUT} (no answer within C{check_timeout}, or still running when
        the next was due) or L{ERROR} (the check gave no verdict: a
        L{balancer.health.base.HealthCheckError} or a broken check).
    @ivar finished_at: when it ended, in epoch seconds of the monitor's clock.
    @ivar duration: how long it took, in seconds.
    @ivar checks: checks ended since the backend is watched, this one included.
    @ivar failures: those of them that did not pass.
    @ivar changed_at: when the checks last turned the backend live or down,
        in epoch seconds of the monitor's clock; None while they have not.
    """

    outcome: str
    finished_at: float
    duration: float
    checks: int
    failures: int
    changed_at: float | None = None

    @property
    def passed(self) -> bool:
        """Whether the latest check passed."""
        return self.outcome == PASSED

    def then(self, outcome: str, finished_at: float, duration: float) -> CheckResult:
        """The result after one more check, which ended with C{outcome}."""
        return CheckResult(
            outcome, finished_at, duration, self.checks + 1, self.failures + (outcome != PASSED), self.changed_at
        )

    def turned(self, at: float) -> CheckResult:
        """The same result, noting that the checks turned the backend live or down at C{at}."""
        return attrs.evolve(self, changed_at=at)


#: The result of a backend before its first check: no check ended yet.
NOT_CHECKED = CheckResult(outcome="", finished_at=0.0, duration=0.0, checks=0, failures=0)
